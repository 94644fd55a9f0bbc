"""Worst event-loop lag while CPU-bound items run in worker processes.

A ticker coroutine sleeps 10 ms in a loop and records how much later than
asked each wake-up came.  The worst of those gaps while
``await parmap.apmap(burn, items)`` runs is shown next to the same items run
through ``loop.run_in_executor(ProcessPoolExecutor)`` and next to an idle loop
(the machine's own jitter), all in the same run, round by round.

    python benchmarks/event_loop_lag.py [--rounds 5] [--items 20] [--ms 50] [--uvloop]

Each way runs "cold" and "warm".  Cold: the pool starts inside the measured
window -- that is what a caller of the bare ``await apmap(...)`` gets, and
``ProcessPoolExecutor`` also forks its workers from the loop's thread on the
first submit; ``apmap`` tears its pool down inside the await, so that counts
too.  Warm: the pool (``parmap.Pool`` / the executor) was started and used
once before the window opens.  Blocking teardown (``Pool.__exit__``,
``executor.shutdown``) runs after the window closes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _tasks

# Imported here, not in the measured window: importing takes tens of ms.
import parmap

TICK = 0.010
T = TypeVar("T")


def rotate(items: Sequence[T], r: int) -> list[T]:
    """``items`` starting at round ``r``'s turn, so that none always goes first."""
    k = r % len(items) if items else 0
    return list(items[k:]) + list(items[:k])


async def _ticker(stop: asyncio.Event, lags: list[float]) -> None:
    last = time.monotonic()
    while not stop.is_set():
        await asyncio.sleep(TICK)
        now = time.monotonic()
        lags.append(now - last - TICK)
        last = now


async def worst_lag(work: Callable[[], Awaitable[object]]) -> tuple[float, float]:
    """Run ``work()`` with the ticker beside it.

    Returns (worst lag in seconds, wall seconds of the work).
    """
    stop = asyncio.Event()
    lags: list[float] = []
    tick = asyncio.create_task(_ticker(stop, lags))
    await asyncio.sleep(TICK * 2)  # let the ticker settle before the work starts
    lags.clear()
    t0 = time.monotonic()
    try:
        await work()
    finally:
        wall = time.monotonic() - t0
        stop.set()
        await tick
    return (max(lags) if lags else wall), wall


async def _idle(seconds: float) -> None:
    await asyncio.sleep(seconds)


class Contender:
    """One way to run the items: ``setup`` and ``teardown`` run outside the
    measured window, ``work`` inside it."""

    name = ""

    def __init__(self, n: int, items: int, workers: int) -> None:
        self.n, self.items, self.workers = n, items, workers

    async def setup(self) -> None:
        pass

    async def work(self) -> object:
        raise NotImplementedError

    def teardown(self) -> None:
        pass


class ParmapCold(Contender):
    name = "parmap.apmap (cold)"

    async def work(self) -> object:
        res = await parmap.apmap(_tasks.burn, [self.n] * self.items, workers=self.workers)
        assert res.ok, res.errors
        return res


class ParmapWarm(Contender):
    name = "parmap Pool.apmap (warm)"

    async def setup(self) -> None:
        self.stack = contextlib.ExitStack()
        self.pool = self.stack.enter_context(parmap.Pool(workers=self.workers))
        await self.pool.apmap(_tasks.square, range(self.workers * 2))

    async def work(self) -> object:
        res = await self.pool.apmap(_tasks.burn, [self.n] * self.items)
        assert res.ok, res.errors
        return res

    def teardown(self) -> None:
        self.stack.close()


