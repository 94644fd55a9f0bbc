"""Real data of every size through every kind of map, run as a script.

``python -m tests.transport_cases START_METHOD API`` maps lines of text, JSON
records, ``bytes`` and numpy arrays from about 100 B to 10 MB per item (each
case moving tens of megabytes both ways) and checks every result. The tests
run it in a subprocess with a hard time limit, so that a map that hangs fails
its test instead of stalling the suite. It prints one line per case, so the
output of a killed run names the case that hung.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import mmap
import os
import struct
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from parmap import Pool, aimap, apmap, imap, pmap

#: (label, bytes per item, items, kind)
CASES = [
    ("100B text", 100, 200_000, "text"),
    ("1KB json", 1_000, 20_000, "json"),
    ("10KB bytes", 10_000, 3_000, "bytes"),
    ("100KB text", 100_000, 300, "text"),
    ("1MB numpy", 1 << 20, 30, "numpy"),
    ("10MB bytes", 10 << 20, 4, "bytes"),
    ("10MB numpy", 10 << 20, 4, "numpy"),
]
APIS = ("pmap", "imap_ordered", "imap_unordered", "apmap", "aimap", "timed", "pool")


def make_items(size: int, count: int, kind: str) -> list[Any]:
    """``count`` distinct items of about ``size`` bytes each."""
    if kind == "text":
        words = "lorem ipsum dolor sit amet "
        return [f"{i:08d} " + words[i % 7 :] * (size // 20) for i in range(count)]
    if kind == "json":
        tags = size // 12
        return [{"id": i, "tags": [f"t{j}" for j in range(tags)]} for i in range(count)]
    if kind == "bytes":
        return [i.to_bytes(4, "little") * (size // 4) for i in range(count)]
    return [np.full(size // 8, i, dtype=np.float64) for i in range(count)]


def transform(item: Any) -> Any:
    """A result as large as the item."""
    if isinstance(item, str):
        return item.upper()
    if isinstance(item, dict):
        return json.dumps(item)
    if isinstance(item, bytes):
        return item[::-1]
    return item * 2


def same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and bool(np.array_equal(a, b))
    return bool(a == b)


def _collect_async(gen: Any) -> list[Any]:
    async def main() -> list[Any]:
        return [out async for out in gen]

    return asyncio.run(main())


def run_api(api: str, items: list[Any], start_method: str) -> list[Any]:
    """Map ``transform`` over ``items`` with ``api``; return the values in input order."""
    opts: dict[str, Any] = {"workers": 2, "start_method": start_method}
    if api == "pmap":
        return pmap(transform, items, **opts).unwrap()
    if api == "timed":
        return pmap(transform, items, timeout=120, **opts).unwrap()
    if api == "imap_ordered":
        return [out.unwrap() for out in imap(transform, items, ordered=True, **opts)]
    if api == "imap_unordered":
        outs = sorted(imap(transform, items, **opts), key=lambda out: out.index)
        return [out.unwrap() for out in outs]
    if api == "apmap":
        return asyncio.run(apmap(transform, items, **opts)).unwrap()
    if api == "aimap":
        outs = sorted(_collect_async(aimap(transform, items, **opts)), key=lambda out: out.index)
        return [out.unwrap() for out in outs]
    if api == "pool":
        with Pool(**opts) as pool:
            pool.pmap(transform, items[:10])  # the same pool serves the real map after
            return pool.pmap(transform, items).unwrap()
    raise ValueError(api)


def check_case(label: str, api: str, items: list[Any], start_method: str) -> None:
    t0 = time.monotonic()
    got = run_api(api, items, start_method)
    assert len(got) == len(items), (label, api, len(got))
    for i, (item, value) in enumerate(zip(items, got, strict=True)):
        assert same(transform(item), value), (label, api, i)
    print(f"ok {start_method} {api} {label} {time.monotonic() - t0:.2f}s", flush=True)


def main(argv: list[str]) -> None:
    start_method, api = argv[0], argv[1]
    for label, size, count, kind in CASES:
        check_case(label, api, make_items(size, count, kind), start_method)


# ---------------------------------------------------------- other scenarios
def mapped_segments(_: Any = None) -> list[int]:
    """Inodes of the parmap segments mapped in this process."""
    inodes = set()
    with open("/proc/self/maps") as maps:
        for line in maps:
            if "memfd:parmap" in line:
                inodes.add(int(line.split()[4]))
    return sorted(inodes)


def pages_present(arr: np.ndarray) -> int:
    """How many pages of ``arr`` this process has in memory already (pagemap)."""
    start = arr.__array_interface__["data"][0]
    first, last = start // mmap.PAGESIZE, (start + arr.nbytes - 1) // mmap.PAGESIZE
    with open("/proc/self/pagemap", "rb") as f:
        f.seek(first * 8)
        data = f.read((last - first + 1) * 8)
    return sum(entry >> 63 for (entry,) in struct.iter_unpack("<Q", data))


def present_then_sum(arr: np.ndarray, write: bool) -> tuple[int, float]:
    """The pages of ``arr`` present on arrival and its sum; then maybe write one element."""
    present = pages_present(arr)
    total = float(arr.sum())
    if write:
        arr[len(arr) // 2 + 1] = -1.0
    return present, total


def pid_and_segments(arr: np.ndarray, _: Any = None) -> tuple[int, list[int]]:
    return os.getpid(), mapped_segments()


def first_value_and_segments(big: np.ndarray, i: int) -> tuple[float, list[int]]:
    return float(big[i]), mapped_segments()


def open_fds() -> list[str]:
    """What this process's descriptors point to."""
    names = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the descriptor listdir itself used
            names.append(os.readlink(f"/proc/self/fd/{fd}"))
    return names


