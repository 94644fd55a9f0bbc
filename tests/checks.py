"""Checks several test modules make: of a map's outcome, and of a state reached in time."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import pytest

from parmap import MapResult
from parmap._events import ChunkMessage, Command, Encoded, Send, encode_chunk
from parmap._scheduler import Scheduler

T = TypeVar("T")

#: The repository's root: subprocesses run there, so ``-m tests.x`` works.
ROOT = Path(__file__).resolve().parent.parent


def run_limited(
    command: Sequence[str], *, limit: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``command`` from the repository's root; if it outlives ``limit`` seconds, fail.

    This is how a case that could hang runs: a hang fails its test, with what
    the case had printed so far, instead of stalling the suite.
    """
    try:
        return subprocess.run(
            list(command), cwd=ROOT, capture_output=True, text=True, timeout=limit, env=env
        )
    except subprocess.TimeoutExpired as exc:

        def text(out: str | bytes | None) -> str:
            return out.decode(errors="replace") if isinstance(out, bytes) else out or ""

        pytest.fail(
            f"{' '.join(os.path.basename(str(c)) for c in command[1:])} hung for {limit} s\n"
            f"stdout:\n{text(exc.stdout)}\nstderr:\n{text(exc.stderr)}"
        )


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


def execute(
    sched: Scheduler,
    run: Callable[[Command], None] = lambda cmd: None,
    *,
    encode: Callable[[ChunkMessage], object] = lambda message: message,
) -> list[Command]:
    """Carry out what ``sched`` asks for the way ``Engine.execute`` does; return it.

    Each command is ``run`` in order; a ``Send`` is first encoded with
    ``encode`` (by default the message itself, as for an in-process backend)
    and how that went is reported to the scheduler, which may then queue
    more. A chunk that does not encode is not run (nor returned): it never
    left.
    """
    done: list[Command] = []
    while commands := sched.take_commands():
        for cmd in commands:
            if isinstance(cmd, Send):
                _payload, report = encode_chunk(encode, cmd)
                if isinstance(report, Encoded):
                    run(cmd)
                    done.append(cmd)
                sched.handle(report)
            else:
                run(cmd)
                done.append(cmd)
    return done
