"""From ``submit`` + ``as_completed`` to ``parmap.imap``.

The stdlib loop has to carry each future's index in a dict and unwrap every
exception with ``future.result()``. ``parmap.imap`` yields ``Outcome`` objects
that already hold the index and either the value or the captured error, and
its ``timeout`` really stops a task that hangs.

Run: python examples/as_completed.py
"""

from __future__ import annotations

import time
from concurrent.futures import ProcessPoolExecutor, as_completed

import parmap


def task(index: int) -> int:
    """Every third task raises; the others sleep a little and return their index."""
    if index % 3 == 0:
        raise RuntimeError(f"task {index} failed")
    time.sleep(0.2)
    return index


def with_stdlib() -> None:
    print("stdlib: ProcessPoolExecutor.submit + as_completed")
    with ProcessPoolExecutor(max_workers=3) as executor:
        futures = {executor.submit(task, i): i for i in range(10)}
        for future in as_completed(futures):
            index = futures[future]
            try:
                print(f"  task {index}: {future.result()!r}")
            except RuntimeError as exc:
                print(f"  task {index}: failed with {exc!r}")


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