def fd_count() -> int:
    return len(open_fds())


def slow_sum(arr: np.ndarray, seconds: float) -> float:
    time.sleep(seconds)
    return float(arr.sum())


def die_on(arr: np.ndarray, bad: float) -> np.ndarray:
    if arr[0] == bad:
        os._exit(7)
    return arr + 1


def make_array(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.float64)


def leak_scenarios(start_method: str) -> None:
    """Maps that time out, crash, are cancelled or fail: nothing may stay open."""
    arrays = [np.full(300_000, i, dtype=np.float64) for i in range(12)]  # 2.4 MB each
    common: dict[str, Any] = {"workers": 2, "start_method": start_method}
    # multiprocessing's own descriptors (its heap, the forkserver) come first.
    pmap(slow_sum, arrays[:2], [0.0, 0.0], **common)
    before = fd_count()
    timed = pmap(slow_sum, arrays, [0.0] * 11 + [30.0], timeout=1, on_error="collect", **common)
    assert sorted(timed.errors) == [11], timed.errors
    died = pmap(die_on, arrays, [3.0] * 12, on_error="collect", **common)
    assert sorted(died.errors) == [3], died.errors
    # Result arrays hold their mappings (and, before Python 3.13, a descriptor).
    assert fd_count() > before
    del timed, died
    with Pool(**common) as pool:
        it = pool.imap(slow_sum, arrays, [0.5] * 12)
        next(it)
        it.close()  # cancelled: its workers are killed
        results = pool.pmap(make_array, [200_000] * 10)
        assert all(isinstance(r, np.ndarray) for r in results)
        del results
    for _ in range(3):
        with contextlib.suppress(Exception):
            pmap(die_on, arrays, [0.0] * 12, **common)
    after = fd_count()
    left = open_fds()
    assert after <= before, (before, after, left)
    assert not [name for name in left if "parmap" in name], left
    print("ok leaks", before, after, flush=True)


def hold_segments_forever(marker: str) -> None:
    """A parent that sends big arrays to hanging workers (killed by the test)."""
    arrays = [np.full(500_000, i, dtype=np.float64) for i in range(8)]
    for it in [imap(slow_sum, arrays, [3600.0] * 8, workers=2)]:
        with open(marker, "w") as f:
            f.write(str(os.getpid()))
        for _ in it:
            pass


SCENARIOS: dict[str, Callable[[list[str]], None]] = {
    "leaks": lambda args: leak_scenarios(args[0]),
    "hold": lambda args: hold_segments_forever(args[0]),
}


if __name__ == "__main__":
    if sys.argv[1] in SCENARIOS:
        SCENARIOS[sys.argv[1]](sys.argv[2:])
    else:
        main(sys.argv[1:])


def byte_at(data: bytearray, i: int) -> int:
    return data[i]
