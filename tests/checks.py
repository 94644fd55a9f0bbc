"""Checks several test modules make: of a map's outcome, and of a state reached in time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

from parmap import MapResult
from parmap._scheduler import ChunkMessage, Send

T = TypeVar("T")


def eventually(
    check: Callable[[], T], *, within: float, message: str | Callable[[], str], every: float = 0.01
) -> T:
    """Poll ``check`` until it returns something truthy, and return that.

    After ``within`` seconds, fail with ``message`` (a callable is asked at that
    moment, so that it can name what is still wrong).
    """
    deadline = time.monotonic() + within
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError(message() if callable(message) else message)
        time.sleep(every)
    return result


async def aeventually(
    check: Callable[[], T], *, within: float, message: str | Callable[[], str], every: float = 0.01
) -> T:
    """``eventually`` for a coroutine: waits with ``asyncio.sleep``, so the loop runs on."""
    deadline = time.monotonic() + within
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError(message() if callable(message) else message)
        await asyncio.sleep(every)
    return result


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


def sent(cmd: Send) -> ChunkMessage:
    """The chunk in ``cmd``, from a scheduler whose ``encode`` returns its message."""
    assert isinstance(cmd.payload, ChunkMessage), cmd.payload
    return cmd.payload
