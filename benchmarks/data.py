"""Benchmarks of real data: large numpy arguments and results, a shared array, text.

The workloads of issue 11, registered in ``run.py``:

* ``numpy_args``: 48 arguments of 16 MB each, each returning a float;
* ``numpy_results``: 48 small arguments, each returning a 16 MB array;
* ``shared_array``: one 512 MB array shared by 64 items (also the peak
  memory of the parent and its workers together, with shared memory counted
  once);
* ``text``: 30,000 strings of 100 characters through ``str.upper``.

Every contender runs in each round, in rotated order, on a warm pool, and
gets freshly made inputs outside the timed region: joblib keeps the memmaps
it made for an array object across calls, so mapping the very same arrays
again would time its cache rather than its transport (``repeat`` rows show
that case). The target is a ratio to the fastest peer taken within each round.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import _tasks
import numpy as np
from event_loop_lag import rotate

import parmap

WORKERS = 2
Args = list[tuple[Any, ...]]
Runner = Callable[[Args], list[Any]]


def _contenders(
    work: Callable[..., Any], chunksize: int, stack: contextlib.ExitStack
) -> dict[str, Runner]:
    """Warm pools of parmap and each installed peer, each mapping ``work`` over its argument."""
    from run import POOL, PPE, joblib, mpire, shutdown_joblib

    def columns(args: Args) -> list[tuple[Any, ...]]:
        return list(zip(*args, strict=True))

    runs: dict[str, Runner] = {}
    pool = stack.enter_context(parmap.Pool(workers=WORKERS))
    runs["parmap"] = lambda args: pool.pmap(work, *columns(args)).unwrap()
    mpool = stack.enter_context(mp.Pool(WORKERS))
    runs[POOL] = lambda args: mpool.starmap(work, args, chunksize=chunksize)
    ex = stack.enter_context(ProcessPoolExecutor(max_workers=WORKERS))
    runs[PPE] = lambda args: list(ex.map(work, *columns(args), chunksize=chunksize))
    if joblib is not None:
        par = stack.enter_context(joblib.Parallel(n_jobs=WORKERS))  # memmapping on (1M)
        stack.callback(shutdown_joblib)
        runs["joblib"] = lambda args: list(par(joblib.delayed(work)(*a) for a in args))
    if mpire is not None:
        wp = stack.enter_context(mpire.WorkerPool(n_jobs=WORKERS, keep_alive=True))
        runs["mpire"] = lambda args: wp.map(
            work, args, chunk_size=chunksize, concatenate_numpy_output=False
        )
    return runs


def _timed_rounds(
    runs: dict[str, Runner],
    rounds: int,
    make: Callable[[], Args],
    check: Callable[[list[Any]], bool],
) -> dict[str, list[float]]:
    """Seconds of each contender per round on fresh inputs (round -1 warms up)."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(-1, rounds):
        for name in rotate(list(runs), r):
            args = make()
            t0 = time.perf_counter()
            out = runs[name](args)
            dt = time.perf_counter() - t0
            if not check(out):
                raise AssertionError(f"{name} returned wrong results")
            del out, args
            if r >= 0:
                times[name].append(dt)
    return times


def _report(ctx: Any, wl: str, times: dict[str, list[float]], extra: str = "") -> None:
    from run import fmt_s, judged, median

    peers = [name for name in times if name != "parmap"]
    per_round = [
        min(times[p][i] for p in peers) / times["parmap"][i] for i in range(len(times["parmap"]))
    ]
    best = min(peers, key=lambda p: median(times[p]))
    ctx.raw[wl] = times
    ctx.row(
        wl,
        "wall time (warm pool)" + extra,
        f"{fmt_s(median(times['parmap']))} ({median(per_round):.2f}x the best peer, {best})",
        "≥ 1.0x the fastest peer",
        judged(median(per_round) >= 1.0),
        peers={p: fmt_s(median(times[p])) for p in peers},
    )


def bench_numpy_args(ctx: Any) -> None:
    """48 numpy arguments of 16 MB each, returning a float."""
    n, size = (48, 2_000_000) if ctx.sizes.rounds > 1 else (16, 2_000_000)
    expected = [float(size * i) for i in range(n)]

    def make() -> Args:
        return [(np.full(size, i, dtype=np.float64),) for i in range(n)]

    with contextlib.ExitStack() as stack:
        runs = _contenders(_tasks.array_sum, 1, stack)
        times = _timed_rounds(runs, ctx.sizes.rounds, make, lambda out: list(out) == expected)
        arrays = make()
        again = {
            name: _timed_rounds({name: runs[name]}, 1, lambda: arrays, lambda out: True)[name]
            for name in ("parmap", "joblib")
            if name in runs
        }
    _report(ctx, f"{n} numpy arguments of 16 MB -> float", times)
    from run import fmt_s

    ctx.notes.append(
        "numpy arguments, the same arrays mapped twice (joblib reuses its memmaps): "
        + ", ".join(f"{name} {fmt_s(t[0])}" for name, t in again.items())
    )


