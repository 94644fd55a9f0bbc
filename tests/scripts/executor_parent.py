"""A parent process for the Executor's exit and Ctrl-C tests.

usage: executor_parent.py MODE START_METHOD MARKER_DIR

Two tasks write their worker's pid to ``MARKER_DIR/<index>.pid`` and sleep for
an hour. MODE ``with`` waits for them inside ``with Executor(...)`` (the test
sends SIGINT); ``result`` waits on ``future.result()`` with no ``with`` block
(SIGINT, then interpreter exit); ``exit`` returns from the script without
shutting the executor down once the tasks run (interpreter exit must stop
them). The script says on stdout how it ended, with ``time.monotonic()``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.jobs import async_marked_sleep, wait_for_path

from parmap import Executor

WORKERS = 2
HOUR = 3600.0


def run(mode: str, method: str, marker_dir: str) -> None:
    if mode == "with":
        with Executor(workers=WORKERS, start_method=method) as ex:  # type: ignore[arg-type]
            futures = [ex.submit(async_marked_sleep, marker_dir, i, HOUR) for i in range(2)]
            for future in futures:
                future.result()
    elif mode == "result":
        ex = Executor(max_workers=WORKERS, start_method=method)  # type: ignore[arg-type]
        futures = [ex.submit(async_marked_sleep, marker_dir, i, HOUR) for i in range(2)]
        futures[0].result()
    elif mode == "exit":
        ex = Executor(workers=WORKERS, start_method=method)  # type: ignore[arg-type]
        for i in range(2):
            ex.submit(async_marked_sleep, marker_dir, i, HOUR)
        for i in range(2):
            wait_for_path(str(Path(marker_dir, f"{i}.pid")))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


def main() -> None:
    mode, method, marker_dir = sys.argv[1:4]
    try:
        run(mode, method, marker_dir)
    except KeyboardInterrupt:
        print(f"KeyboardInterrupt {time.monotonic():.6f}", flush=True)
        sys.exit(0)
    print(f"returned {time.monotonic():.6f}", flush=True)


if __name__ == "__main__":
    main()
