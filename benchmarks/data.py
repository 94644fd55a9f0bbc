"""Benchmarks of real data: large numpy arguments and results, a shared array, text.

The workloads of issue 11, registered in ``run.py``:

* ``numpy_args``: 48 arguments of 16 MB each, each returning a float;
* ``numpy_results``: 48 small arguments, each returning a 16 MB array;
* ``shared_array``: one 512 MB array shared by 64 items (also the peak
  memory of the parent and its workers together, with shared memory counted
  once);
* ``text``: 30,000 strings of 100 characters through ``str.upper``;
* ``large_result``: one item returning a 1 GB array, against one memcpy of
  1 GB in the parent (issue 19).

Every contender runs in each round, in rotated order, on a warm pool, and
gets freshly made inputs outside the timed region, each in the form it takes
(rows for ``starmap`` and joblib, columns for ``pmap`` and ``Executor.map``),
and starts on a collected heap: unzipping 30,000 rows allocates 30,000
iterators, whose young-generation collections (and the full one they may
set off, over every peer's leftovers) would otherwise be timed as the
contender's own work. joblib keeps the memmaps
it made for an array object across calls, so mapping the very same arrays
again would time its cache rather than its transport (``repeat`` rows show
that case). The target is a ratio to the fastest peer taken within each round.
"""

from __future__ import annotations

import contextlib
import gc
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


class Inputs:
    """One round's inputs, as rows and as columns (both made before the timer starts)."""

    def __init__(self, rows: Args) -> None:
        self.rows = rows
        self.columns = list(zip(*rows, strict=True))


Runner = Callable[[Inputs], list[Any]]


