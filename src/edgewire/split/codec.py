"""What crosses the network in a split (or offloaded) request, and how it is coded.

Sans-IO: :func:`encode` turns a uint8 N×C×H×W tensor into bytes and
:func:`decode` turns them back, given the shape and the coder's name, which
travel in the request's meta so that both ends agree. Coders:

- ``raw``: the bytes as they are;
- ``zstd``: Zstandard (the simple fallback; ``edgewire[split]``);
- ``rans``: an rANS stack coder (``constriction``) driven by a per-channel
  :class:`Prior` measured on the training set at build time and carried in both
  ONNX files' metadata (entropy coders do not export to ONNX, so this runs
  outside the graph, on the bytes the head produced);
- ``png``, ``jpeg``, ``webp``: whole image files of one N=1 RGB or grey input
  (full offload: the input itself crosses).

Every size is checked before anything is allocated: a shape over
:data:`MAX_ELEMENTS`, data that decodes to more or fewer values than the shape
holds, or an image of another size is a :class:`~edgewire.errors.DataError`.
"""

from __future__ import annotations

import functools
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edgewire.errors import ConfigError, DataError, DependencyMissing

#: The metadata_props key of head.onnx and tail.onnx that holds :meth:`Prior.to_json`.
PRIOR_KEY = "edgewire.split.prior"
#: Coders of a uint8 bottleneck, and coders of a whole input image.
TENSOR_CODERS = ("raw", "zstd", "rans")
IMAGE_CODERS = ("png", "jpeg", "webp")
CODERS = TENSOR_CODERS + IMAGE_CODERS
#: Largest number of values one request may decode to (a 4×3×512×512 batch).
MAX_ELEMENTS = 4 * 3 * 512 * 512
ZSTD_LEVEL = 19
#: Quantisation levels of a bottleneck code unless told otherwise: 16 (4 bits' worth in
#: each byte) leaves the entropy coder far less to code than 256 (see docs/split.md).
DEFAULT_LEVELS = 16
_SYMBOLS = 256
#: Up to this many levels a prior is conditional on each code's neighbours.
MAX_CONTEXT_LEVELS = 32
#: Pseudo-count added to every symbol, so a value never seen in training still codes.
_PSEUDO_COUNT = 0.5
_INSTALL = "install it with: pip install 'edgewire[split]'"


