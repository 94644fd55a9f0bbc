"""From ``loop.run_in_executor`` + ``asyncio.gather`` to ``await parmap.apmap``.

Both keep the event loop free while processes work. parmap also returns the
errors next to the values in input order, streams with ``aimap``, and when the
awaiting task is cancelled it kills the work it started, which a cancelled
``run_in_executor`` future cannot do. The ``run_in_executor`` code also runs
unchanged on ``parmap.Executor``, where a hung task is killed at its timeout,
a dying worker fails only its own future, and ``asyncio.wait_for`` giving up
on a task stops it.

Run: python examples/asyncio_run_in_executor.py
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor

import parmap


def task(index: int) -> int:
    """Every third task raises; the others sleep a little and return their index."""
    if index % 3 == 0:
        raise RuntimeError(f"task {index} failed")
    time.sleep(0.2)
    return index


async def ticker(stop: asyncio.Event) -> int:
    """Count ticks while the map runs, to show the event loop stays responsive."""
    ticks = 0
    while not stop.is_set():
        await asyncio.sleep(0.05)
        ticks += 1
    return ticks


def risky(index: int) -> int:
    """Task 0 hangs, task 1 kills its own worker process, the others return their index."""
    if index == 0:
        time.sleep(3600)
    if index == 1:
        os._exit(1)
    return index


async def gather_in(
    executor: Executor, fn: Callable[[int], object] = task, count: int = 10
) -> None:
    """The stdlib pattern, for any executor."""
    loop = asyncio.get_running_loop()
    with executor:
        futures = [loop.run_in_executor(executor, fn, i) for i in range(count)]
        results = await asyncio.gather(*futures, return_exceptions=True)
    for index, result in enumerate(results):
        print(f"  task {index}: {result!r}")


async def with_stdlib() -> None:
    print("stdlib: loop.run_in_executor + asyncio.gather")
    await gather_in(ProcessPoolExecutor(max_workers=3))


async def with_parmap_executor() -> None:
    print("parmap.Executor: the same run_in_executor, only the executor changed")
    await gather_in(parmap.Executor(max_workers=3))

    print("parmap.Executor: a hung task and a dying worker fail only their own futures")
    await gather_in(parmap.Executor(max_workers=3, timeout=1), risky, 5)

    print("parmap.Executor: asyncio.wait_for gives up on a task, and that stops it")
    loop = asyncio.get_running_loop()
    with parmap.Executor(max_workers=1) as executor:
        started = time.monotonic()
        try:
            await asyncio.wait_for(loop.run_in_executor(executor, risky, 0), timeout=0.5)
        except TimeoutError:
            print("  wait_for timed out; the hung task's worker was killed")
    print(f"  the executor shut down {time.monotonic() - started:.1f} s after the start")


async def with_parmap() -> None:
    print("parmap: await apmap")
    stop = asyncio.Event()
    ticks = asyncio.create_task(ticker(stop))
    result = await parmap.apmap(task, range(10), workers=3, on_error="collect")
    stop.set()
    for index, value in enumerate(result.values):
        error = result.errors.get(index)
        print(f"  task {index}: {error if error is not None else value!r}")
    print(f"  the event loop ticked {await ticks} times meanwhile")

    print("parmap: async for over aimap, as they complete")
    async for out in parmap.aimap(task, range(10), workers=3, on_error="collect"):
        print(f"  task {out.index}: {out.value if out.ok else out.error!r}")


if __name__ == "__main__":
    asyncio.run(with_stdlib())
    asyncio.run(with_parmap())
    asyncio.run(with_parmap_executor())
