"""Event loops that cannot watch file descriptors get the waiting-thread fallback."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVarTuple, Unpack

import pytest

from parmap import Pool, TaskTimeoutError, aimap, apmap

from . import jobs
from .checks import aeventually, eventually

Ts = TypeVarTuple("Ts")


class NoReaderLoop(asyncio.SelectorEventLoop):
    """Behaves like Windows' proactor loop: no add_reader."""

    def add_reader(self, fd: Any, callback: Callable[[Unpack[Ts]], object], *args: *Ts) -> None:
        raise NotImplementedError

    def remove_reader(self, fd: Any) -> bool:
        raise NotImplementedError


def run(coro: Any) -> Any:
    with asyncio.Runner(loop_factory=NoReaderLoop) as runner:
        return runner.run(coro)


def test_apmap_works_without_add_reader() -> None:
    res = run(apmap(jobs.fail_every_third, range(10), workers=3, on_error="collect"))
    assert res.values == [None, 1, 2, None, 4, 5, None, 7, 8, None]
    assert sorted(res.errors) == [0, 3, 6, 9]


def test_the_fallback_thread_stops_with_the_map() -> None:
    before = threading.active_count()
    run(apmap(jobs.square, range(50), workers=2))
    eventually(
        lambda: threading.active_count() <= before,
        within=5,
        message=lambda: f"{threading.active_count() - before} fallback thread(s) still running",
    )
    assert threading.active_count() == before


def test_timeouts_crashes_and_cancellation_without_add_reader(tmp_path: Path) -> None:
    async def main() -> None:
        with Pool(workers=2) as pool:
            res = await pool.apmap(
                jobs.crash_how, range(6), ["os_exit"] * 6, [2] * 6, on_error="collect"
            )
            assert list(res.errors) == [2]
            res = await pool.apmap(jobs.hang_if, range(4), [1] * 4, timeout=0.5, on_error="collect")
            assert isinstance(res.errors[1], TaskTimeoutError)
            task = asyncio.ensure_future(
                pool.apmap(jobs.async_marked_sleep, [str(tmp_path)] * 2, range(2), [60.0] * 2)
            )
            # Cancelled while both items are running, not before they started.
            await aeventually(
                lambda: len(list(tmp_path.glob("*.pid"))) == 2,
                within=60,
                message="the items never started",
            )
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert (await pool.apmap(jobs.square, range(3))).values == [0, 1, 4]

    start = time.monotonic()
    run(main())
    assert time.monotonic() - start < 30


def test_aimap_with_async_input_without_add_reader() -> None:
    async def source() -> Any:
        for i in range(20):
            await asyncio.sleep(0)
            yield i

    async def main() -> list[int]:
        return [o.index async for o in aimap(jobs.square, source(), workers=2, ordered=True)]

    assert run(main()) == list(range(20))