@dataclass(frozen=True)
class Prior:
    """Counts of the codes of each channel, measured on a training set.

    With at most :data:`MAX_CONTEXT_LEVELS` levels the counts are conditional: each code
    is counted in the context of the code above it (same channel, previous row) and the
    code at its place in the previous channel, both already decoded when it is decoded
    (``levels`` stands for "none" at the first row and channel). Neighbouring codes of
    a feature map are alike, which a per-value coder such as zstd only partly sees.
    With more levels the counts are per channel only (a 256³ table would be too large).

    ``counts`` is C × (L+1) × (L+1) × L (conditional) or C × L (per channel).
    """

    levels: int
    counts: NDArray[np.int64]

    def __post_init__(self) -> None:
        c, n = self.counts, self.levels
        if not isinstance(n, int) or not 2 <= n <= _SYMBOLS:
            raise DataError(f"a prior has 2..256 levels, got {n!r}")
        wanted = (n + 1, n + 1, n) if self.conditional else (n,)
        if c.ndim != 1 + len(wanted) or c.shape[1:] != wanted or c.shape[0] < 1 or (c < 0).any():
            raise DataError(
                f"a {n}-level prior needs C×{'×'.join(map(str, wanted))} counts, got {c.shape}"
            )

    @property
    def conditional(self) -> bool:
        return self.levels <= MAX_CONTEXT_LEVELS

    @property
    def channels(self) -> int:
        return int(self.counts.shape[0])

    @classmethod
    def measure(cls, q: NDArray[np.uint8], *, levels: int = _SYMBOLS) -> Prior:
        """The prior of codes ``q`` (N×C×H×W uint8, each below ``levels``)."""
        if q.dtype != np.uint8 or q.ndim != 4:
            raise DataError(f"a prior is measured on N×C×H×W uint8 codes, got {q.dtype}{q.shape}")
        _check_levels(q, levels)
        channels = q.shape[1]
        if levels > MAX_CONTEXT_LEVELS:
            per_channel = np.moveaxis(q, 1, 0).reshape(channels, -1)
            counts = np.stack([np.bincount(row, minlength=levels) for row in per_channel])
            return cls(levels, counts.astype(np.int64))
        above, before = _contexts(q, levels)
        flat = ((above.astype(np.int64) * (levels + 1) + before) * levels + q).reshape(
            q.shape[0], channels, -1
        )
        size = (levels + 1) * (levels + 1) * levels
        counts = np.stack(
            [np.bincount(flat[:, ch].ravel(), minlength=size) for ch in range(channels)]
        )
        return cls(
            levels, counts.reshape(channels, levels + 1, levels + 1, levels).astype(np.int64)
        )

    @functools.cached_property
    def coding_table(self) -> Any:
        """What the rANS coder uses: :meth:`probabilities` (conditional), or one
        categorical model a channel."""
        p = self.probabilities()
        if self.conditional:
            return p
        categorical = _constriction().stream.model.Categorical
        return [categorical(row, perfect=False) for row in p]

    def probabilities(self) -> NDArray[np.float64]:
        """Each context's distribution over the codes (the last axis sums to 1)."""
        p = self.counts.astype(np.float64) + _PSEUDO_COUNT
        out: NDArray[np.float64] = p / p.sum(axis=-1, keepdims=True)
        return out

    def bits_per_value(self) -> float:
        """The prior's own (conditional) entropy: what rANS should reach per value."""
        p = self.probabilities()
        total = max(int(self.counts.sum()), 1)
        return float(-(self.counts * np.log2(p)).sum() / total)

    def to_json(self) -> str:
        body = {"format": 2, "levels": self.levels, "counts": self.counts.tolist()}
        return json.dumps(body, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Prior:
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or data.get("format") != 2:
                raise ValueError("not a format-2 prior")
            levels = data["levels"]
            if not isinstance(levels, int) or isinstance(levels, bool):
                raise ValueError(f"levels {levels!r}")
            counts = np.asarray(data["counts"], dtype=np.int64)
        except (ValueError, TypeError, KeyError, OverflowError) as exc:
            raise DataError(f"unreadable bottleneck prior: {exc}") from None
        return cls(levels, counts)


def _check_levels(q: NDArray[np.uint8], levels: int) -> None:
    if q.size and int(q.max()) >= levels:
        raise DataError(f"a code of {int(q.max())} is over the prior's {levels} levels")


def _contexts(q: NDArray[np.uint8], levels: int) -> tuple[NDArray[np.uint8], NDArray[np.uint8]]:
    """Each code's context: the code above it and the one before it in the previous
    channel (``levels`` where there is none)."""
    above = np.full(q.shape, levels, dtype=np.uint8)
    above[:, :, 1:] = q[:, :, :-1]
    before = np.full(q.shape, levels, dtype=np.uint8)
    before[:, 1:] = q[:, :-1]
    return above, before


def check_coder(coder: object) -> str:
    if not isinstance(coder, str) or coder not in CODERS:
        raise DataError(f"unknown coder {coder!r}; one of: {', '.join(CODERS)}")
    return coder


def check_shape(shape: object) -> tuple[int, ...]:
    """A request's N×C×H×W, refused before allocation when odd or over MAX_ELEMENTS."""
    if (
        not isinstance(shape, list | tuple)
        or len(shape) != 4
        or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)
    ):
        raise DataError(f"'shape' must be four positive integers N, C, H, W; got {shape!r}")
    dims = tuple(int(d) for d in shape)
    if math.prod(dims) > MAX_ELEMENTS:
        raise DataError(f"shape {list(dims)} holds over {MAX_ELEMENTS:,} values")
    return dims


def encode(
    q: NDArray[np.uint8], coder: str, prior: Prior | None = None, *, quality: int = 75
) -> bytes:
    """The bytes of ``q`` (N×C×H×W uint8) under ``coder``; ``quality`` for jpeg/webp."""
    check_coder(coder)
    if q.dtype != np.uint8 or q.ndim != 4:
        raise DataError(f"codes are N×C×H×W uint8, got {q.dtype}{q.shape}")
    q = np.ascontiguousarray(q)
    if coder == "raw":
        return q.tobytes()
    if coder == "zstd":
        return bytes(_zstd().ZstdCompressor(level=ZSTD_LEVEL).compress(q.tobytes()))
    if coder == "rans":
        return _rans_encode(q, _need_prior(prior, q.shape[1]))
    return _image_encode(q, coder, quality)


