"""Importable task functions for the benchmarks.

They live in one module, which does not import parmap, so that they pickle by
reference under every start method and so that the peers can be measured even
when parmap is not importable.  ``_ptasks`` holds the ``@parallel`` ones.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

#: Environment variable naming a directory where tasks leave marker files.
#: It is set by the harness before a pool starts, so workers inherit it.
MARKER_DIR_ENV = "PARMAP_BENCH_DIR"

#: Index of the item that SIGKILLs its own worker in :func:`nap_or_die`.
KILL_AT = 15

#: Seconds one item of :func:`nap_or_skip` and :func:`nap_or_die` sleeps.
NAP_SECONDS = 0.02


def square(x: int) -> int:
    return x * x


def burn(n: int) -> int:
    """CPU-bound work proportional to ``n`` (no I/O, no allocation to speak of)."""
    acc = 0
    for i in range(n):
        acc += i * i % 7
    return acc


def burn_many(n: int, count: int) -> None:
    """What a hand-started process runs: ``count`` calls of ``burn(n)``."""
    for _ in range(count):
        burn(n)


def nap_or_skip(i: int) -> int:
    """The same map as :func:`nap_or_die` without the kill: ``KILL_AT`` returns at once."""
    if i == KILL_AT:
        return i
    time.sleep(NAP_SECONDS)
    return i


def nap_or_die(i: int) -> int:
    """Sleep ``NAP_SECONDS`` and return ``i``; the item ``KILL_AT`` SIGKILLs its own process."""
    if i == KILL_AT:
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(NAP_SECONDS)
    return i


def _mark(name: str, text: str = "") -> None:
    directory = os.environ[MARKER_DIR_ENV]
    tmp = os.path.join(directory, f".{name}.{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, os.path.join(directory, name))


def maybe_hang(i: int) -> int:
    """Every third item (0, 3, 6, ...) records when it started and hangs.

    The start time is ``time.monotonic()``; CLOCK_MONOTONIC is system-wide on
    Linux, so the parent can compare it with its own clock.
    """
    if i % 3 == 0:
        _mark(f"start-{i}", repr(time.monotonic()))
        time.sleep(3600)
    return i


def sleep_marked(i: int) -> int:
    """Leave a marker that item ``i`` runs, then sleep for a minute."""
    _mark(f"started-{i}")
    time.sleep(60)
    return i


def array_sum(arr: Any) -> float:
    """A numpy argument in, a float out."""
    return float(arr.sum())


def array_full(size: int, value: int) -> Any:
    """A small argument in, a numpy array of ``size`` doubles out."""
    import numpy as np

    return np.full(size, value, dtype=np.float64)


def array_stride_sum(arr: Any, i: int, step: int) -> float:
    """Read every page of a shared array: the sum of every ``step``-th element from ``i``."""
    return float(arr[i::step].sum())


def nap_1ms(i: int) -> int:
    """About a millisecond of "work" (a sleep, so that the CPU is left to the parent)."""
    time.sleep(0.001)
    return i


def compress9(data: bytes) -> bytes:
    """zlib at level 9: the real-workload benchmark's task (see ``real.py``)."""
    import zlib

    return zlib.compress(data, 9)


def compress9_at(pair: tuple[int, bytes]) -> tuple[int, bytes]:
    """``compress9`` with its input's index, for peers that yield in completion order."""
    return pair[0], compress9(pair[1])


def square_with(payload: Any, x: int) -> int:
    """x*x, with a payload bound by ``functools.partial`` that it never reads."""
    return x * x


def array_full_split(size: int, value: int) -> tuple[float, float]:
    """Seconds of the worker's two steps for a large result: ``np.full``, then one write.

    The write is what ``parmap._shm`` does with a result's buffer: a new
    memfd, ``ftruncate`` to size, ``pwrite`` of the buffer (a copy into
    fresh shared pages). Only the timings come back.
    """
    import numpy as np

    t0 = time.perf_counter()
    arr = np.full(size, value, dtype=np.float64)
    t1 = time.perf_counter()
    fd = os.memfd_create("bench", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, arr.nbytes)
        view = arr.data.cast("B")
        offset = 0
        while offset < arr.nbytes:
            offset += os.pwrite(fd, view[offset:], offset)
        t2 = time.perf_counter()
    finally:
        os.close(fd)
    return t1 - t0, t2 - t1
