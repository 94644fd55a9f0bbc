"""From a signal-ignoring ``initializer`` to parmap's ``ignore_signals=True``.

With ``ProcessPoolExecutor`` a common recipe makes workers ignore SIGINT and
SIGTERM, so Ctrl-C reaches only the parent instead of printing a traceback
from every worker; your own per-worker setup then has to share that one
initializer. parmap ignores both signals in its workers by default, stops the
workers itself on Ctrl-C, and runs your ``initializer=`` after its own.

Run: python examples/ignore_signals_initializer.py
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor

import parmap

_greeting = "unset"  # set in each worker by the initializer


def ignore_signals_and_setup(greeting: str) -> None:
    """The stdlib recipe: ignore Ctrl-C and SIGTERM, then do the real setup."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    setup(greeting)


def setup(greeting: str) -> None:
    """Per-worker setup, which is all parmap's ``initializer=`` has to do."""
    global _greeting
    _greeting = greeting


def task(index: int) -> str:
    """Every third task raises; the others report the worker's setup and signal state."""
    if index % 3 == 0:
        raise RuntimeError(f"task {index} failed")
    time.sleep(0.2)
    ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    return f"{_greeting} from task {index}, SIGINT ignored: {ignored}"


def risky(index: int) -> int:
    """Task 0 hangs, task 1 kills its own worker process, the others return their index."""
    if index == 0:
        time.sleep(3600)
    if index == 1:
        os._exit(1)
    return index


def run_tasks(executor: Executor, fn: Callable[[int], object] = task, count: int = 10) -> None:
    """The stdlib pattern, for any executor."""
    with executor:
        futures = [executor.submit(fn, i) for i in range(count)]
    for index, future in enumerate(futures):
        error = future.exception()
        print(f"  task {index}: {error!r}" if error is not None else f"  {future.result()}")


def with_stdlib() -> None:
    print("stdlib: ProcessPoolExecutor(initializer=ignore_signals_and_setup)")
    run_tasks(
        ProcessPoolExecutor(
            max_workers=3, initializer=ignore_signals_and_setup, initargs=("hello",)
        )
    )


def with_parmap_executor() -> None:
    print("parmap.Executor(initializer=ignore_signals_and_setup): only the executor changed")
    run_tasks(
        parmap.Executor(max_workers=3, initializer=ignore_signals_and_setup, initargs=("hello",))
    )

    print("parmap.Executor: a hung task and a dying worker fail only their own futures")
    run_tasks(parmap.Executor(max_workers=3, timeout=1), risky, 4)

    print("parmap.Executor: Ctrl-C inside the with block (simulated with SIGINT)")
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
    started = time.monotonic()
    timer.start()
    try:
        with parmap.Executor(max_workers=3) as executor:
            for future in [executor.submit(time.sleep, 5.0) for _ in range(6)]:
                future.result()
    except KeyboardInterrupt:
        elapsed = time.monotonic() - started
        print(f"  KeyboardInterrupt after {elapsed:.1f} s; the running tasks were stopped")
    finally:
        timer.cancel()


def with_parmap() -> None:
    print("parmap: pmap(initializer=setup); ignore_signals=True is the default")
    result = parmap.pmap(
        task, range(10), workers=3, on_error="collect", initializer=setup, initargs=("hello",)
    )
    for index, value in enumerate(result.values):
        error = result.errors.get(index)
        print(f"  task {index}: {error!r}" if error is not None else f"  {value}")

    print("parmap: Ctrl-C during a map (simulated with SIGINT to this process)")
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
    started = time.monotonic()
    timer.start()
    try:
        parmap.pmap(time.sleep, [5.0] * 6, workers=3)
    except KeyboardInterrupt:
        elapsed = time.monotonic() - started
        print(f"  KeyboardInterrupt after {elapsed:.1f} s; the workers are stopped, no tracebacks")
    finally:
        timer.cancel()


if __name__ == "__main__":
    with_stdlib()
    with_parmap()
    with_parmap_executor()