def bench_numpy_results(ctx: Any) -> None:
    """48 small arguments, each returning a 16 MB array."""
    n, size = (48, 2_000_000) if ctx.sizes.rounds > 1 else (16, 2_000_000)

    def check(out: list[Any]) -> bool:
        return len(out) == n and all(a.shape == (size,) and a[-1] == i for i, a in enumerate(out))

    with contextlib.ExitStack() as stack:
        runs = _contenders(_tasks.array_full, 1, stack)
        times = _timed_rounds(runs, ctx.sizes.rounds, lambda: [(size, i) for i in range(n)], check)
    _report(ctx, f"{n} small arguments -> numpy results of 16 MB", times)


def _shmem() -> float:
    """The machine's shared memory in use (memfd segments, /dev/shm files), in bytes."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("Shmem:"):
                return float(line.split()[1]) * 1024
    return 0.0


def _pss_without_shmem(pid: int) -> float:
    """Proportional set size of ``pid`` without its share of shared-memory pages."""
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in ("Pss", "Pss_Shmem"):
                fields[name] = float(rest.split()[0]) * 1024
    return fields.get("Pss", 0.0) - fields.get("Pss_Shmem", 0.0)


@contextlib.contextmanager
def _memory_peak() -> Iterator[dict[str, float]]:
    """Sample the memory this process and its children use.

    Their own memory counts proportionally (PSS, which splits a page among
    the processes that map it), shared memory (memfd segments, joblib's
    memmaps in /dev/shm) once for the whole machine, whoever maps it.
    """
    import psutil

    found = {"peak": 0.0, "base": 0.0}
    stop = threading.Event()

    def total() -> float:
        me = psutil.Process()
        used = _shmem()
        for proc in [me, *me.children(recursive=True)]:
            with contextlib.suppress(OSError, psutil.Error):
                used += _pss_without_shmem(proc.pid)
        return used

    def sample() -> None:
        while not stop.wait(0.05):
            found["peak"] = max(found["peak"], total())

    found["base"] = found["peak"] = total()
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield found
    finally:
        stop.set()
        thread.join()
        found["peak"] = max(found["peak"], total())


def bench_shared_array(ctx: Any) -> None:
    """One 512 MB array shared by 64 items: time, and memory of parent and workers."""
    from run import fmt_mb, judged, median

    mb, n = (512, 64) if ctx.sizes.rounds > 1 else (128, 64)
    count = mb * 2**20 // 8
    expected = [float(np.arange(i, count, n, dtype=np.float64).sum()) for i in range(n)]
    growth: dict[str, list[float]] = {}
    with contextlib.ExitStack() as stack:
        runs = _contenders(_tasks.array_stride_sum, 8, stack)
        times: dict[str, list[float]] = {name: [] for name in runs}
        for r in range(-1, ctx.sizes.rounds):
            for name in rotate(list(runs), r):
                big = np.arange(count, dtype=np.float64)  # fresh, as loaded from a file
                args = [(big, i, n) for i in range(n)]
                with _memory_peak() as mem:
                    t0 = time.perf_counter()
                    out = runs[name](args)
                    dt = time.perf_counter() - t0
                del args, big
                if out != expected:
                    raise AssertionError(f"{name} returned wrong results")
                if r >= 0:
                    times[name].append(dt)
                    growth.setdefault(name, []).append(mem["peak"] - mem["base"])
    wl = f"one {mb} MB array shared by {n} items"
    _report(ctx, wl, times)
    ratio = median(growth["parmap"]) / (count * 8)
    ctx.row(
        wl,
        "peak memory growth, parent + workers",
        f"{fmt_mb(median(growth['parmap']))} ({ratio:.2f}x the array)",
        "≤ 1.5x the array",
        judged(ratio <= 1.5),
        peers={p: fmt_mb(median(g)) for p, g in growth.items() if p != "parmap"},
    )


def bench_text(ctx: Any) -> None:
    """30,000 strings of 100 characters through str.upper."""
    lines = [
        f"{i:07d} " + "the quick brown fox jumps over the lazy dog " * 2 for i in range(30_000)
    ]
    lines = [line[:100] for line in lines]
    expected = [line.upper() for line in lines]
    chunk = max(1, len(lines) // (4 * WORKERS))
    with contextlib.ExitStack() as stack:
        runs = _contenders(str.upper, chunk, stack)
        times = _timed_rounds(
            runs,
            max(5, ctx.sizes.rounds),
            lambda: [(line,) for line in lines],
            lambda out: list(out) == expected,
        )
    _report(ctx, "30,000 strings of 100 characters through str.upper", times)


WORKLOADS: dict[str, Callable[[Any], None]] = {
    "numpy_args": bench_numpy_args,
    "numpy_results": bench_numpy_results,
    "shared_array": bench_shared_array,
    "text": bench_text,
}
