"""Removing from the store: aliases, whole models, and the prune of unused versions."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from edgewire.errors import ModelError, ModelNotFound
from edgewire.serve.store import ModelStore
from tests.serve.models import linear_model

DAY = 86400.0


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "models")


@pytest.fixture
def onnx_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.onnx"
    linear_model(path, in_features=4, out_features=3)
    return path


def _numbers(store: ModelStore, name: str = "m") -> list[int]:
    return [v.version for v in store.versions(name)]


def _on_disk(store: ModelStore, name: str = "m") -> dict[str, object]:
    data: dict[str, object] = json.loads((store.root / name / "aliases.json").read_text())
    return data


# -- aliases ---------------------------------------------------------------------------


def test_remove_alias_keeps_the_version_and_forgets_its_history(
    store: ModelStore, onnx_file: Path
) -> None:
    for _ in range(2):
        store.add("m", onnx_file)
    store.set_alias("m", "staging", 1)
    store.set_alias("m", "staging", 2)
    store.set_alias("m", "production", 1)
    assert store.remove_alias("m", "staging") == 2
    assert store.aliases("m") == {"production": 1}
    assert _numbers(store) == [1, 2]
    with pytest.raises(ModelError, match="nothing to roll back to"):
        store.rollback("m", "staging")
    released = _on_disk(store)["released"]
    assert isinstance(released, dict) and set(released) == {"2"}  # 1 has an alias again


def test_remove_alias_of_an_unknown_alias_or_model_is_not_found(
    store: ModelStore, onnx_file: Path
) -> None:
    store.add("m", onnx_file)
    store.set_alias("m", "production", 1)
    with pytest.raises(
        ModelNotFound, match=r"alias 'beta' of model 'm' not found \(aliases: production\)"
    ):
        store.remove_alias("m", "beta")
    with pytest.raises(ModelNotFound):
        store.remove_alias("nothing", "production")
    assert store.aliases("m") == {"production": 1}


def test_default_after_is_what_a_restart_would_serve(store: ModelStore, onnx_file: Path) -> None:
    for _ in range(3):
        store.add("m", onnx_file)
    store.set_alias("m", "production", 2)
    assert store.default_after("m", deleting=3).version == 2  # type: ignore[union-attr]
    # production's target goes: the latest that is left.
    assert store.default_after("m", deleting=2).version == 3  # type: ignore[union-attr]
    assert store.default_after("m", removing="production").version == 3  # type: ignore[union-attr]
    store.delete("m", 3)
    store.delete("m", 1)
    assert store.default_after("m", deleting=2) is None


# -- whole models ----------------------------------------------------------------------


def test_delete_model_removes_every_version_and_alias(store: ModelStore, onnx_file: Path) -> None:
    for _ in range(3):
        store.add("m", onnx_file)
    store.add("other", onnx_file)
    store.set_alias("m", "production", 2)
    assert store.delete_model("m") == [1, 2, 3]
    assert store.names() == ["other"]
    assert store.aliases("m") == {} and store.versions("m") == []
    with pytest.raises(ModelNotFound, match=r"model 'm' not found \(models: other\)"):
        store.resolve("m")
    # What stays is the memory of the numbers, so that no number names another file.
    assert [p.name for p in (store.root / "m").iterdir()] == ["aliases.json"]
    assert _on_disk(store)["deleted_up_to"] == 3
    assert store.add("m", onnx_file).version == 4
    with pytest.raises(ModelNotFound):
        store.delete_model("nothing")
    assert _numbers(store, "other") == [1]


def test_delete_model_that_cannot_rename_changes_nothing(
    store: ModelStore, onnx_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.add("m", onnx_file)
    store.set_alias("m", "production", 1)

    def refuse(*args: object) -> None:
        raise PermissionError(13, "Permission denied", str(store.root))

    monkeypatch.setattr(os, "rename", refuse)
    with pytest.raises(ModelError, match="cannot delete the model: Permission denied") as info:
        store.delete_model("m")
    assert str(store.root) not in str(info.value)
    monkeypatch.undo()
    assert _numbers(store) == [1] and store.aliases("m") == {"production": 1}
    store.verify(store.resolve("m"))


# -- pruning ---------------------------------------------------------------------------


def test_prune_deletes_only_versions_no_alias_pointed_at_for_the_ttl(
    store: ModelStore, onnx_file: Path
) -> None:
    for _ in range(5):
        store.add("m", onnx_file)
    store.set_alias("m", "production", 1)
    store.set_alias("m", "production", 2)  # 1 was released now
    store.set_alias("m", "staging", 3)
    later = time.time() + 2 * DAY
    # Not yet past the TTL: nothing goes.
    assert store.prune(unused_for=3 * DAY, keep={}, now=later) == []
    # Past it: 1 (released) and 4 (never aliased) go; 5 is served; 2 and 3 have aliases.
    assert store.prune(unused_for=DAY, keep={"m": 5}, now=later) == [("m", 1), ("m", 4)]
    assert _numbers(store) == [2, 3, 5]
    assert store.aliases("m") == {"production": 2, "staging": 3}
    assert _on_disk(store)["history"] == {"production": []}
    assert store.add("m", onnx_file).version == 6  # numbers are not reused


def test_prune_counts_from_when_the_alias_left(store: ModelStore, onnx_file: Path) -> None:
    for _ in range(2):
        store.add("m", onnx_file)
    created = store.get("m", 1).created
    store.set_alias("m", "production", 1)
    store.set_alias("m", "production", 2)
    released = float(_on_disk(store)["released"]["1"])  # type: ignore[index]
    assert released >= created
    assert store.prune(unused_for=DAY, keep={}, now=released + DAY / 2) == []
    assert store.prune(unused_for=DAY, keep={}, now=released + 2 * DAY) == [("m", 1)]


def test_prune_of_an_older_store_counts_history_from_the_last_alias_change(
    store: ModelStore, onnx_file: Path
) -> None:
    for _ in range(2):
        store.add("m", onnx_file)
    store.set_alias("m", "production", 1)
    store.set_alias("m", "production", 2)
    data = _on_disk(store)
    del data["released"]  # as a store written before "released" existed
    path = store.root / "m" / "aliases.json"
    path.write_text(json.dumps(data))
    changed = path.stat().st_mtime
    assert store.prune(unused_for=DAY, keep={}, now=changed + DAY / 2) == []
    assert store.prune(unused_for=DAY, keep={}, now=changed + 2 * DAY) == [("m", 1)]


def test_prune_sweeps_what_refused_and_killed_uploads_left(
    store: ModelStore, onnx_file: Path, tmp_path: Path
) -> None:
    store.add("m", onnx_file)
    store.set_alias("m", "production", 1)
    # A refused first upload of another model leaves its empty folders behind.
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model at all")
    with pytest.raises(ModelError):
        store.add("refused", junk)
    assert (store.root / "refused" / "versions").is_dir()
    # A killed agent: a staging folder, a version folder without its metadata.
    (store.root / "m" / ".staging-123-abc").mkdir()
    (store.root / "m" / ".staging-123-abc" / "incoming").write_bytes(b"half")
    (store.root / "m" / "versions" / "7").mkdir()
    (store.root / "m" / "versions" / "7" / "model.onnx").write_bytes(b"half")
    # Something that is not the store's: left alone.
    (store.root / "notes.txt").write_text("mine")

    assert store.prune(unused_for=DAY, keep={}) == []
    assert sorted(p.name for p in store.root.iterdir()) == ["m", "notes.txt"]
    assert sorted(p.name for p in (store.root / "m").iterdir()) == ["aliases.json", "versions"]
    assert [p.name for p in (store.root / "m" / "versions").iterdir()] == ["1"]
    assert _numbers(store) == [1]
    assert store.add("m", onnx_file).version == 2


def test_prune_keeps_a_model_deleted_whole_as_a_tombstone(
    store: ModelStore, onnx_file: Path
) -> None:
    store.add("m", onnx_file)
    store.delete_model("m")
    assert store.prune(unused_for=DAY, keep={}, now=time.time() + 10 * DAY) == []
    assert store.add("m", onnx_file).version == 2
