"""add_note on exceptions whose notes are odd: other notes already, a tuple,
a property that raises; and Executor.map's iterator under throw."""

from __future__ import annotations

import pytest

from parmap import Executor
from parmap._results import add_note


class _NoNotes(Exception):
    @property
    def __notes__(self) -> list[str]:  # type: ignore[override]
        raise RuntimeError("notes are off limits")


def test_a_note_joins_the_others_once() -> None:
    exc = ValueError("v")
    exc.add_note("earlier")
    add_note(exc, "mine")
    add_note(exc, "mine")
    assert exc.__notes__ == ["earlier", "mine"]


def test_notes_in_a_tuple_become_a_list() -> None:
    exc = ValueError("v")
    exc.__notes__ = ("a",)  # type: ignore[assignment]
    add_note(exc, "mine")
    assert exc.__notes__ == ["a", "mine"]
    add_note(exc, "mine")
    assert exc.__notes__ == ["a", "mine"]
    exc.__notes__ = ("mine",)  # type: ignore[assignment]
    add_note(exc, "mine")
    assert tuple(exc.__notes__) == ("mine",)  # unchanged: the note was there


def test_notes_that_cannot_be_read_are_left_alone() -> None:
    exc = _NoNotes("n")
    add_note(exc, "mine")  # no error escapes
    with pytest.raises(RuntimeError, match="off limits"):
        exc.__notes__  # noqa: B018


def _inc(x: int) -> int:
    return x + 1


def test_executor_map_iterator_throw() -> None:
    with Executor(workers=1, backend="serial") as ex:
        it = ex.map(_inc, range(5))
        assert next(it) == 1
        with pytest.raises(KeyError, match="stop"):
            it.throw(KeyError, "stop")
        with pytest.raises(StopIteration):
            next(it)
