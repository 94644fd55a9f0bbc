"""Maps whose items allocate real memory, run as a script.

``python -m tests.memory_cases CASE ARGS...`` runs one case and prints one
JSON line describing what came back; the tests check it. Each case runs in a
subprocess with a hard time limit, since a worker killed at the wrong moment
could otherwise hang the suite, and the cgroup case must move its whole
process into a cgroup of its own.

Items allocate and touch their memory page by page, so that it is resident,
not merely reserved.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from parmap import MapResult, Pool, WorkerMemoryError, apmap, imap, parallel, pmap

from .procs import running_children, wait_ended

MB = 1 << 20
LIMIT = "200MB"
#: Megabytes each item allocates: the 400s must fail, the others succeed.
SIZES = [10, 400, 20, 400, 5, 30, 400, 8]
PAGE = 4096
_kept: list[bytes] = []  # what the leaky task keeps


def touch(mb: int) -> tuple[int, int]:
    """Allocate ``mb`` megabytes and write every page; return (mb, pid)."""
    block = bytearray(mb * MB)
    for i in range(0, len(block), PAGE):
        block[i] = 1
    return mb, os.getpid()


@parallel(workers=2, max_memory_per_worker=LIMIT, on_error="collect")
def touch_decorated(mb: int) -> tuple[int, int]:
    """``touch`` under ``@parallel`` with the limit as a decorator default."""
    return touch(mb)


def leak(i: int) -> int:
    """Keep 20 MB more per item, as a leaky cache would; return the pid."""
    _kept.append(bytes([i % 256]) * (20 * MB))
    return os.getpid()


def touch_once(arg: tuple[int, str]) -> int:
    """The first attempt at an item allocates 400 MB; a retry only 1 MB."""
    index, marker_dir = arg
    marker = Path(marker_dir) / f"{index}.tried"
    big = index % 2 == 1 and not marker.exists()
    marker.touch()
    touch(400 if big else 1)
    return index


def kill_self(i: int) -> int:
    """Item 1 dies of a SIGKILL that parmap did not send."""
    if i == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return i


def describe(res: MapResult[Any]) -> dict[str, Any]:
    """What the tests check: values, and each error's type and fields."""
    errors = {
        str(i): {
            "type": type(e).__name__,
            "limit": getattr(e, "limit", None),
            "rss": getattr(e, "rss", None),
            "exitcode": getattr(e, "exitcode", None),
            "message": str(e),
        }
        for i, e in res.errors.items()
    }
    return {"values": list(res.values), "errors": errors}


def leftover() -> list[int]:
    """Child processes of ours still running (a map must leave none)."""
    return [p.pid for p in wait_ended(running_children(), 5.0)]


def big(method: str, api: str, timeout: str) -> dict[str, Any]:
    """The items of SIZES under LIMIT through ``api``; ``timeout`` "none" or seconds."""
    options: dict[str, Any] = {
        "workers": 2,
        "start_method": method,
        "max_memory_per_worker": LIMIT,
        "on_error": "collect",
    }
    if timeout != "none":
        options["timeout"] = float(timeout)
    if api == "pmap":
        res = pmap(touch, SIZES, **options)
    elif api == "apmap":
        res = asyncio.run(apmap(touch, SIZES, **options))
    elif api == "decorated":
        method_only: dict[str, Any] = {"start_method": method}
        if "timeout" in options:
            method_only["timeout"] = options["timeout"]
        res = touch_decorated.pmap(SIZES, **method_only)
    elif api == "imap":
        outcomes = sorted(imap(touch, SIZES, **options), key=lambda o: o.index)
        errors = {o.index: o.error for o in outcomes if o.error is not None}
        res = MapResult([o.value for o in outcomes], errors)
    else:
        with Pool(**options) as pool:
            pool.pmap(touch, SIZES[:3])  # the pool survives a kill and serves the next map
            res = pool.pmap(touch, SIZES)
    return describe(res)


def leaky(method: str, api: str = "pmap", timeout: str = "none") -> dict[str, Any]:
    """100 items that each keep 20 MB: none may fail; workers are recycled."""
    options: dict[str, Any] = {
        "workers": 2,
        "start_method": method,
        "max_memory_per_worker": LIMIT,
    }
    if timeout != "none":
        options["timeout"] = float(timeout)
    if api == "apmap":
        res = asyncio.run(apmap(leak, range(100), **options))
    else:
        res = pmap(leak, range(100), **options)
    return {"failed": len(res.errors), "pids": sorted(set(res.values)), "count": len(res)}


def retried(marker_dir: str) -> dict[str, Any]:
    """A memory kill is retried when retry_on names WorkerMemoryError."""
    res = pmap(
        touch_once,
        [(i, marker_dir) for i in range(4)],
        workers=2,
        max_memory_per_worker=LIMIT,
        retries=1,
        retry_on=WorkerMemoryError,
        on_error="collect",
    )
    return describe(res)


def not_retried(marker_dir: str) -> dict[str, Any]:
    """With the default retry_on, retries do not apply to a memory kill."""
    res = pmap(
        touch_once,
        [(i, marker_dir) for i in range(4)],
        workers=2,
        max_memory_per_worker=LIMIT,
        retries=3,
        on_error="collect",
    )
    return describe(res)


def sigkill() -> dict[str, Any]:
    """A worker that dies of a SIGKILL nobody in parmap sent."""
    return describe(pmap(kill_self, range(4), workers=1, on_error="collect"))


def oom(cgroup: str) -> dict[str, Any]:
    """Join ``cgroup`` (a small memory limit), then map items the kernel must kill."""
    Path(cgroup, "cgroup.procs").write_text(str(os.getpid()))
    return describe(pmap(touch, [5, 400, 5], workers=1, on_error="collect", timeout=60))


CASES: dict[str, Callable[..., dict[str, Any]]] = {
    "big": big,
    "leaky": leaky,
    "retried": retried,
    "not_retried": not_retried,
    "sigkill": sigkill,
    "oom": oom,
}


def main(argv: list[str]) -> int:
    """Run the case named by ``argv[0]`` and print its JSON line."""
    outcome = CASES[argv[0]](*argv[1:])
    outcome["leftover"] = leftover()
    print(json.dumps(outcome))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
