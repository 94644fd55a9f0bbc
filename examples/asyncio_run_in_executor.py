"""From ``loop.run_in_executor`` + ``asyncio.gather`` to ``await parmap.apmap``.

Both keep the event loop free while processes work. parmap also returns the
errors next to the values in input order, streams with ``aimap``, and when the
awaiting task is cancelled it kills the work it started, which a cancelled
``run_in_executor`` future cannot do.

Run: python examples/asyncio_run_in_executor.py
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ProcessPoolExecutor

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


async def with_stdlib() -> None:
    print("stdlib: loop.run_in_executor + asyncio.gather")
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(max_workers=3) as executor:
        futures = [loop.run_in_executor(executor, task, i) for i in range(10)]
        results = await asyncio.gather(*futures, return_exceptions=True)
    for index, result in enumerate(results):
        print(f"  task {index}: {result!r}")


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