def decode(
    data: bytes | memoryview, shape: Sequence[int], coder: str, prior: Prior | None = None
) -> NDArray[np.uint8]:
    """The uint8 tensor of ``shape`` that ``data`` codes; DataError if it does not."""
    check_coder(coder)
    dims = check_shape(list(shape))
    n = math.prod(dims)
    if coder == "raw":
        if len(data) != n:
            raise DataError(f"{len(data)} raw bytes for shape {list(dims)} ({n} values)")
        return np.frombuffer(bytes(data), dtype=np.uint8).reshape(dims)
    if coder == "zstd":
        return _zstd_decode(bytes(data), dims)
    if coder == "rans":
        return _rans_decode(bytes(data), dims, _need_prior(prior, dims[1]))
    return _image_decode(bytes(data), dims)


def _need_prior(prior: Prior | None, channels: int) -> Prior:
    if prior is None:
        raise DataError("coder 'rans' needs the model's bottleneck prior; this model has none")
    if prior.channels != channels:
        raise DataError(f"the prior has {prior.channels} channels, the codes {channels}")
    return prior


def _zstd() -> Any:
    try:
        import zstandard
    except ImportError as exc:
        raise DependencyMissing(f"coder 'zstd' needs zstandard; {_INSTALL}") from exc
    return zstandard


def _zstd_decode(data: bytes, dims: tuple[int, ...]) -> NDArray[np.uint8]:
    zstandard = _zstd()
    n = math.prod(dims)
    try:
        out = zstandard.ZstdDecompressor().decompress(data, max_output_size=n)
    except zstandard.ZstdError as exc:
        raise DataError(f"bad zstd data: {exc}") from None
    if len(out) != n:
        raise DataError(f"zstd data holds {len(out)} bytes, shape {list(dims)} needs {n}")
    return np.frombuffer(out, dtype=np.uint8).reshape(dims)


def _constriction() -> Any:
    try:
        import constriction
    except ImportError as exc:
        raise DependencyMissing(f"coder 'rans' needs constriction; {_INSTALL}") from exc
    return constriction


def _table(prior: Prior) -> Any:
    """The prior's probabilities, or for a per-channel prior one categorical model a channel
    (built once per prior: normalising a large table is the costly part)."""
    return prior.coding_table


@functools.lru_cache(maxsize=32)
def _wavefront(dims: tuple[int, ...]) -> tuple[tuple[NDArray[np.intp], ...], ...]:
    """The order a conditional prior codes N×C×H×W values in, as steps: step t holds every
    row r of every channel c with c + r = t, whose contexts (row r-1 of channel c, row r
    of channel c-1) are all in earlier steps, so each step decodes in one call.

    Each step is (flat indices, flat index of the code above or -1, of the code in the
    previous channel or -1, channel of each)."""
    _, c, h, w = dims
    i, ch, r, col = (a.ravel() for a in np.indices(dims))
    flat = np.ravel_multi_index((i, ch, r, col), dims)
    above = np.where(r > 0, flat - w, -1)
    before = np.where(ch > 0, flat - h * w, -1)
    step = ch + r
    order = np.argsort(step, kind="stable")
    bounds = np.searchsorted(step[order], np.arange(c + h))
    steps = []
    for t in range(c + h - 1):
        pick = order[bounds[t] : bounds[t + 1]]
        steps.append((flat[pick], above[pick], before[pick], ch[pick]))
    return tuple(steps)


def _rows(table: NDArray[np.float64], levels: int, ch: Any, above: Any, before: Any) -> Any:
    """The distribution of each code, from its channel and its two contexts."""
    flat = table.reshape(-1, levels)
    return flat.take((ch * (levels + 1) + above) * (levels + 1) + before, axis=0)


