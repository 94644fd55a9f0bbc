"""A parent process for the signal tests: it maps items that never finish.

usage: signal_parent.py MODE START_METHOD MARKER_DIR [--term-exits] [--workers N]

MODE is ``pmap`` (module-level), ``imap`` (module-level, iterated),
``apmap`` (module-level, under ``asyncio.run``), ``pool`` (``Pool.pmap``) or
``decorated`` (a ``@parallel`` function defined here, in ``__main__``). Each
item writes its worker's pid to ``MARKER_DIR/<index>.pid`` and sleeps for an
hour, so the test knows when the map is running and which processes to look
for. ``--term-exits`` installs a
SIGTERM handler that raises ``SystemExit`` (as many services do).

The script catches ``KeyboardInterrupt`` and ``SystemExit`` only to say on
stdout how it ended, with ``time.monotonic()`` (the same clock as the test's),
and then exits; anything a worker prints shows up on stderr.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path
from typing import cast, get_args

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.jobs import async_marked_sleep

from parmap import Pool, apmap, imap, parallel, pmap
from parmap._options import StartMethod

WORKERS = int(sys.argv[sys.argv.index("--workers") + 1]) if "--workers" in sys.argv else 2
HOUR = 3600.0


@parallel(workers=WORKERS)
def decorated_marked_sleep(marker_dir: str, index: int, seconds: float) -> int:
    return async_marked_sleep(marker_dir, index, seconds)


def run(mode: str, method: StartMethod, marker_dir: str) -> None:
    args = ([marker_dir] * WORKERS, range(WORKERS), [HOUR] * WORKERS)
    if mode == "pmap":
        pmap(async_marked_sleep, *args, workers=WORKERS, start_method=method)
    elif mode == "imap":
        for _ in imap(async_marked_sleep, *args, workers=WORKERS, start_method=method):
            pass
    elif mode == "apmap":
        asyncio.run(apmap(async_marked_sleep, *args, workers=WORKERS, start_method=method))
    elif mode == "pool":
        with Pool(workers=WORKERS, start_method=method) as pool:
            pool.pmap(async_marked_sleep, *args)
    elif mode == "decorated":
        decorated_marked_sleep.pmap(*args, start_method=method, workers=WORKERS)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


def main() -> None:
    mode, method, marker_dir = sys.argv[1:4]
    assert method in get_args(StartMethod), method
    if "--term-exits" in sys.argv[4:]:
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    try:
        run(mode, cast(StartMethod, method), marker_dir)
    except KeyboardInterrupt:
        print(f"KeyboardInterrupt {time.monotonic():.6f}", flush=True)
        sys.exit(0)
    except SystemExit as exc:
        print(f"SystemExit {exc.code} {time.monotonic():.6f}", flush=True)
        raise
    print("finished", flush=True)


if __name__ == "__main__":
    main()
