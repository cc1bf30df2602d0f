"""A project workspace: ``edgewire.toml`` and the folders every later step reads.

    DIR/edgewire.toml          [project] name, classes (in label order)
    DIR/images/<class>/        what capture and import collect, named by content
    DIR/dataset/{train,val,test}/<class>/ and DIR/dataset/labels.txt   what split writes
    DIR/runs/<run-id>/ and DIR/runs/LATEST   what training writes
    DIR/.edgewire/pipeline.json              what ``edgewire pipeline`` has done

``edgewire.toml`` may carry a table per pipeline step (``[capture]``, ``[split]``,
``[train]``, ``[export]``, ``[deploy]``, ``[run]``): see ``project/pipeline.py``.

A user can stop after any step and go on later: each command reads the workspace,
not the shell history. Images are named by the sha256 of their bytes, so two
captures or imports never collide and the same image twice is kept once.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgewire import fsutil
from edgewire.errors import ConfigError
from edgewire.project.imagefiles import readable_image, to_png

CONFIG_FILE = "edgewire.toml"
IMAGES, DATASET = "images", "dataset"
#: Training runs go in ``runs/<run-id>/``; ``runs/LATEST`` names the last one finished.
RUNS, LATEST = "runs", "LATEST"
_CLASS = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def check_classes(names: list[str]) -> tuple[str, ...]:
    """Class names as given (their order is the label order); one clear line if odd."""
    cleaned = [n.strip() for n in names if n.strip()]
    if len(cleaned) < 2:
        raise ConfigError(f"a project needs at least two classes, got {cleaned!r}")
    bad = [n for n in cleaned if not _CLASS.fullmatch(n)]
    if bad:
        raise ConfigError(
            f"class names are letters, digits, '_', '.', '-' (at most 64), got {bad!r}"
        )
    if len(set(cleaned)) != len(cleaned):
        raise ConfigError(f"class names repeat: {cleaned!r}")
    return tuple(cleaned)


@dataclass(frozen=True)
class Workspace:
    root: Path
    name: str
    classes: tuple[str, ...]
    #: Every table of ``edgewire.toml`` (``project`` and the pipeline steps' settings).
    tables: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def init(cls, root: Path, classes: list[str]) -> Workspace:
        """Make a new workspace in ``root`` (empty or missing); refuse an existing one."""
        names = check_classes(classes)
        root = Path(root)
        if (root / CONFIG_FILE).exists():
            raise ConfigError(f"{root} is a workspace already ({CONFIG_FILE} exists)")
        root.mkdir(parents=True, exist_ok=True)
        for name in names:
            (root / IMAGES / name).mkdir(parents=True, exist_ok=True)
        quoted = ", ".join(f'"{n}"' for n in names)
        text = f'[project]\nname = "{root.resolve().name}"\nclasses = [{quoted}]\n'
        fsutil.atomic_write_bytes(root / CONFIG_FILE, text.encode(), what="write the workspace")
        return cls.open(root)

    @classmethod
    def open(cls, root: Path) -> Workspace:
        """The workspace at ``root``; one line naming what is wrong if it is not one."""
        root = Path(root)
        path = root / CONFIG_FILE
        try:
            data = tomllib.loads(path.read_text("utf-8"))
        except FileNotFoundError:
            raise ConfigError(
                f"{root} is not a workspace (no {CONFIG_FILE}); "
                "make one with: edgewire project init DIR --classes a,b"
            ) from None
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{path}: unreadable ({exc})") from None
        project = data.get("project")
        if not isinstance(project, dict) or not isinstance(project.get("classes"), list):
            raise ConfigError(f"{path}: needs [project] with a list of classes")
        classes = check_classes([str(c) for c in project["classes"]])
        return cls(
            root=root, name=str(project.get("name", root.name)), classes=classes, tables=data
        )

    def table(self, name: str) -> dict[str, Any]:
        """The ``[name]`` table of ``edgewire.toml`` (empty when absent); one line if not a table."""
        value = self.tables.get(name, {})
        if not isinstance(value, dict):
            raise ConfigError(f"{self.root / CONFIG_FILE}: [{name}] must be a table")
        return value

    def class_dir(self, name: str) -> Path:
        if name not in self.classes:
            raise ConfigError(
                f"unknown class {name!r}; this workspace has: {', '.join(self.classes)}"
            )
        return self.root / IMAGES / name

    def images(self, name: str) -> list[Path]:
        folder = self.class_dir(name)
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))

    def add_image(self, name: str, data: bytes, suffix: str) -> tuple[Path, bool]:
        """Store one image's bytes under its content name; (path, whether it is new)."""
        folder = self.class_dir(name)
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{hashlib.sha256(data).hexdigest()[:20]}{suffix.lower()}"
        if target.exists():
            return target, False
        fsutil.atomic_write_bytes(target, data, what="store the image")
        return target, True


@dataclass(frozen=True)
class Imported:
    added: int
    duplicates: int
    unreadable: list[Path]


def import_paths(ws: Workspace, name: str, paths: list[Path]) -> Imported:
    """Copy the readable images among ``paths`` (files, or folders walked) into class
    ``name``; unreadable files are skipped and listed, nothing else changes."""
    ws.class_dir(name)  # an unknown class is refused before anything is read
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(
                p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")
            )
        elif path.is_file():
            files.append(path)
        else:
            raise ConfigError(f"{path} does not exist")
    added = duplicates = 0
    unreadable: list[Path] = []
    for file in files:
        suffix = readable_image(file)
        if suffix is None:
            unreadable.append(file)
            continue
        data = file.read_bytes()
        if suffix == ".webp":  # what the image-folder reader does not read: stored as PNG
            data, suffix = to_png(file), ".png"
        _, new = ws.add_image(name, data, suffix)
        added += new
        duplicates += not new
    return Imported(added=added, duplicates=duplicates, unreadable=unreadable)


def replace_folder(new: Path, target: Path) -> None:
    """Put the finished folder ``new`` where ``target`` is, the old one removed after."""
    old = target.with_name(f".{target.name}-old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    new.rename(target)
    fsutil.fsync_dir(target.parent)
    shutil.rmtree(old, ignore_errors=True)
