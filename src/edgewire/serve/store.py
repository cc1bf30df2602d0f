"""The model store: versioned models with aliases, on disk, power-loss safe.

Layout under ``root``::

    <name>/versions/<N>/model.<suffix> (model.onnx, model.tflite; + companion files
                                        such as ONNX external data, inside that folder)
    <name>/versions/<N>/meta.json      (the ModelVersion, without its path)
    <name>/aliases.json                {"aliases": {"production": N}, "history": {"production": [..]},
                                        "deleted_up_to": M}

Version numbers only grow: ``deleted_up_to`` remembers the highest number ever
deleted, so a number, once given to a model file, never names another one.

A version is staged in a hidden folder next to ``versions/`` and renamed into
place in one step, so a crash leaves either no version or a complete one.
The store knows nothing of formats: a :class:`Formats` (by default the
backends of ``serve/backends/``) tells it which backend a file's content
belongs to, which companion files it needs and what tensors it declares.
Nothing here unpickles anything. One process writes a store (the agent);
threads inside it may share one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from edgewire.errors import ConfigError, ModelError, ModelNotFound
from edgewire.fsutil import atomic_write_bytes, fsync_dir, sha256_file
from edgewire.serve.model import Backend, ModelVersion, TensorInfo, verify_files

__all__ = [
    "DEFAULT_ALIAS",
    "Formats",
    "ModelStore",
    "ModelVersion",
    "TensorInfo",
    "check_alias",
    "check_name",
    "verify_files",
]

#: Model names and aliases: one safe path component.
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
META_FILE = "meta.json"
ALIASES_FILE = "aliases.json"
DEFAULT_ALIAS = "production"
DEFAULT_MAX_BYTES = 1 << 30
#: Older targets remembered per alias for rollback.
HISTORY_LIMIT = 32
_STAGING = ".staging-"
_DELETING = ".deleting-"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_INCOMING = "incoming"


class Formats(Protocol):
    """Which backend a file belongs to (``serve.backends`` is one)."""

    def detect(self, path: Path, *, name_hint: str | None = None) -> Backend: ...


def check_name(value: str, *, what: str = "model name") -> str:
    """``value`` if it is a safe name (one path component), else ConfigError."""
    if not isinstance(value, str) or not NAME.match(value):
        raise ConfigError(
            f"invalid {what} {value!r}: use 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return value


def check_alias(value: str) -> str:
    """``value`` if it can name an alias (a safe name that is not a number), else ConfigError."""
    check_name(value, what="alias")
    if value.isdigit():
        raise ConfigError(f"invalid alias {value!r}: an alias cannot be a plain number")
    return value


@contextlib.contextmanager
def _disk_errors(what: str) -> Iterator[None]:
    """An OSError (disk full, read-only, ...) as a ModelError that names no path."""
    try:
        yield
    except OSError as exc:
        raise ModelError(f"cannot {what}: {exc.strerror or type(exc).__name__}") from None


def _copy_synced(src: Path, dst: Path, *, limit: int) -> int:
    """Copy at most ``limit`` bytes (ModelError beyond), fsync, and return the size."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    total = 0
    try:
        with open(src, "rb") as fin, open(dst, "xb") as fout:
            while chunk := fin.read(1 << 20):
                total += len(chunk)
                if total > limit:
                    raise ModelError(f"the model and its data are over the limit of {limit} bytes")
                fout.write(chunk)
            fout.flush()
            os.fsync(fout.fileno())
    except OSError as exc:
        raise ModelError(f"cannot copy {src.name!r}: {exc.strerror}") from None
    return total


# -- the store -------------------------------------------------------------------------


