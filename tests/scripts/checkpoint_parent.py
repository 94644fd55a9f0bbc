"""A parent process for the checkpoint tests: it maps records and may die mid-map.

usage: checkpoint_parent.py CHECKPOINT RECORDS_FILE MODE [FAIL_AT]

Reads JSON records (one per line) lazily from RECORDS_FILE and maps
``checkpoint_jobs.summarize_slowly`` over them on 2 workers with
``checkpoint=CHECKPOINT``. MODE is ``pmap``, ``imap``, ``apmap`` or
``executor`` (``parmap.Executor.map`` with a ``buffersize``, so the input is
read lazily there too). With
FAIL_AT, the input iterator raises ``OSError`` when asked for record FAIL_AT,
after printing ``raising <time.monotonic()>``. The script prints how it ended
(``done N``, ``KeyboardInterrupt`` or ``OSError``); the test kills it with
SIGKILL or SIGINT mid-map.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.checkpoint_jobs import summarize_slowly

from parmap import Executor, apmap, imap, pmap


def records(path: str, fail_at: int | None) -> Iterator[dict[str, Any]]:
    with open(path) as f:
        for index, line in enumerate(f):
            if index == fail_at:
                print(f"raising {time.monotonic():.6f}", flush=True)
                raise OSError(f"the input broke at record {index}")
            yield json.loads(line)


def main() -> None:
    checkpoint, path, mode = sys.argv[1:4]
    fail_at = int(sys.argv[4]) if len(sys.argv) > 4 else None
    source = records(path, fail_at)
    options: dict[str, Any] = {"workers": 2, "checkpoint": checkpoint}
    try:
        if mode == "pmap":
            n = len(pmap(summarize_slowly, source, **options))
        elif mode == "imap":
            n = sum(1 for _ in imap(summarize_slowly, source, ordered=True, **options))
        elif mode == "apmap":
            n = len(asyncio.run(apmap(summarize_slowly, source, **options)))
        elif mode == "executor":
            with Executor(workers=2) as ex:
                results = ex.map(summarize_slowly, source, buffersize=16, checkpoint=checkpoint)
                n = sum(1 for _ in results)
        else:
            raise SystemExit(f"unknown mode {mode!r}")
    except KeyboardInterrupt:
        print("KeyboardInterrupt", flush=True)
        sys.exit(3)
    except OSError as exc:
        print(f"OSError {exc}", flush=True)
        sys.exit(4)
    print(f"done {n}", flush=True)


if __name__ == "__main__":
    main()
