"""The model store: versions, aliases, hostile files, crash leftovers, bit rot."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edgewire.errors import ConfigError, DiskFull, ModelError
from edgewire.serve.store import ModelStore, ModelVersion, TensorInfo
from tests.serve.models import (
    INPUT,
    OUTPUT,
    broken_model,
    linear_model,
    model_with_external_data,
)


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "models")


@pytest.fixture
def onnx_file(tmp_path: Path) -> Path:
    path = tmp_path / "src" / "linear.onnx"
    path.parent.mkdir()
    linear_model(path)
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- adding and reading ----------------------------------------------------------------


def test_add_numbers_versions_from_one(store: ModelStore, onnx_file: Path) -> None:
    added = [store.add("mnist", onnx_file).version for _ in range(3)]
    assert added == [1, 2, 3]
    assert [v.version for v in store.versions("mnist")] == [1, 2, 3]
    assert store.names() == ["mnist"]


def test_metadata_of_the_tiny_model(store: ModelStore, onnx_file: Path) -> None:
    v = store.add(
        "mnist", onnx_file, labels=[str(i) for i in range(10)], preprocessing={"scale": 1 / 255}
    )
    assert v.name == "mnist" and v.version == 1 and v.file == "model.onnx"
    assert v.inputs == (TensorInfo(name=INPUT, dtype="float32", shape=(None, 784)),)
    assert v.outputs == (TensorInfo(name=OUTPUT, dtype="float32", shape=(None, 10)),)
    assert v.labels == tuple("0123456789")
    assert v.preprocessing == {"scale": 1 / 255}
    assert v.sha256 == _sha(onnx_file) and v.size == onnx_file.stat().st_size
    assert v.model_path == store.root / "mnist" / "versions" / "1" / "model.onnx"
    assert v.model_path.read_bytes() == onnx_file.read_bytes()
    # What get() reads back from meta.json is the same object.
    assert store.get("mnist", 1) == v


def test_model_version_round_trips_through_json_without_its_path(
    store: ModelStore, onnx_file: Path
) -> None:
    v = store.add("m", onnx_file, labels=["a", "b"])
    data = json.loads(json.dumps(v.to_dict()))
    assert "path" not in data and str(store.root) not in json.dumps(data)
    assert ModelVersion.from_dict(data, path=v.path) == v


def test_sha256_given_must_match(store: ModelStore, onnx_file: Path) -> None:
    good = store.add("m", onnx_file, sha256=_sha(onnx_file).upper())
    assert good.version == 1
    wrong = "0" * 64
    with pytest.raises(
        ModelError, match=f"sha256 mismatch: expected {wrong}, got {_sha(onnx_file)}"
    ):
        store.add("m", onnx_file, sha256=wrong)
    with pytest.raises(ConfigError, match="64 hex digits"):
        store.add("m", onnx_file, sha256="xyz")
    assert [v.version for v in store.versions("m")] == [1]


def test_size_cap_is_checked(store: ModelStore, onnx_file: Path) -> None:
    with pytest.raises(ModelError, match="over the limit of 1000"):
        store.add("m", onnx_file, max_bytes=1000)
    assert store.names() == []


@pytest.mark.parametrize("name", ["..", ".hidden", "a/b", "/etc", "", "x" * 65, "a b", "naïve"])
def test_unsafe_names_are_refused(store: ModelStore, onnx_file: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="invalid model name"):
        store.add(name, onnx_file)
    assert not store.root.exists() or list(store.root.iterdir()) == []


def test_unknown_names_and_versions_list_the_known_ones(store: ModelStore, onnx_file: Path) -> None:
    store.add("a", onnx_file)
    store.add("a", onnx_file)
    with pytest.raises(ModelError, match=r"'b' not found \(models: a\)"):
        store.resolve("b")
    with pytest.raises(ModelError, match=r"version 9 not found \(versions: 1, 2\)"):
        store.get("a", 9)
    with pytest.raises(
        ModelError, match=r"alias 'staging' of model 'a' not found \(aliases: none\)"
    ):
        store.resolve("a", "staging")
    assert store.versions("nothing") == []


# -- aliases ---------------------------------------------------------------------------


def test_resolve_default_alias_number_and_string(store: ModelStore, onnx_file: Path) -> None:
    for _ in range(3):
        store.add("m", onnx_file)
    assert store.resolve("m").version == 3  # no production alias: the latest
    store.set_alias("m", "production", 2)
    assert store.resolve("m").version == 2
    assert store.resolve("m", "production").version == 2
    assert store.resolve("m", 1).version == 1
    assert store.resolve("m", "3").version == 3
    assert store.aliases("m") == {"production": 2}


def test_set_alias_keeps_history_and_rollback_pops_it(store: ModelStore, onnx_file: Path) -> None:
    for _ in range(3):
        store.add("m", onnx_file)
    store.set_alias("m", "production", 1)
    store.set_alias("m", "production", 2)
    store.set_alias("m", "production", 2)  # same target: no history entry
    store.set_alias("m", "production", 3)
    on_disk = json.loads((store.root / "m" / "aliases.json").read_text())
    released = on_disk.pop("released")  # when each version lost its alias
    assert on_disk == {
        "aliases": {"production": 3},
        "history": {"production": [1, 2]},
        "deleted_up_to": 0,
    }
    assert sorted(released) == ["1", "2"] and released["1"] <= released["2"] <= time.time()
    assert store.rollback("m").version == 2
    assert store.rollback("m", "production").version == 1
    assert store.aliases("m") == {"production": 1}
    with pytest.raises(ModelError, match="nothing to roll back to"):
        store.rollback("m")
    assert store.aliases("m") == {"production": 1}


def test_set_alias_refuses_missing_versions_and_bad_aliases(
    store: ModelStore, onnx_file: Path
) -> None:
    store.add("m", onnx_file)
    with pytest.raises(ModelError, match="version 5 not found"):
        store.set_alias("m", "production", 5)
    with pytest.raises(ConfigError, match=r"invalid alias '\.\./x'"):
        store.set_alias("m", "../x", 1)
    with pytest.raises(ConfigError, match="plain number"):
        store.set_alias("m", "2", 1)
    assert store.aliases("m") == {}


def test_delete_refuses_an_aliased_version_unless_forced(
    store: ModelStore, onnx_file: Path
) -> None:
    for _ in range(3):
        store.add("m", onnx_file)
    store.set_alias("m", "production", 1)
    store.set_alias("m", "production", 2)
    with pytest.raises(ModelError, match="in use by alias"):
        store.delete("m", 2)
    assert [v.version for v in store.versions("m")] == [1, 2, 3]

    store.delete("m", 1)  # only in history: allowed, and dropped from it
    assert [v.version for v in store.versions("m")] == [2, 3]
    with pytest.raises(ModelError, match="nothing to roll back to"):
        store.rollback("m")

    store.delete("m", 2, force=True)
    assert store.aliases("m") == {}
    assert [v.version for v in store.versions("m")] == [3]
    assert sorted(p.name for p in (store.root / "m").iterdir()) == ["aliases.json", "versions"]
    with pytest.raises(ModelError, match="not found"):
        store.delete("m", 2)


def test_a_deleted_version_number_is_never_given_to_another_model_file(
    store: ModelStore, onnx_file: Path
) -> None:
    store.add("m", onnx_file)
    store.add("m", onnx_file)
    store.delete("m", 2)
    assert store.add("m", onnx_file).version == 3  # not 2 again: a client may still cache "2"
    store.delete("m", 3)
    store.delete("m", 1)
    assert store.versions("m") == []
    assert ModelStore(store.root).add("m", onnx_file).version == 4  # remembered on disk


# -- hostile and broken files ----------------------------------------------------------


class _Exploit:
    """Unpickling this would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def _assert_nothing_added(store: ModelStore) -> None:
    assert store.names() == []
    versions = store.root / "m" / "versions"
    assert not versions.exists() or list(versions.iterdir()) == []
    # No staging folder left behind either.
    assert [p.name for p in (store.root / "m").iterdir()] in ([], ["versions"])


