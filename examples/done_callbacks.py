"""From ``Future.add_done_callback`` to a progress bar and an ``Outcome`` loop.

Done-callbacks run in the executor's internal thread, so the state they share
needs a lock, and the results arrive out of order. With parmap the loop over
``imap`` runs in your own thread, and a progress bar is one option away
(``progress=True``).

Run: python examples/done_callbacks.py
"""

from __future__ import annotations

import functools
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor

import parmap


def task(index: int) -> int:
    """Every third task raises; the others sleep a little and return their index."""
    if index % 3 == 0:
        raise RuntimeError(f"task {index} failed")
    time.sleep(0.2)
    return index


def with_stdlib() -> None:
    print("stdlib: Future.add_done_callback")
    lock = threading.Lock()
    results: dict[int, object] = {}

    def on_done(index: int, future: Future[int]) -> None:
        error = future.exception()
        with lock:
            results[index] = error if error is not None else future.result()
            print(f"  done {len(results)}/10")

    with ProcessPoolExecutor(max_workers=3) as executor:
        for i in range(10):
            executor.submit(task, i).add_done_callback(functools.partial(on_done, i))
    for index in sorted(results):
        print(f"  task {index}: {results[index]!r}")


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