def _rans_encode(q: NDArray[np.uint8], prior: Prior) -> bytes:
    _check_levels(q, prior.levels)
    table = _table(prior)
    coder = _constriction().stream.stack.AnsCoder()
    channels = q.shape[1]
    if prior.conditional:
        family = _constriction().stream.model.Categorical(perfect=False)
        above, before = _contexts(q, prior.levels)
        ch = np.broadcast_to(np.arange(channels)[None, :, None, None], q.shape)
        order = np.concatenate([step[0] for step in _wavefront(q.shape)])
        rows = _rows(table, prior.levels, ch.ravel()[order].astype(np.intp),
                     above.ravel()[order].astype(np.intp), before.ravel()[order].astype(np.intp))  # fmt: skip
        # One call: encode_reverse codes the sequence so that it decodes first to last.
        coder.encode_reverse(q.ravel()[order].astype(np.int32), family, rows)
    else:
        per_channel = np.moveaxis(q, 1, 0).reshape(channels, -1).astype(np.int32)
        for c in reversed(range(channels)):
            coder.encode_reverse(per_channel[c], table[c])
    words: NDArray[np.uint32] = coder.get_compressed()
    return words.astype("<u4").tobytes()


def _rans_decode(data: bytes, dims: tuple[int, ...], prior: Prior) -> NDArray[np.uint8]:
    if len(data) % 4:
        raise DataError(f"rans data is {len(data)} bytes, not whole 32-bit words")
    table = _table(prior)
    n, c, h, w = dims
    words = np.frombuffer(data, dtype="<u4").astype(np.uint32)
    try:
        coder = _constriction().stream.stack.AnsCoder(words)
        if prior.conditional:
            family = _constriction().stream.model.Categorical(perfect=False)
            # One slot past the end holds "none": index -1 (no code above / before) reads it.
            codes = np.zeros(n * c * h * w + 1, dtype=np.intp)
            codes[-1] = prior.levels
            for flat, above, before, ch in _wavefront(dims):
                rows = _rows(table, prior.levels, ch, codes[above], codes[before])
                codes[flat] = coder.decode(family, rows)
            out = codes[:-1].astype(np.uint8).reshape(dims)
        else:
            out = np.empty(dims, dtype=np.uint8)
            for channel in range(c):
                out[:, channel] = coder.decode(table[channel], n * h * w).reshape(n, h, w)
    except (ValueError, RuntimeError, AssertionError) as exc:
        raise DataError(f"bad rans data: {exc}") from None
    if not coder.is_empty():
        raise DataError("rans data holds more than the shape's values")
    return out


_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


def _image_encode(q: NDArray[np.uint8], coder: str, quality: int) -> bytes:
    from PIL import Image

    n, c, _, _ = q.shape
    if n != 1 or c not in (1, 3):
        raise DataError(f"an image file holds one grey or RGB input, not {list(q.shape)}")
    hwc = np.moveaxis(q[0], 0, -1)
    image = Image.fromarray(hwc[:, :, 0] if c == 1 else hwc, mode="L" if c == 1 else "RGB")
    buf = io.BytesIO()
    if coder == "png":
        image.save(buf, format="PNG", optimize=True)
    elif coder == "jpeg":
        image.save(buf, format="JPEG", quality=quality, optimize=True)
    else:
        image.save(buf, format="WEBP", quality=quality, method=6)
    return buf.getvalue()


def _image_decode(data: bytes, dims: tuple[int, ...]) -> NDArray[np.uint8]:
    from PIL import Image, UnidentifiedImageError

    n, c, h, w = dims
    if n != 1 or c not in (1, 3):
        raise DataError(f"an image file holds one grey or RGB input, not {list(dims)}")
    try:
        with Image.open(io.BytesIO(data)) as image:
            # The header's size is checked before a pixel is decoded.
            if image.size != (w, h):
                raise DataError(
                    f"image is {image.size[0]}×{image.size[1]}, the model needs {w}×{h}"
                )
            pixels = np.asarray(image.convert("L" if c == 1 else "RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"unreadable image: {type(exc).__name__}") from None
    chw = pixels[None] if c == 1 else np.moveaxis(pixels, -1, 0)
    return np.ascontiguousarray(chw[None])


def require_known(coder: str) -> None:
    """Refuse a coder name given on the command line (ConfigError, exit 2)."""
    if coder not in CODERS:
        raise ConfigError(f"unknown --coder {coder!r}; one of: {', '.join(CODERS)}")