def _contenders(
    work: Callable[..., Any], chunksize: int, stack: contextlib.ExitStack
) -> dict[str, Runner]:
    """Warm pools of parmap and each installed peer, each mapping ``work`` over its argument."""
    from run import POOL, PPE, joblib, mpire, shutdown_joblib

    runs: dict[str, Runner] = {}
    pool = stack.enter_context(parmap.Pool(workers=WORKERS))
    runs["parmap"] = lambda args: pool.pmap(work, *args.columns).unwrap()
    mpool = stack.enter_context(mp.Pool(WORKERS))
    runs[POOL] = lambda args: mpool.starmap(work, args.rows, chunksize=chunksize)
    ex = stack.enter_context(ProcessPoolExecutor(max_workers=WORKERS))
    runs[PPE] = lambda args: list(ex.map(work, *args.columns, chunksize=chunksize))
    if joblib is not None:
        par = stack.enter_context(joblib.Parallel(n_jobs=WORKERS))  # memmapping on (1M)
        stack.callback(shutdown_joblib)
        runs["joblib"] = lambda args: list(par(joblib.delayed(work)(*a) for a in args.rows))
    if mpire is not None:
        wp = stack.enter_context(mpire.WorkerPool(n_jobs=WORKERS, keep_alive=True))
        runs["mpire"] = lambda args: wp.map(
            work, args.rows, chunk_size=chunksize, concatenate_numpy_output=False
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
            args = Inputs(make())
            gc.collect()
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


def _array_rounds(ctx: Any) -> int:
    """Rounds of the 16 MB array workloads: five in a full run. One round
    moves by a factor of two and more here (parmap 0.53-1.36 s in one run),
    and the median of three flipped the judged ratio from run to run."""
    return ctx.sizes.rounds if ctx.sizes.rounds == 1 else max(5, ctx.sizes.rounds)


def bench_numpy_args(ctx: Any) -> None:
    """48 numpy arguments of 16 MB each, returning a float."""
    n, size = (48, 2_000_000) if ctx.sizes.rounds > 1 else (16, 2_000_000)
    expected = [float(size * i) for i in range(n)]

    def make() -> Args:
        return [(np.full(size, i, dtype=np.float64),) for i in range(n)]

    with contextlib.ExitStack() as stack:
        runs = _contenders(_tasks.array_sum, 1, stack)
        times = _timed_rounds(runs, _array_rounds(ctx), make, lambda out: list(out) == expected)
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
        times = _timed_rounds(
            runs, _array_rounds(ctx), lambda: [(size, i) for i in range(n)], check
        )
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
                args = Inputs([(big, i, n) for i in range(n)])
                gc.collect()
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


#: Indices (as fractions of the length) of the elements a large result is checked at.
_SAMPLES = (0.0, 0.137, 0.5, 0.731, 1.0)


def _check_large(out: Any, n: int, value: int) -> bool:
    if out.shape != (n,) or out.dtype != np.float64:
        return False
    return all(out[min(n - 1, int(f * n))] == value for f in _SAMPLES)


def bench_large_result(ctx: Any) -> None:
    """One item returning a 1 GB float64 array, against one memcpy of 1 GB in the parent."""
    from run import POOL, PPE, fmt_s, judged, median

    mb = 1024 if ctx.sizes.rounds > 1 else 256
    rounds = max(3, ctx.sizes.rounds) if ctx.sizes.rounds > 1 else 1
    n = mb * 2**20 // 8
    with contextlib.ExitStack() as stack:
        pool = stack.enter_context(parmap.Pool(workers=WORKERS))
        mpool = stack.enter_context(mp.Pool(WORKERS))
        ex = stack.enter_context(ProcessPoolExecutor(max_workers=WORKERS))
        # Warm every pool (and the shared-memory path) on 16 MB results, two at
        # once: ProcessPoolExecutor forks its workers on demand, and each must
        # exist before the parent's arrays are made.
        small = [2**21, 2**21]
        warm = {
            "parmap": pool.pmap(_tasks.array_full, small, [7, 7]).unwrap(),
            POOL: mpool.starmap(_tasks.array_full, [(m, 7) for m in small], chunksize=1),
            PPE: list(ex.map(_tasks.array_full, small, [7, 7])),
        }
        for name, outs in warm.items():
            if not all(_check_large(out, 2**21, 7) for out in outs):
                raise AssertionError(f"{name} returned a wrong array")
        del warm
        # Made after the pools forked: pages shared with a forked child would
        # make every write of the memcpy a copy-on-write fault (10x slower).
        src = np.full(n, 1.0)
        dst = np.empty_like(src)
        np.copyto(dst, src)  # touched: the copy alone is timed, not first-touch faults
        # A worker's first array of this size is slow (the kernel finds it fresh
        # memory, seconds at 1 GB here): parmap's workers make one each first.
        # The peers' pools are not warmed at full size (5-7 s a call at 1 GB);
        # their first round may include that cost, the median leaves it out.
        first_copy = src.copy()  # and the parent's fresh copy once
        del first_copy
        for out in pool.pmap(_tasks.array_full, [n, n], [7, 7]).unwrap():
            if not _check_large(out, n, 7):
                raise AssertionError("parmap returned a wrong array")
            del out
        runs: dict[str, Callable[[int], Any]] = {
            "parmap": lambda v: pool.pmap(_tasks.array_full, [n], [v]).unwrap()[0],
            POOL: lambda v: mpool.apply(_tasks.array_full, (n, v)),
            PPE: lambda v: ex.submit(_tasks.array_full, n, v).result(),
            "memcpy": lambda v: np.copyto(dst, src),
            "fresh": lambda v: src.copy(),
            "split": lambda v: pool.pmap(_tasks.array_full_split, [n], [v]).unwrap()[0],
        }
        times: dict[str, list[float]] = {name: [] for name in runs}
        splits: list[tuple[float, float]] = []
        reads: list[tuple[float, float]] = []  # sum of parmap's result, of the local src
        for r in range(rounds):
            value = r + 2
            for name in rotate(list(runs), r):
                t0 = time.perf_counter()
                out = runs[name](value)
                dt = time.perf_counter() - t0
                if name == "split":
                    splits.append(out)
                elif name == "memcpy":
                    if not _check_large(dst, n, 1):
                        raise AssertionError("memcpy copied wrong data")
                elif name == "fresh":
                    if not _check_large(out, n, 1):
                        raise AssertionError("the fresh copy holds wrong data")
                elif not _check_large(out, n, value):
                    raise AssertionError(f"{name} returned a wrong array")
                elif name == "parmap":
                    t0 = time.perf_counter()
                    total = float(out.sum())
                    t1 = time.perf_counter()
                    local = float(src.sum())
                    reads.append((t1 - t0, time.perf_counter() - t1))
                    if total != value * n or local != n:
                        raise AssertionError("parmap's result does not sum up")
                del out
                times[name].append(dt)
    ctx.raw["large_result"] = {"times": times, "splits": splits, "reads": reads}
    per_round = [p / m for p, m in zip(times["parmap"], times["memcpy"], strict=True)]
    size = "1 GB" if mb == 1024 else f"{mb} MB"
    wl = f"one item returning a {size} float64 array"
    ref = f"memcpy of {size}: {fmt_s(median(times['memcpy']))}"
    ctx.row(
        wl,
        "wall time (warm pool) / one memcpy in the parent",
        f"{fmt_s(median(times['parmap']))} ({median(per_round):.2f}x memcpy)",
        "≤ 2.0x one memcpy",
        judged(median(per_round) <= 2.0),
        reference=ref,
        peers={
            p: f"{fmt_s(median(times[p]))} ({median(times[p]) / median(times['memcpy']):.1f}x)"
            for p in (PPE, POOL)
        },
    )
    fresh = [p / f for p, f in zip(times["parmap"], times["fresh"], strict=True)]
    ctx.row(
        wl,
        "wall time / memcpy into fresh memory (src.copy(), page faults included)",
        f"{median(fresh):.2f}x",
        "-",
        "info",
        reference=f"src.copy() of {size}: {fmt_s(median(times['fresh']))}",
    )
    make = median([s[0] for s in splits])
    write = median([s[1] for s in splits])
    ctx.row(
        wl,
        "split: np.full in the worker / memfd ftruncate + pwrite / the rest",
        f"{fmt_s(make)} / {fmt_s(write)} / {fmt_s(median(times['parmap']) - make - write)}",
        "-",
        "info",
        reference=f"whole map: {fmt_s(median(times['parmap']))}",
    )
    ctx.row(
        wl,
        "the parent reads all of parmap's result afterwards (out.sum(), untimed above)",
        fmt_s(median([r[0] for r in reads])),
        "-",
        "info",
        reference=f"the same sum of a local array: {fmt_s(median([r[1] for r in reads]))}",
    )
    ctx.notes.append(
        f"large result: {rounds} round(s), contenders rotated; the memcpy is np.copyto into a "
        "destination written once before (so it times the copy, not the first-touch page "
        "faults; src.copy() is shown with them); every array is checked at 5 sampled elements, "
        "outside the timed region; the split is measured by a task of its own in the same round."
    )


WORKLOADS: dict[str, Callable[[Any], None]] = {
    "numpy_args": bench_numpy_args,
    "numpy_results": bench_numpy_results,
    "shared_array": bench_shared_array,
    "text": bench_text,
    "large_result": bench_large_result,
}
