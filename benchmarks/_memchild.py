"""Child process of the memory workload: consume a lazy ``imap`` over generated items.

    python _memchild.py IMPL ITEMS CAP_SECONDS

Prints one JSON object: items consumed, seconds, the RSS before the map, the
highest RSS sampled from the consumer loop and the kernel's high-water mark
(VmHWM, reset just before the map where the kernel allows it).  Running in a
fresh process keeps the other workloads' memory out of the numbers.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _tasks

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def reset_high_water_mark() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def high_water_mark() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def generated(n: int) -> Iterator[int]:
    yield from range(n)


def main() -> int:
    impl, n, cap = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    pool = None
    if impl in ("parmap", "parmap-ordered"):
        import parmap
    elif impl == "mp.Pool":
        pool = mp.Pool(2)
    else:
        raise SystemExit(f"unknown impl {impl!r}")

    base = rss()
    hwm_reset = reset_high_water_mark()
    peak = base
    count = bad = 0
    complete = True
    t0 = time.monotonic()
    outcomes: Iterator[Any]
    if pool is not None:
        outcomes = pool.imap_unordered(_tasks.square, generated(n), chunksize=1000)
    else:
        ordered = impl == "parmap-ordered"
        outcomes = parmap.imap(_tasks.square, generated(n), workers=2, ordered=ordered)
    for out in outcomes:
        count += 1
        if pool is None and not out.ok:
            bad += 1
        if not count & 4095:
            peak = max(peak, rss())
            if time.monotonic() - t0 > cap:
                complete = False
                break
    close = getattr(outcomes, "close", None)  # parmap's stream stops its workers
    if close is not None:
        close()
    seconds = time.monotonic() - t0
    peak = max(peak, rss())
    hwm = high_water_mark() if hwm_reset else None
    if pool is not None:
        pool.terminate()
        pool.join()
    print(
        json.dumps(
            {
                "impl": impl,
                "items": count,
                "failed": bad,
                "complete": complete,
                "seconds": seconds,
                "base_rss": base,
                "peak_sampled": peak,
                "high_water_mark": hwm,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
