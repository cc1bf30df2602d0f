"""The exception tree: one class per code, exit codes and HTTP statuses by class, help that lists them."""

from __future__ import annotations

import gc

import pytest
from typer.testing import CliRunner

from edgewire import errors
from edgewire.cli.main import app
from edgewire.errors import (
    EXIT_CODES,
    EdgewireError,
    ModelError,
    ModelNotFound,
    error_for_code,
    one_line,
)


def all_classes() -> list[type[EdgewireError]]:
    """Every error class, found by walking the tree (not by reading the registry)."""
    gc.collect()  # a class refused at creation lingers in __subclasses__ until collected
    found: list[type[EdgewireError]] = []
    todo = [EdgewireError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


def test_every_code_is_unique_and_registered() -> None:
    classes = all_classes()
    codes = [cls.code for cls in classes]
    assert len(codes) == len(set(codes)), sorted(codes)
    for cls in classes:
        assert error_for_code(cls.code) is cls
    assert error_for_code("no-such-code") is EdgewireError


def test_every_code_exits_with_a_listed_exit_code() -> None:
    for cls in all_classes():
        assert cls.exit_code in EXIT_CODES, cls
    assert EXIT_CODES[0] == "success" and 130 in EXIT_CODES


def test_exit_code_texts_are_the_help_of_the_class_that_owns_them() -> None:
    for cls in all_classes():
        if "exit_code" in vars(cls):
            assert EXIT_CODES[cls.exit_code] == cls.help
    assert EXIT_CODES[ModelNotFound.exit_code] == ModelError.help  # shared, owned by ModelError


def test_help_lists_every_exit_code_with_its_error_codes() -> None:
    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"}, terminal_width=200)
    assert result.exit_code == 0, result.output
    lines = {}
    for line in result.output.splitlines():
        number, _, rest = line.strip(" │").partition("  ")
        if number.isdigit():
            lines[int(number)] = rest
    assert set(lines) == set(EXIT_CODES)
    for cls in all_classes():
        listed, _, text = lines[cls.exit_code].partition(": ")
        assert cls.code in listed.split(", "), (cls, lines[cls.exit_code])
        assert text == EXIT_CODES[cls.exit_code].rstrip(".")


def test_a_model_that_is_not_there_is_404_and_one_that_fails_is_500() -> None:
    assert issubclass(ModelNotFound, ModelError)
    assert (ModelNotFound.code, ModelNotFound.http_status) == ("model_not_found", 404)
    assert ModelError.http_status == 500
    assert ModelNotFound().message == "The model or version is not in the store or not served."


@pytest.mark.parametrize(
    ("name", "status"),
    [
        ("EdgewireError", 500), ("ConfigError", 400), ("DependencyMissing", 500),
        ("DataError", 400), ("ProtocolError", 400), ("FrameTooLarge", 413),
        ("ChecksumMismatch", 400), ("RemoteError", 502), ("ConnectError", 502),
        ("PeerTimeout", 504), ("BusyError", 503), ("AuthError", 401), ("TrainError", 500),
        ("CheckpointError", 500), ("ModelError", 500), ("ModelNotFound", 404),
        ("GateRefused", 422),
    ],
)  # fmt: skip
def test_http_status_by_class(name: str, status: int) -> None:
    cls = getattr(errors, name)
    assert "http_status" in vars(cls), f"{name} inherits its status; set it"
    assert cls.http_status == status


def test_a_second_class_with_a_taken_code_is_refused_when_defined() -> None:
    with pytest.raises(TypeError, match="'model' of Duplicate is already ModelError's"):

        class Duplicate(EdgewireError):
            code = "model"

    with pytest.raises(TypeError, match="'protocol' of NoCodeOfItsOwn is already"):

        class NoCodeOfItsOwn(errors.ProtocolError):
            pass

    assert error_for_code("model") is ModelError  # the refused classes left no trace
    assert [cls.__name__ for cls in all_classes()].count("Duplicate") == 0


def test_an_exit_code_belongs_to_one_branch_of_the_tree() -> None:
    with pytest.raises(TypeError, match="exit code 11 of Stray is already ModelError's"):

        class Stray(EdgewireError):
            code = "stray-test-only"
            exit_code = 11

    assert error_for_code("stray-test-only") is EdgewireError


@pytest.mark.parametrize(
    ("exc", "limit", "expected"),
    [
        (ValueError("bad weights"), 300, "bad weights"),
        (ValueError("\n\n  first line  \nsecond line"), 300, "first line"),
        (ValueError(""), 300, "ValueError"),
        (KeyError(), 300, "KeyError"),
        (ValueError("x" * 20), 10, "xxxxxxx..."),
        (ValueError("x" * 10), 10, "x" * 10),
    ],
)
def test_one_line(exc: BaseException, limit: int, expected: str) -> None:
    assert one_line(exc, limit=limit) == expected


def test_one_line_default_limit_is_300() -> None:
    line = one_line(RuntimeError("y" * 1000))
    assert len(line) == 300 and line.endswith("...")
