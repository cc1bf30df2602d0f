"""The model store: versioned models with aliases, on disk, power-loss safe.

Layout under ``root``::

    <name>/versions/<N>/model.<suffix> (model.onnx, model.tflite; + companion files
                                        such as ONNX external data, inside that folder)
    <name>/versions/<N>/meta.json      (the ModelVersion, without its path)
    <name>/aliases.json                {"aliases": {"production": N}, "history": {"production": [..]},
                                        "released": {"N": unix time}, "deleted_up_to": M}

Version numbers only grow: ``deleted_up_to`` remembers the highest number ever
deleted, so a number, once given to a model file, never names another one (a
deleted model keeps its ``aliases.json`` for that reason). ``released`` is when
the last alias left a version: :meth:`ModelStore.prune` deletes versions no alias
has pointed at for a while.

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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from edgewire.errors import ConfigError, ModelError, ModelNotFound
from edgewire.fsutil import atomic_write_bytes, disk_errors, fsync_dir, sha256_file
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


def _copy_synced(src: Path, dst: Path, *, limit: int, what: str) -> int:
    """Copy at most ``limit`` bytes (ModelError beyond), fsync, and return the size."""
    total = 0
    with disk_errors(f"copy {what}"):
        dst.parent.mkdir(parents=True, exist_ok=True)
        with open(src, "rb") as fin, open(dst, "xb") as fout:
            while chunk := fin.read(1 << 20):
                total += len(chunk)
                if total > limit:
                    raise ModelError(f"the model and its data are over the limit of {limit} bytes")
                fout.write(chunk)
            fout.flush()
            os.fsync(fout.fileno())
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
            return self.get(name, _default_number(aliases, numbers))
        if isinstance(ref, str) and ref in aliases:
            return self.get(name, aliases[ref])
        if isinstance(ref, int) or (isinstance(ref, str) and ref.isascii() and ref.isdigit()):
            return self.get(name, int(ref))
        known = ", ".join(sorted(aliases)) or "none"
        raise ModelNotFound(f"alias {ref!r} of model {name!r} not found (aliases: {known})")

    def default_after(
        self, name: str, *, deleting: int | None = None, removing: str | None = None
    ) -> ModelVersion | None:
        """What :meth:`resolve` gives by default (what a restart serves) once version
        ``deleting`` is deleted with force, or alias ``removing`` is removed; None when
        no version would be left."""
        check_name(name)
        aliases = {a: v for a, v in self.aliases(name).items() if v != deleting and a != removing}
        numbers = [n for n in self._version_numbers(name) if n != deleting]
        return self.get(name, _default_number(aliases, numbers)) if numbers else None

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

        with self._lock, disk_errors("store the model"):
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
                found_labels, found_prep = _from_metadata(version.metadata)
                version = dataclasses.replace(
                    version, version=number, path=final,
                    labels=labels_t if labels_t is not None else found_labels,
                    preprocessing=prep or found_prep,
                )  # fmt: skip
                meta = json.dumps(version.to_dict(), indent=2).encode()
                atomic_write_bytes(staging / META_FILE, meta, what="store the model")
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
        size = _copy_synced(source, incoming, limit=max_bytes, what="the model")
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
            total += _copy_synced(source.parent / rel, dst, limit=max_bytes - total, what=repr(rel))
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
            _point(data, alias, int(version))
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
            _point(data, alias, target.version)
            self._write_aliases(name, data)
            return target

    def remove_alias(self, name: str, alias: str) -> int:
        """Remove ``alias`` (and its rollback history); the version it pointed at, which stays."""
        check_name(name)
        check_alias(alias)
        with self._lock:
            data = self._read_aliases(name)
            if alias not in data["aliases"]:
                known = ", ".join(sorted(data["aliases"])) or "none"
                raise ModelNotFound(
                    f"alias {alias!r} of model {name!r} not found (aliases: {known})"
                )
            target = int(data["aliases"][alias])
            _point(data, alias, None)
            data["history"].pop(alias, None)
            self._write_aliases(name, data)
            return target

    def delete(self, name: str, version: int, *, force: bool = False) -> None:
        """Remove a version; refused while an alias points at it unless ``force``
        (then those aliases go too)."""
        check_name(name)
        with self._lock:
            self._delete(name, int(version), force=force)

    def delete_model(self, name: str) -> list[int]:
        """Remove every version and alias of ``name``; the version numbers it had.

        The versions go in one rename, so a crash leaves the model whole or gone.
        ``aliases.json`` stays with only ``deleted_up_to``: a model stored again
        under that name never reuses a number a client may still cache.
        """
        check_name(name)
        with self._lock:
            self._require(name)
            numbers = self._version_numbers(name)
            data = self._read_aliases(name)
            data["deleted_up_to"] = max([data["deleted_up_to"], *numbers])
            self._write_aliases(name, data)  # first: the numbers stay retired whatever follows
            model_dir = self.root / name
            trash = model_dir / f"{_DELETING}{secrets.token_hex(6)}"
            with disk_errors("delete the model"):
                os.rename(self._versions_dir(name), trash)
                fsync_dir(model_dir)
            tombstone: dict[str, Any] = {"aliases": {}, "history": {}, "released": {}}
            self._write_aliases(name, {**tombstone, "deleted_up_to": data["deleted_up_to"]})
            shutil.rmtree(trash, ignore_errors=True)
            return numbers

    def prune(
        self, *, unused_for: float, keep: Mapping[str, int], now: float | None = None
    ) -> list[tuple[str, int]]:
        """Delete the versions no alias has pointed at for ``unused_for`` seconds, and
        what refused or killed uploads left; the (name, version) pairs deleted.

        A version is never pruned while an alias points at it or ``keep`` (the
        served version of each model) names it. The last time an alias pointed at a
        version is ``released`` in ``aliases.json``; a version that never had an
        alias counts from its ``created`` time, and one in a rollback history that
        has no ``released`` time (an older store) from when ``aliases.json`` last
        changed, which is no earlier than when it lost its alias.
        """
        now = time.time() if now is None else now
        pruned: list[tuple[str, int]] = []
        if not self.root.is_dir():
            return pruned
        with self._lock:
            for model_dir in sorted(self.root.iterdir()):
                if NAME.match(model_dir.name) and model_dir.is_dir():
                    self._sweep(model_dir)
                    # A model with unreadable metadata is left alone: serving reports it.
                    with contextlib.suppress(ModelError):
                        pruned += self._prune(model_dir, unused_for, keep.get(model_dir.name), now)
        return pruned

    def _prune(
        self, model_dir: Path, unused_for: float, served: int | None, now: float
    ) -> list[tuple[str, int]]:
        name = model_dir.name
        data = self._read_aliases(name)
        aliased = set(data["aliases"].values())
        in_history = {v for h in data["history"].values() for v in h}
        changed = _mtime(model_dir / ALIASES_FILE)
        pruned = []
        for version in self.versions(name):
            number = version.version
            if number in aliased or number == served:
                continue
            released = data["released"].get(number, changed if number in in_history else 0.0)
            if now - max(version.created, released) > unused_for:
                self._delete(name, number, force=False)
                pruned.append((name, number))
        return pruned

    def _delete(self, name: str, version: int, *, force: bool) -> None:
        self.get(name, version)  # must exist
        data = self._read_aliases(name)
        pointing = sorted(a for a, v in data["aliases"].items() if v == version)
        if pointing and not force:
            raise ModelError(
                f"model {name!r} version {version} is in use by alias(es) "
                f"{', '.join(pointing)}; move them first, or delete with force"
            )
        for alias in pointing:
            del data["aliases"][alias]
        data["history"] = {a: [v for v in h if v != version] for a, h in data["history"].items()}
        data["released"].pop(version, None)
        data["deleted_up_to"] = max(data["deleted_up_to"], version)
        self._write_aliases(name, data)
        model_dir = self.root / name
        # Renamed away first: a crash mid-rmtree leaves no half version visible.
        trash = model_dir / f"{_DELETING}{secrets.token_hex(6)}"
        with disk_errors("delete the version"):
            os.rename(self._versions_dir(name) / str(version), trash)
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

    def _sweep(self, model_dir: Path) -> None:
        """Remove staging and trash folders, version folders without metadata (a number
        no version has) and a model folder that a refused first upload left empty."""
        for leftover in model_dir.iterdir():
            if leftover.name.startswith((_STAGING, _DELETING)):
                shutil.rmtree(leftover, ignore_errors=True)
        versions = self._versions_dir(model_dir.name)
        if versions.is_dir():
            for folder in versions.iterdir():
                if folder.name.isdigit() and not (folder / META_FILE).is_file():
                    shutil.rmtree(folder, ignore_errors=True)
        if not (model_dir / ALIASES_FILE).exists():
            # rmdir, not rmtree: a folder with anything else in it is not ours to remove.
            for folder in (versions, model_dir):
                with contextlib.suppress(OSError):
                    folder.rmdir()

    def _read_aliases(self, name: str) -> dict[str, Any]:
        path = self.root / name / ALIASES_FILE
        try:
            raw = json.loads(path.read_text("utf-8"))
        except FileNotFoundError:
            return {"aliases": {}, "history": {}, "released": {}, "deleted_up_to": 0}
        except (OSError, ValueError) as exc:
            raise ModelError(f"model {name!r}: unreadable aliases ({type(exc).__name__})") from None
        try:
            aliases = {str(k): int(v) for k, v in raw.get("aliases", {}).items()}
            history = {str(k): [int(x) for x in v] for k, v in raw.get("history", {}).items()}
            released = {int(k): float(v) for k, v in raw.get("released", {}).items()}
            deleted_up_to = int(raw.get("deleted_up_to", 0))
        except (AttributeError, TypeError, ValueError) as exc:
            raise ModelError(f"model {name!r}: malformed aliases ({exc})") from None
        return {
            "aliases": aliases,
            "history": history,
            "released": released,
            "deleted_up_to": deleted_up_to,
        }

    def _write_aliases(self, name: str, data: Mapping[str, Any]) -> None:
        body = json.dumps(data, indent=2, sort_keys=True).encode()
        with disk_errors("save the aliases"):
            atomic_write_bytes(self.root / name / ALIASES_FILE, body, what="save the aliases")


#: Most class names a model's metadata may list (more is ignored, not stored).
_MAX_LABELS = 65_536


def _from_metadata(metadata: Mapping[str, str]) -> tuple[tuple[str, ...] | None, dict[str, Any]]:
    """Class names and preprocessing a model carries (``edgewire export`` writes them as
    JSON in ``labels`` and ``preprocessing``); anything odd is ignored, not fatal."""
    labels: tuple[str, ...] | None = None
    prep: dict[str, Any] = {}
    try:
        found = json.loads(metadata.get("labels", "null"))
        if (
            isinstance(found, list)
            and len(found) <= _MAX_LABELS
            and all(isinstance(x, str) and len(x) <= 256 for x in found)
        ):
            labels = tuple(found)
        given = json.loads(metadata.get("preprocessing", "null"))
        scale = given.get("scale") if isinstance(given, dict) else None
        if isinstance(scale, int | float) and not isinstance(scale, bool) and 0 < scale < 1e6:
            prep = {"scale": float(scale)}
    except ValueError:
        pass
    return labels, prep


def _default_number(aliases: Mapping[str, int], numbers: Sequence[int]) -> int:
    """The version served when none is asked for: ``production``'s, else the latest."""
    return aliases.get(DEFAULT_ALIAS, numbers[-1])


def _point(data: dict[str, Any], alias: str, version: int | None) -> None:
    """Point ``alias`` at ``version`` (None: remove it), noting when a version lost its last alias."""
    previous = data["aliases"].pop(alias, None)
    if version is not None:
        data["aliases"][alias] = version
        data["released"].pop(version, None)
    if previous is not None and previous not in data["aliases"].values():
        data["released"][previous] = time.time()


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _expected_sha256(value: str | None) -> str | None:
    if value is None:
        return None
    normal = value.strip().lower()
    if not _HEX64.match(normal):
        raise ConfigError(f"sha256 must be 64 hex digits, got {value!r}")
    return normal