class ModelStore:
    """Versioned models under ``root``; see the module docstring for the layout."""

    def __init__(self, root: Path, *, formats: Formats | None = None) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()
        if formats is None:
            from edgewire.serve import backends

            formats = backends
        self._formats = formats

    # -- reading -----------------------------------------------------------------------

    def names(self) -> list[str]:
        """Models with at least one version, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(
            p.name
            for p in self.root.iterdir()
            if NAME.match(p.name) and p.is_dir() and self._version_numbers(p.name)
        )

    def versions(self, name: str) -> list[ModelVersion]:
        """Every complete version of ``name``, oldest first; [] for an unknown name."""
        return [self.get(name, n) for n in self._version_numbers(check_name(name))]

    def get(self, name: str, version: int) -> ModelVersion:
        check_name(name)
        folder = self._versions_dir(name) / str(int(version))
        try:
            data = json.loads((folder / META_FILE).read_text("utf-8"))
            found = ModelVersion.from_dict(data, path=folder)
        except FileNotFoundError:
            known = ", ".join(map(str, self._version_numbers(name))) or "none"
            raise ModelNotFound(
                f"model {name!r} version {version} not found (versions: {known})"
            ) from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelError(
                f"model {name!r} version {version}: unreadable metadata ({type(exc).__name__})"
            ) from None
        if found.name != name or found.version != int(version):
            raise ModelError(f"model {name!r} version {version}: metadata names another model")
        return found

    def aliases(self, name: str) -> dict[str, int]:
        return dict(self._read_aliases(check_name(name))["aliases"])

    def resolve(self, name: str, ref: str | int | None = None) -> ModelVersion:
        """The version ``ref`` names: an alias, a number (or its string); default:
        the ``production`` alias, else the latest version."""
        check_name(name)
        self._require(name)
        numbers = self._version_numbers(name)
        aliases = self.aliases(name)
        if ref is None:
            if DEFAULT_ALIAS in aliases:
                return self.get(name, aliases[DEFAULT_ALIAS])
            return self.get(name, numbers[-1])
        if isinstance(ref, str) and ref in aliases:
            return self.get(name, aliases[ref])
        if isinstance(ref, int) or (isinstance(ref, str) and ref.isascii() and ref.isdigit()):
            return self.get(name, int(ref))
        known = ", ".join(sorted(aliases)) or "none"
        raise ModelNotFound(f"alias {ref!r} of model {name!r} not found (aliases: {known})")

    def verify(self, version: ModelVersion) -> None:
        """Recompute sha256 of the stored files; ModelError on bit rot or tampering."""
        verify_files(version)

    # -- writing -----------------------------------------------------------------------

    def add(
        self,
        name: str,
        source: Path,
        *,
        sha256: str | None = None,
        labels: Sequence[str] | None = None,
        preprocessing: Mapping[str, Any] | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
        file_name: str | None = None,
    ) -> ModelVersion:
        """Store ``source`` (and its companion files) as the next version of ``name``.

        ``file_name`` is the name the file came with (default: ``source``'s): a
        suffix of a known format that its content contradicts is refused.
        """
        check_name(name)
        source = Path(source)
        expected = _expected_sha256(sha256)
        labels_t = None if labels is None else tuple(labels)
        if labels_t is not None and not all(isinstance(x, str) for x in labels_t):
            raise ConfigError(f"labels must be strings, got {labels_t!r}")
        prep = dict(preprocessing or {})
        try:
            json.dumps(prep, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"preprocessing must be plain JSON: {exc}") from None
        try:
            size = source.stat().st_size
        except OSError as exc:
            raise ModelError(f"cannot read the model file: {exc.strerror}") from None
        if size > max_bytes:
            raise ModelError(f"the model is {size} bytes, over the limit of {max_bytes}")

        with self._lock, _disk_errors("store the model"):
            model_dir = self.root / name
            self._prepare(model_dir)
            staging = model_dir / f"{_STAGING}{os.getpid()}-{secrets.token_hex(6)}"
            staging.mkdir()
            try:
                version = self._stage(
                    name,
                    source,
                    staging,
                    expected=expected,
                    max_bytes=max_bytes,
                    file_name=file_name or source.name,
                )
                retired = self._read_aliases(name)["deleted_up_to"]
                number = max([*self._version_numbers(name), retired]) + 1
                final = self._versions_dir(name) / str(number)
                version = dataclasses.replace(
                    version, version=number, path=final, labels=labels_t, preprocessing=prep
                )
                meta = json.dumps(version.to_dict(), indent=2).encode()
                atomic_write_bytes(staging / META_FILE, meta)
                os.rename(staging, final)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            fsync_dir(final.parent)
            return version

    def _stage(
        self,
        name: str,
        source: Path,
        staging: Path,
        *,
        expected: str | None,
        max_bytes: int,
        file_name: str,
    ) -> ModelVersion:
        """Copy ``source`` into ``staging`` and check the copy (what gets stored is
        what was checked, even if ``source`` changes meanwhile)."""
        incoming = staging / _INCOMING
        size = _copy_synced(source, incoming, limit=max_bytes)
        digest = sha256_file(incoming)
        if expected is not None and digest != expected:
            raise ModelError(f"sha256 mismatch: expected {expected}, got {digest}")
        backend = self._formats.detect(incoming, name_hint=file_name)
        staged = staging / f"model{backend.suffix}"
        os.rename(incoming, staged)
        external: dict[str, str] = {}
        total = size
        folders = {staging}
        # Checked against the source folder, where the companions really are.
        for rel in backend.companions(staged, source_dir=source.parent):
            dst = staging / rel
            total += _copy_synced(source.parent / rel, dst, limit=max_bytes - total)
            external[rel] = sha256_file(dst)
            folders.update(p for p in dst.parents if p.is_relative_to(staging))
        info = backend.inspect(staged)
        for folder in sorted(folders, reverse=True):  # deepest first
            fsync_dir(folder)
        return ModelVersion(
            name=name,
            version=0,
            path=staging,
            format=backend.name,
            file=staged.name,
            sha256=digest,
            size=size,
            created=time.time(),
            inputs=info.inputs,
            outputs=info.outputs,
            metadata=info.metadata,
            external=external,
        )

    def set_alias(self, name: str, alias: str, version: int) -> None:
        """Point ``alias`` at ``version``; the old target goes onto its history."""
        check_name(name)
        check_alias(alias)
        with self._lock:
            self.get(name, version)  # must exist
            data = self._read_aliases(name)
            previous = data["aliases"].get(alias)
            if previous == version:
                return
            if previous is not None:
                history = [*data["history"].get(alias, []), previous][-HISTORY_LIMIT:]
                data["history"][alias] = history
            data["aliases"][alias] = int(version)
            self._write_aliases(name, data)

    def rollback(self, name: str, alias: str = DEFAULT_ALIAS) -> ModelVersion:
        """Point ``alias`` back at its previous target and return that version."""
        check_name(name)
        check_name(alias, what="alias")
        with self._lock:
            self._require(name)
            data = self._read_aliases(name)
            history = data["history"].get(alias, [])
            if not history:
                raise ModelError(f"alias {alias!r} of model {name!r} has nothing to roll back to")
            target = self.get(name, history[-1])
            data["history"][alias] = history[:-1]
            data["aliases"][alias] = target.version
            self._write_aliases(name, data)
            return target

    def delete(self, name: str, version: int, *, force: bool = False) -> None:
        """Remove a version; refused while an alias points at it unless ``force``
        (then those aliases go too)."""
        check_name(name)
        with self._lock:
            self.get(name, version)  # must exist
            data = self._read_aliases(name)
            pointing = sorted(a for a, v in data["aliases"].items() if v == version)
            if pointing and not force:
                raise ModelError(
                    f"model {name!r} version {version} is in use by alias(es) "
                    f"{', '.join(pointing)}; move them first or force"
                )
            for alias in pointing:
                del data["aliases"][alias]
            data["history"] = {
                a: [v for v in h if v != version] for a, h in data["history"].items()
            }
            data["deleted_up_to"] = max(data["deleted_up_to"], int(version))
            self._write_aliases(name, data)
            model_dir = self.root / name
            # Renamed away first: a crash mid-rmtree leaves no half version visible.
            trash = model_dir / f"{_DELETING}{secrets.token_hex(6)}"
            with _disk_errors("delete the version"):
                os.rename(self._versions_dir(name) / str(int(version)), trash)
                fsync_dir(self._versions_dir(name))
            shutil.rmtree(trash, ignore_errors=True)

    # -- helpers -----------------------------------------------------------------------

    def _require(self, name: str) -> None:
        if not self._version_numbers(name):
            known = ", ".join(self.names()) or "none"
            raise ModelNotFound(f"model {name!r} not found (models: {known})")

    def _versions_dir(self, name: str) -> Path:
        return self.root / name / "versions"

    def _version_numbers(self, name: str) -> list[int]:
        folder = self._versions_dir(name)
        if not folder.is_dir():
            return []
        return sorted(
            int(p.name)
            for p in folder.iterdir()
            if p.name.isascii()
            and p.name.isdigit()
            and not p.name.startswith("0")
            and (p / META_FILE).is_file()
        )

    def _prepare(self, model_dir: Path) -> None:
        """Create the folders (durably) and sweep what a crash left behind."""
        created = not model_dir.exists()
        self._versions_dir(model_dir.name).mkdir(parents=True, exist_ok=True)
        if created:
            fsync_dir(self.root)
            fsync_dir(model_dir)
        for leftover in model_dir.iterdir():
            if leftover.name.startswith((_STAGING, _DELETING)):
                shutil.rmtree(leftover, ignore_errors=True)

    def _read_aliases(self, name: str) -> dict[str, Any]:
        path = self.root / name / ALIASES_FILE
        try:
            raw = json.loads(path.read_text("utf-8"))
        except FileNotFoundError:
            return {"aliases": {}, "history": {}, "deleted_up_to": 0}
        except (OSError, ValueError) as exc:
            raise ModelError(f"model {name!r}: unreadable aliases ({type(exc).__name__})") from None
        try:
            aliases = {str(k): int(v) for k, v in raw.get("aliases", {}).items()}
            history = {str(k): [int(x) for x in v] for k, v in raw.get("history", {}).items()}
            deleted_up_to = int(raw.get("deleted_up_to", 0))
        except (AttributeError, TypeError, ValueError) as exc:
            raise ModelError(f"model {name!r}: malformed aliases ({exc})") from None
        return {"aliases": aliases, "history": history, "deleted_up_to": deleted_up_to}

    def _write_aliases(self, name: str, data: Mapping[str, Any]) -> None:
        body = json.dumps(data, indent=2, sort_keys=True).encode()
        with _disk_errors("save the aliases"):
            atomic_write_bytes(self.root / name / ALIASES_FILE, body)


def _expected_sha256(value: str | None) -> str | None:
    if value is None:
        return None
    normal = value.strip().lower()
    if not _HEX64.match(normal):
        raise ConfigError(f"sha256 must be 64 hex digits, got {value!r}")
    return normal