def test_a_pickle_payload_is_refused_and_never_runs(store: ModelStore, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = tmp_path / "model.onnx"
    payload.write_bytes(pickle.dumps(_Exploit(marker)))
    with pytest.raises(ModelError, match="a Python pickle, not a model"):
        store.add("m", payload)
    assert not marker.exists()
    _assert_nothing_added(store)


def test_truncated_file_is_refused(store: ModelStore, onnx_file: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(onnx_file.read_bytes()[: onnx_file.stat().st_size // 2])
    with pytest.raises(ModelError):
        store.add("m", cut)
    _assert_nothing_added(store)


@pytest.mark.parametrize("size", [0, 1, 100, 5000])
def test_random_bytes_are_refused(store: ModelStore, tmp_path: Path, size: int) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes())
    with pytest.raises(ModelError):
        store.add("m", junk)
    _assert_nothing_added(store)


def test_a_model_that_only_fails_at_run_time_is_stored(store: ModelStore, tmp_path: Path) -> None:
    # The store checks files; warm-up (runtime) is what catches this one.
    path = tmp_path / "broken.onnx"
    broken_model(path)
    assert store.add("m", path).version == 1


def test_external_data_in_the_model_folder_is_copied(store: ModelStore, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    model_with_external_data(src / "ext.onnx", "weights/w.bin")
    v = store.add("m", src / "ext.onnx")
    copied = v.path / "weights" / "w.bin"
    assert copied.read_bytes() == (src / "weights" / "w.bin").read_bytes()
    assert not copied.is_symlink()
    assert v.external == {"weights/w.bin": _sha(copied)}
    store.verify(v)


@pytest.mark.parametrize("location", ["../x.bin", "/etc/passwd", "sub/../../x", "..\\x.bin"])
def test_external_data_escaping_the_folder_is_refused(
    store: ModelStore, tmp_path: Path, location: str
) -> None:
    src = tmp_path / "deep" / "src"
    src.mkdir(parents=True)
    (src / "sub").mkdir()
    (tmp_path / "deep" / "x.bin").write_bytes(b"\0" * 31360)  # there, but outside
    model_with_external_data(src / "ext.onnx", location, write_data=False)
    with pytest.raises(ModelError, match="escapes the model folder"):
        store.add("m", src / "ext.onnx")
    _assert_nothing_added(store)


def test_external_data_through_a_symlink_outside_is_refused(
    store: ModelStore, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    w, _ = model_with_external_data(src / "ext.onnx", "link.bin", write_data=False)
    outside = tmp_path / "outside.bin"
    outside.write_bytes(w.astype("<f4").tobytes())
    (src / "link.bin").symlink_to(outside)
    with pytest.raises(ModelError, match="escapes the model folder"):
        store.add("m", src / "ext.onnx")
    _assert_nothing_added(store)


def test_missing_external_data_is_refused(store: ModelStore, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    model_with_external_data(src / "ext.onnx", "w.bin", write_data=False)
    with pytest.raises(ModelError, match="does not exist"):
        store.add("m", src / "ext.onnx")
    _assert_nothing_added(store)


def test_external_data_cannot_overwrite_the_store_files(store: ModelStore, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    model_with_external_data(src / "ext.onnx", "meta.json")
    with pytest.raises(ModelError, match="not allowed"):
        store.add("m", src / "ext.onnx")
    _assert_nothing_added(store)


# -- crashes and bit rot ---------------------------------------------------------------


def test_a_stale_staging_folder_is_ignored_then_cleaned(store: ModelStore, onnx_file: Path) -> None:
    store.add("m", onnx_file)
    # What a crash mid-add leaves: a half-written staging folder.
    stale = store.root / "m" / ".staging-999-deadbeef"
    stale.mkdir()
    (stale / "model.onnx").write_bytes(b"half")
    trash = store.root / "m" / ".deleting-cafe"
    trash.mkdir()
    assert [v.version for v in store.versions("m")] == [1]
    assert store.add("m", onnx_file).version == 2
    assert not stale.exists() and not trash.exists()


def test_a_version_folder_without_metadata_is_not_a_version(
    store: ModelStore, onnx_file: Path
) -> None:
    store.add("m", onnx_file)
    (store.root / "m" / "versions" / "7").mkdir()
    assert [v.version for v in store.versions("m")] == [1]
    assert store.add("m", onnx_file).version == 2


def test_bit_rot_is_caught_by_verify(store: ModelStore, onnx_file: Path) -> None:
    v = store.add("m", onnx_file)
    store.verify(v)
    data = bytearray(v.model_path.read_bytes())
    data[len(data) // 2] ^= 0x01
    v.model_path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256 mismatch"):
        store.verify(v)


def test_bit_rot_in_external_data_is_caught(store: ModelStore, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    model_with_external_data(src / "ext.onnx", "w.bin")
    v = store.add("m", src / "ext.onnx")
    with open(v.path / "w.bin", "r+b") as f:
        f.seek(100)
        f.write(b"\xff")
    with pytest.raises(ModelError, match=r"sha256 mismatch in w\.bin"):
        store.verify(v)


def test_disk_full_while_adding_is_a_clear_error_and_changes_nothing(
    store: ModelStore, onnx_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = store.add("m", onnx_file)
    store.set_alias("m", "production", 1)

    def full(*args: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(store.root))

    # The last step of an add is the rename into versions/; fail it as a full disk would.
    monkeypatch.setattr(os, "rename", full)
    with pytest.raises(DiskFull, match="cannot store the model: the disk is full") as info:
        store.add("m", onnx_file)
    assert str(store.root) not in str(info.value)
    monkeypatch.undo()
    assert store.versions("m") == [first] and store.aliases("m") == {"production": 1}
    assert sorted(p.name for p in (store.root / "m").iterdir()) == ["aliases.json", "versions"]
    store.verify(first)


def test_concurrent_adds_get_distinct_versions(store: ModelStore, onnx_file: Path) -> None:
    got: list[int] = []
    lock = threading.Lock()

    def add() -> None:
        v = store.add("m", onnx_file)
        with lock:
            got.append(v.version)

    threads = [threading.Thread(target=add) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == [1, 2, 3, 4, 5, 6]
    assert [v.version for v in store.versions("m")] == [1, 2, 3, 4, 5, 6]
