"""From ``submit`` + ``as_completed`` to ``parmap.imap``, or to ``parmap.Executor``.

The stdlib loop has to carry each future's index in a dict and unwrap every
exception with ``future.result()``. ``parmap.imap`` yields ``Outcome`` objects
that already hold the index and either the value or the captured error, and
its ``timeout`` really stops a task that hangs. The same stdlib loop also runs
unchanged on ``parmap.Executor``, which kills a hung task at its timeout and
fails only the future of a task whose worker dies.

Run: python examples/as_completed.py
"""

from __future__ import annotations

import os
import time
from concurrent.futures import Executor, ProcessPoolExecutor, as_completed

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


def submit_and_collect(executor: Executor) -> None:
    """The stdlib pattern, for any executor."""
    with executor:
        futures = {executor.submit(task, i): i for i in range(10)}
        for future in as_completed(futures):
            index = futures[future]
            try:
                print(f"  task {index}: {future.result()!r}")
            except RuntimeError as exc:
                print(f"  task {index}: failed with {exc!r}")


def with_stdlib() -> None:
    print("stdlib: ProcessPoolExecutor.submit + as_completed")
    submit_and_collect(ProcessPoolExecutor(max_workers=3))


def with_parmap_executor() -> None:
    print("parmap.Executor: the same loop, only the executor changed")
    submit_and_collect(parmap.Executor(max_workers=3))

    print("parmap.Executor: a hung task and a dying worker fail only their own futures")
    with parmap.Executor(max_workers=3, timeout=1) as executor:
        futures = {executor.submit(risky, i): i for i in range(5)}
        for future in as_completed(futures):
            error = future.exception()
            outcome = repr(future.result()) if error is None else type(error).__name__
            print(f"  risky {futures[future]}: {outcome}")


def with_parmap() -> None:
    print("parmap: imap, results as they complete")
    # on_error="collect" keeps going after a failure; timeout kills a stuck task.
    for out in parmap.imap(task, range(10), workers=3, on_error="collect", timeout=10):
        if out.ok:
            print(f"  task {out.index}: {out.value!r}")
        else:
            print(f"  task {out.index}: failed with {out.error!r}")


if __name__ == "__main__":
    with_stdlib()
    with_parmap()
    with_parmap_executor()
