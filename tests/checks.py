"""Checks several test modules make of a map's outcome."""

from __future__ import annotations

from parmap import MapResult


def has_traceback(error: BaseException) -> bool:
    """In-process errors keep their own traceback; remote ones carry its text."""
    return error.__traceback__ is not None or "Traceback" in str(error.__cause__)


def seed_expectations(res: MapResult[int]) -> None:
    """The outcome of ``jobs.fail_every_third`` over ``range(10)`` in collect mode."""
    assert res.values == [None, 1, 2, None, 4, 5, None, 7, 8, None]
    assert list(res.errors) == [0, 3, 6, 9]
    for index, error in res.errors.items():
        assert type(error) is RuntimeError
        assert str(error) == f"task {index} failed"
        assert f"parmap: raised for input index {index}" in error.__notes__
        assert has_traceback(error)