class ExecutorCold(Contender):
    name = "run_in_executor(PPE) (cold)"
    warm = False

    async def setup(self) -> None:
        self.ex = ProcessPoolExecutor(max_workers=self.workers)
        if self.warm:
            loop = asyncio.get_running_loop()
            await asyncio.gather(
                *(loop.run_in_executor(self.ex, _tasks.square, 1) for _ in range(self.workers * 2))
            )

    async def work(self) -> object:
        loop = asyncio.get_running_loop()
        return await asyncio.gather(
            *(loop.run_in_executor(self.ex, _tasks.burn, self.n) for _ in range(self.items))
        )

    def teardown(self) -> None:
        self.ex.shutdown(wait=True)


class ExecutorWarm(ExecutorCold):
    name = "run_in_executor(PPE) (warm)"
    warm = True


CONTENDERS: list[type[Contender]] = [ParmapCold, ParmapWarm, ExecutorCold, ExecutorWarm]


def _loop_factory(use_uvloop: bool) -> Callable[[], asyncio.AbstractEventLoop] | None:
    if not use_uvloop:
        return None
    import uvloop

    return uvloop.new_event_loop


def calibrate(ms: float) -> int:
    """Loop count for ``_tasks.burn`` that takes about ``ms`` milliseconds here."""
    n = 20_000
    while True:
        if _timed(_tasks.burn, n) > 0.02:
            break
        n *= 2
    best = min(_timed(_tasks.burn, n) for _ in range(3))
    return max(1, int(n * (ms / 1000.0) / best))


def _timed(fn: Callable[[int], object], n: int) -> float:
    t0 = time.perf_counter()
    fn(n)
    return time.perf_counter() - t0


def measure(
    n: int, rounds: int = 5, items: int = 20, workers: int = 2, use_uvloop: bool = False
) -> dict[str, list[float]]:
    """Worst lag per round for each contender, plus the idle loop.

    ``n`` is the ``_tasks.burn`` loop count of one item (see ``calibrate``).
    Returns {name: [worst lag in seconds of round 1, round 2, ...]}.  The
    contenders run in a rotating order so none always goes first.
    """
    classes = CONTENDERS
    results: dict[str, list[float]] = {cls.name: [] for cls in classes}
    results["idle loop"] = []
    factory = _loop_factory(use_uvloop)

    async def one(cls: type[Contender]) -> tuple[float, float]:
        c = cls(n, items, workers)
        await c.setup()
        try:
            lag, wall = await worst_lag(c.work)
        finally:
            c.teardown()
        return lag, wall

    for r in range(rounds):
        order = rotate(classes, r)
        with asyncio.Runner(loop_factory=factory) as runner:
            walls = []
            for cls in order:
                lag, wall = runner.run(one(cls))
                results[cls.name].append(lag)
                walls.append(wall)
            quiet = statistics.median(walls)
            idle, _ = runner.run(worst_lag(functools.partial(_idle, quiet)))
            results["idle loop"].append(idle)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--items", type=int, default=20, help="CPU-bound items per map")
    parser.add_argument("--ms", type=float, default=50.0, help="milliseconds per item")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop instead of asyncio")
    parser.add_argument(
        "--json",
        action="store_true",
        help="print {contender: [worst lag in seconds per round]} as JSON only",
    )
    args = parser.parse_args(argv)

    if not args.json:
        loop_name = "uvloop" if args.uvloop else "asyncio"
        print(
            f"# event loop lag, {loop_name}, {args.items} items of ~{args.ms:g} ms, "
            f"{args.workers} workers, {args.rounds} rounds; {os.cpu_count()} cores, "
            f"Python {platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M')}"
        )
    n = calibrate(args.ms)
    res = measure(n, args.rounds, args.items, args.workers, args.uvloop)
    if args.json:
        print(json.dumps(res))
        return 0
    print(f"{'contender':<28} {'median worst lag':>17} {'max worst lag':>14}  per round (ms)")
    for name, lags in res.items():
        rounds = " ".join(f"{x * 1000:.1f}" for x in lags)
        print(
            f"{name:<28} {statistics.median(lags) * 1000:>14.1f} ms "
            f"{max(lags) * 1000:>11.1f} ms  {rounds}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
