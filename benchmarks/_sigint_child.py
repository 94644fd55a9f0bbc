"""Child process of the Ctrl-C workload: map long sleeps until interrupted.

    python _sigint_child.py IMPL

Each item leaves a marker file in $PARMAP_BENCH_DIR when it starts, so the
harness sends SIGINT only once the work really runs.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
from concurrent.futures import ProcessPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _tasks

ITEMS = range(4)


def main() -> None:
    # Python keeps SIGINT ignored when started with it ignored (a benchmark
    # run in the background, `nohup`); a terminal's Ctrl-C reaches a process
    # with the default handler, which is what this measures.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    impl = sys.argv[1]
    if impl == "parmap":
        import parmap

        parmap.pmap(_tasks.sleep_marked, ITEMS, workers=2)
    elif impl == "ProcessPoolExecutor":
        with ProcessPoolExecutor(max_workers=2) as ex:
            list(ex.map(_tasks.sleep_marked, ITEMS))
    elif impl == "mp.Pool":
        with mp.Pool(2) as pool:
            pool.map(_tasks.sleep_marked, ITEMS)
    elif impl == "pebble":
        import pebble

        with pebble.ProcessPool(max_workers=2) as pool:
            list(pool.map(_tasks.sleep_marked, ITEMS).result())
    else:
        raise SystemExit(f"unknown impl {impl!r}")


if __name__ == "__main__":
    main()
