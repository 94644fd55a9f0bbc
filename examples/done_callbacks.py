"""From ``Future.add_done_callback`` to a progress bar and an ``Outcome`` loop.

Done-callbacks run in the executor's internal thread, so the state they share
needs a lock, and the results arrive out of order. With parmap the loop over
``imap`` runs in your own thread, and a progress bar is one option away
(``progress=True``). The callback code also runs unchanged on
``parmap.Executor``, where each callback still runs exactly once when a task
hangs past its timeout (its worker is killed) or its worker dies.

Run: python examples/done_callbacks.py
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor

import parmap


def task(index: int) -> int:
    """Every third task raises; the others sleep a little and return their index."""
    if index % 3 == 0:
        raise RuntimeError(f"task {index} failed")
    time.sleep(0.2)
    return index


def risky(index: int) -> int:
    """Task 0 hangs, task 1 kills its own worker process, the others return their index."""
    if index == 0:
        time.sleep(3600)
    if index == 1:
        os._exit(1)
    return index


def with_callbacks(executor: Executor, fn: Callable[[int], object] = task, count: int = 10) -> None:
    """The stdlib pattern, for any executor."""
    lock = threading.Lock()
    results: dict[int, object] = {}

    def on_done(index: int, future: Future[int]) -> None:
        error = future.exception()
        with lock:
            results[index] = error if error is not None else future.result()
            print(f"  done {len(results)}/{count}")

    with executor:
        for i in range(count):
            executor.submit(fn, i).add_done_callback(functools.partial(on_done, i))
    for index in sorted(results):
        print(f"  task {index}: {results[index]!r}")


def with_stdlib() -> None:
    print("stdlib: Future.add_done_callback")
    with_callbacks(ProcessPoolExecutor(max_workers=3))


def with_parmap_executor() -> None:
    print("parmap.Executor: the same callbacks, only the executor changed")
    with_callbacks(parmap.Executor(max_workers=3))

    print("parmap.Executor: a hung task and a dying worker still call back once each")
    with_callbacks(parmap.Executor(max_workers=3, timeout=1), risky, 5)


def with_parmap() -> None:
    print("parmap: an Outcome loop replaces the callback")
    results: dict[int, object] = {}
    for out in parmap.imap(task, range(10), workers=3, on_error="collect"):
        # The loop body runs in the caller's thread, so no lock is needed.
        results[out.index] = out.value if out.ok else out.error
        print(f"  done {len(results)}/10")
    for index in sorted(results):
        print(f"  task {index}: {results[index]!r}")

    print("parmap: pmap with a progress bar (on stderr)")
    result = parmap.pmap(task, range(10), workers=3, on_error="collect", progress=True)
    print(f"  values: {result.values}")
    print(f"  errors: {sorted(result.errors)}")


if __name__ == "__main__":
    with_stdlib()
    with_parmap()
    with_parmap_executor()
