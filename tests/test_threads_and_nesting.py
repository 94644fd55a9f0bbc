"""Threads in the parent, maps sharing a pool, and maps inside workers.

* A parent whose other threads are busy (computing, logging, flushing
  stdout, allocating) can still start workers with every start method: a
  forked child never needs a lock those threads might hold.
* Threads may share one ``Pool`` or one ``@parallel`` function: they take
  turns driving it, and each gets its own results.
* ``pmap`` works inside a worker (workers are not daemonic, so they may have
  children); the inner pool is the worker's business and goes away with it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from parmap import Pool, TaskTimeoutError, pmap
from parmap._backends.process import RETIRE_GRACE
from parmap._options import StartMethod

from . import jobs
from .procs import processes, wait_ended

START_METHODS = ["fork", "spawn", "forkserver"]


# ----------------------------------------------------------- busy parent threads
def _spin(kind: str, stop: threading.Event) -> int:
    """Keep a thread busy in ways that hold interpreter and library locks."""
    count = 0
    with open(os.devnull, "w") as sink:
        # A logger of its own (no parent), so that nothing reaches pytest's handlers.
        logger = logging.Logger(f"parmap-tests-spin-{kind}")
        logger.addHandler(logging.StreamHandler(sink))
        while not stop.is_set():
            count += 1
            if kind == "compute":
                sum(range(2000))
            elif kind == "log":
                logger.warning("spinning %d", count)
            elif kind == "flush":
                sys.stderr.flush()
            else:
                [bytearray(512) for _ in range(64)]
    return count


@pytest.fixture
def busy_threads() -> Iterator[None]:
    stop = threading.Event()
    with ThreadPoolExecutor(4) as executor:
        futures = [executor.submit(_spin, k, stop) for k in ("compute", "log", "flush", "alloc")]
        try:
            yield
        finally:
            stop.set()
        for future in futures:
            assert future.result() > 0


@pytest.mark.parametrize("method", START_METHODS)
@pytest.mark.usefixtures("busy_threads")
@pytest.mark.timeout(120)
def test_a_parent_with_busy_threads_can_still_map(method: StartMethod) -> None:
    """Workers start (and a timed-out one is replaced) while other threads run."""
    plan = ["hang" if i == 40 else "ok" for i in range(80)]
    for _ in range(2):
        res = pmap(
            jobs.hard_chaos,
            range(80),
            plan,
            workers=2,
            start_method=method,
            timeout=0.5,
            on_error="collect",
        )
        assert list(res.errors) == [40] and isinstance(res.errors[40], TaskTimeoutError)
        assert res.values == [None if i == 40 else 2 * i for i in range(80)]


# ------------------------------------------------------------ threads sharing
@pytest.mark.timeout(120)
def test_threads_share_one_pool_each_getting_its_own_results() -> None:
    failures: list[BaseException] = []

    def user(k: int, pool: Pool) -> None:
        try:
            for round_ in range(5):
                base = 1000 * k + 100 * round_
                xs = list(range(base, base + 60))
                if (k + round_) % 2:
                    assert pool.pmap(jobs.square, xs).values == [x * x for x in xs]
                else:
                    outs = list(pool.imap(jobs.add, xs, xs, ordered=True, chunksize=3))
                    assert [o.index for o in outs] == list(range(60))
                    assert [o.value for o in outs] == [2 * x for x in xs]
                res = pool.pmap(jobs.raise_value_error, [k], on_error="collect")
                assert str(res.errors[0]) == f"bad {k}"
        except BaseException as exc:
            failures.append(exc)

    with Pool(workers=3) as pool:
        threads = [threading.Thread(target=user, args=(k, pool)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(100)
        assert not any(t.is_alive() for t in threads), "a thread never finished"
    assert not failures, failures


@pytest.mark.timeout(120)
def test_threads_share_one_decorated_function() -> None:
    task = jobs.decorated_square
    results: dict[int, list[list[int | None]]] = {}

    def user(k: int) -> None:
        results[k] = [task.pmap(range(k, k + 30)).values for _ in range(10)]

    try:
        threads = [threading.Thread(target=user, args=(k,)) for k in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(100)
    finally:
        task.close()
    assert results == {k: [[x * x for x in range(k, k + 30)]] * 10 for k in range(3)}


@pytest.mark.timeout(60)
def test_many_concurrent_maps_on_one_pool_each_reach_the_workers() -> None:
    """More concurrent maps than a worker caches functions for: none may lose its function."""

    async def main(pool: Pool) -> list[int]:
        results = await asyncio.gather(
            *(
                pool.apmap(jobs.sleep_return, [0.001] * 30, range(30), on_error="collect")
                for _ in range(100)
            )
        )
        return [len(r.errors) for r in results]

    with Pool(workers=2) as pool:
        failed = asyncio.run(main(pool))
    assert sum(failed) == 0, f"{sum(failed)} items of {sum(1 for f in failed if f)} maps failed"


@pytest.mark.timeout(60)
def test_leaving_one_map_early_does_not_strand_another_on_the_same_pool() -> None:
    """A consumer gives up while another map waits for the busy worker."""

    async def main(pool: Pool) -> list[int | None]:
        first = pool.aimap(jobs.sleep_return, [0.2, 30.0], chunksize=2)
        assert (await anext(first)).value is None  # the worker now runs the 30 s item
        waiting = asyncio.ensure_future(pool.apmap(jobs.square, [3]))
        await asyncio.sleep(0)  # the second map is fed and waits for the worker
        await first.aclose()  # kills the busy worker; a fresh one starts
        try:
            return (await asyncio.wait_for(waiting, 20)).values
        except TimeoutError:
            waiting.cancel()
            raise AssertionError("the waiting map never ran on the replacement worker") from None

    with Pool(workers=1) as pool:
        assert asyncio.run(main(pool)) == [9]


# ---------------------------------------------------------------------- nesting
@pytest.mark.parametrize("method", START_METHODS)
@pytest.mark.timeout(120)
def test_pmap_inside_a_worker_works_and_cleans_up(method: StartMethod) -> None:
    res = pmap(jobs.hard_nested_pmap, [5, 8], workers=2, start_method=method)
    inner_pids: list[int] = []
    for n, (values, pids, outer) in zip([5, 8], res.values, strict=True):  # type: ignore[misc]
        assert values == [x * x for x in range(n)]
        assert pids and outer not in pids
        inner_pids += pids
    assert not wait_ended(processes(inner_pids), 5), "an inner pool's worker outlived its map"


@pytest.mark.timeout(120)
def test_a_nested_pool_goes_away_with_its_timed_out_item(tmp_path: Path) -> None:
    """The outer item is killed at its deadline; its inner workers notice and exit."""
    res = pmap(jobs.hard_nested_hang, [str(tmp_path)], workers=1, timeout=3.0, on_error="collect")
    assert isinstance(res.errors[0], TaskTimeoutError)
    inner = [int(p.read_text()) for p in tmp_path.glob("*.pid")]
    assert len(inner) == 2, "the inner items never started within the outer timeout"
    assert not wait_ended(processes(inner), 10), "inner workers outlived the killed outer worker"


@pytest.mark.timeout(120)
def test_a_decorated_function_used_inside_workers_does_not_hold_up_pool_close() -> None:
    """A @parallel function keeps its pool inside the worker; the worker must close it on exit."""
    with Pool(workers=2) as pool:
        res = pool.pmap(jobs.hard_nested_decorated_pids, [4, 4], chunksize=1)
        inner = [pid for pids in res.values for pid in pids or []]
        started = time.monotonic()
    took = time.monotonic() - started
    assert len(inner) >= 2
    assert not wait_ended(processes(inner), 10), "inner workers outlived the outer pool"
    assert took < RETIRE_GRACE, (
        f"closing the pool took {took:.1f} s: its workers did not exit when told to "
        "(they wait for the inner pool's workers, which wait for them)"
    )
