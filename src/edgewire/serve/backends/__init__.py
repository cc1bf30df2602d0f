"""Model formats, one module each, chosen by a file's content.

To add a format: a module here with a class that satisfies
:class:`edgewire.serve.model.Backend`, and one entry in :data:`BACKENDS`.
The store, the runtime and the HTTP metadata read everything else from it.
"""

from __future__ import annotations

from pathlib import Path

from edgewire.errors import ModelError
from edgewire.serve.backends.onnx import OnnxBackend
from edgewire.serve.backends.tflite import TfliteBackend
from edgewire.serve.model import Backend

#: Every format, in the order their ``claims`` are asked.
BACKENDS: tuple[Backend, ...] = (TfliteBackend(), OnnxBackend())
_BY_NAME = {b.name: b for b in BACKENDS}
_BY_SUFFIX = {b.suffix: b for b in BACKENDS}
#: Bytes read to tell formats apart.
HEAD_BYTES = 16
#: Content that is never a model we serve, with what it is.
_REFUSED = (
    (b"\x80", "a Python pickle"),
    (b"PK\x03\x04", "a zip archive (a torch .pt/.pth checkpoint?)"),
)


def backend(name: str) -> Backend:
    """The backend called ``name``; ModelError names the known ones."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ModelError(f"unknown model format {name!r}; known: {', '.join(_BY_NAME)}") from None


def suffixes() -> list[str]:
    """The file suffixes of every format (``.onnx``, ``.tflite``)."""
    return list(_BY_SUFFIX)


def detect(path: Path, *, name_hint: str | None = None) -> Backend:
    """The backend for the file at ``path``, by its content.

    ``name_hint`` is the file name it came with: a suffix of a known format that
    does not match the content is refused, as is content that is no model at all.
    """
    try:
        with path.open("rb") as f:
            head = f.read(HEAD_BYTES)
    except OSError as exc:
        raise ModelError(f"cannot read the model file: {exc.strerror}") from None
    if not head:
        raise ModelError("the model file is empty")
    for magic, what in _REFUSED:
        if head.startswith(magic):
            raise ModelError(f"the file is {what}, not a model; export it to ONNX or TFLite")
    claimed = next((b for b in BACKENDS if b.claims(head)), None)
    named = _BY_SUFFIX.get(Path(name_hint).suffix.lower()) if name_hint else None
    if claimed is not None and named is not None and claimed is not named:
        raise ModelError(
            f"the file is named {Path(name_hint or '').name!r} but holds a {claimed.name} model"
        )
    # No claim: let the named format (else ONNX, which has no magic) say what is wrong.
    return claimed or named or _BY_NAME["onnx"]
