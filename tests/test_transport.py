"""The transport: no size or number of inputs and results makes a map hang
(promise 8), large buffers cross through shared memory, nothing leaks.

Cases that could hang run in a subprocess with a hard time limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import mmap
import os
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parmap import Pool, _shm, pmap
from parmap._wire import HEADER, Inbox, Outbox

from . import transport_cases as cases
from .checks import eventually, run_limited
from .procs import pid_running

ROOT = Path(__file__).resolve().parent.parent
REPRESENTATIVE = {
    "fork": cases.APIS,
    "spawn": ("pmap", "imap_ordered", "apmap"),
    "forkserver": ("pmap", "aimap"),
}


def run_cases(*args: str, limit: float) -> subprocess.CompletedProcess[str]:
    """Run ``tests.transport_cases`` in a subprocess; a hang fails the test."""
    proc = run_limited([sys.executable, "-m", "tests.transport_cases", *args], limit=limit)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def _matrix() -> list[Any]:
    params = []
    for method in ("fork", "spawn", "forkserver"):
        for api in cases.APIS:
            marks = [] if api in REPRESENTATIVE[method] else [pytest.mark.matrix]
            params.append(pytest.param(method, api, marks=marks, id=f"{method}-{api}"))
    return params


@pytest.mark.parametrize(("start_method", "api"), _matrix())
def test_every_size_through_every_map(start_method: str, api: str) -> None:
    out = run_cases(start_method, api, limit=150).stdout
    assert out.count("\nok ") + out.startswith("ok ") == len(cases.CASES), out


def test_thirty_thousand_lines_through_str_upper() -> None:
    # The report that opened issue 11: this map never returned.
    script = (
        "from parmap import pmap\n"
        "lines = [f'{i:06d} ' + 'x' * 93 for i in range(30_000)]\n"
        "res = pmap(str.upper, lines, workers=2)\n"
        "assert res.unwrap() == [line.upper() for line in lines]\n"
        "print('done')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert proc.stdout.strip() == "done", proc.stderr


def test_numpy_results_are_backed_by_shared_memory() -> None:
    res = pmap(cases.make_array, [2_000_000, 10, 300_000], workers=2)
    big, small, mid = res
    assert np.array_equal(big, np.arange(2_000_000, dtype=np.float64))
    assert np.array_equal(small, np.arange(10, dtype=np.float64))
    assert np.array_equal(mid, np.arange(300_000, dtype=np.float64))

    def backing(arr: np.ndarray) -> object:
        base: Any = arr
        while getattr(base, "base", None) is not None:
            base = base.base
        return base.obj if isinstance(base, memoryview) else base

    assert isinstance(backing(big), mmap.mmap)  # 16 MB: through a segment
    assert not isinstance(backing(small), mmap.mmap)  # 80 B: in the pickle stream
    big[0] = 42.0  # a private mapping: writable
    assert big[0] == 42.0


def test_threshold_none_sends_everything_through_the_socket() -> None:
    arrays = [np.full(400_000, i, dtype=np.float64) for i in range(6)]
    res = pmap(cases.slow_sum, arrays, [0.0] * 6, workers=2, shared_memory_threshold=None)
    assert res.unwrap() == [400_000.0 * i for i in range(6)]
    seen = pmap(cases.mapped_segments, [None] * 4, workers=2, shared_memory_threshold=None)
    assert seen.unwrap() == [[]] * 4


def test_bytearray_and_memoryview_cross_out_of_band() -> None:
    data = bytearray(os.urandom(3 << 20))
    view = memoryview(bytes(data))
    res = pmap(cases.transform, [bytes(data), data], workers=2)
    assert res[0] == bytes(data)[::-1]
    assert type(res[1]) is bytearray and res[1] == data * 2  # a bytearray result
    with Pool(workers=2) as pool:
        got = pool.pmap(len, [data, view, data]).unwrap()
        steps = range(0, len(data), 1 << 18)
        bound = pool.pmap(partial(cases.byte_at, data), steps).unwrap()
    assert got == [len(data)] * 3
    assert bound == [data[i] for i in steps]


@pytest.mark.parametrize("threshold", [1 << 20, None])
def test_bytearray_arguments_and_results_travel_in_segments(
    threshold: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Watch, in the parent, the segments made for arguments and the
    # segments received with results; both still do their real work.
    made: list[int] = []
    received: list[int] = []
    real_create, real_map = os.memfd_create, _shm.map_segments

    def create(name: str, flags: int = os.MFD_CLOEXEC) -> int:
        made.append(1)
        return real_create(name, flags)

    def map_segments(fds: Any) -> Any:
        received.extend(os.fstat(fd).st_size for fd in fds)
        return real_map(fds)

    monkeypatch.setattr(os, "memfd_create", create)
    monkeypatch.setattr(_shm, "map_segments", map_segments)
    items = [bytearray(os.urandom(3 << 20)) for _ in range(3)]
    res = pmap(cases.transform, items, workers=1, chunksize=1, shared_memory_threshold=threshold)
    assert all(
        type(v) is bytearray and v == i * 2 for v, i in zip(res.unwrap(), items, strict=True)
    )
    if threshold is None:
        assert made == [] and received == []
    else:
        assert len(made) == 3  # one segment per chunk's arguments
        assert sorted(received) == [6 << 20] * 3  # one per result


def test_a_big_bound_array_is_put_in_shared_memory_once() -> None:
    big = np.arange(4_000_000, dtype=np.float64)  # 32 MB
    with Pool(workers=2) as pool:
        res = pool.pmap(partial(cases.first_value_and_segments, big), range(200), chunksize=1)
        values = [v for v, _ in res.unwrap()]
        assert values == [float(i) for i in range(200)]
        inodes = {tuple(segs) for _, segs in res.unwrap()}
        # Every item saw the same one segment, whichever worker ran it.
        assert len({i for segs in inodes for i in segs}) == 1, inodes


def test_the_same_array_in_every_item_is_put_in_shared_memory_once() -> None:
    big = np.arange(4_000_000, dtype=np.float64)
    res = pmap(cases.first_value_and_segments, [big] * 100, range(100), workers=2, chunksize=1)
    assert [v for v, _ in res.unwrap()] == [float(i) for i in range(100)]
    seen = {i for _, segs in res.unwrap() for i in segs}
    assert len(seen) == 1, seen


def test_a_worker_keeps_a_broadcast_mapping_until_a_task_writes_to_it() -> None:
    big = np.arange(1 << 20, dtype=np.float64)  # 8 MB: kept mapped between chunks
    writes = [False, False, True, False, False, False]
    res = pmap(cases.present_then_sum, [big] * 6, writes, workers=1, chunksize=1).unwrap()
    # Item 3 does not see what item 2 wrote into its input.
    assert [total for _, total in res] == [float(big.sum())] * 6
    # Each chunk got the last one's mapping, its pages in memory already,
    # except the first and the one after the write, which got new ones.
    pages = big.nbytes // mmap.PAGESIZE
    assert [present for present, _ in res] == [0, pages, pages, 0, pages, pages]


@pytest.mark.parametrize("bound", [False, True], ids=["argument", "bound"])
def test_an_idle_worker_keeps_no_mapping_after_the_map(bound: bool) -> None:
    big = np.arange(1 << 20, dtype=np.float64)
    with Pool(workers=1) as pool:
        if bound:  # the function's own segment, cached with the function
            res = pool.pmap(partial(cases.pid_and_segments, big), range(4), chunksize=1).unwrap()
        else:
            res = pool.pmap(cases.pid_and_segments, [big] * 4, chunksize=1).unwrap()
        (pid,) = {pid for pid, _ in res}
        assert len({i for _, segs in res for i in segs}) == 1
        # The worker waits for work now: it must hold neither a mapping of
        # the segment nor (before Python 3.13, through one) its descriptor.
        eventually(
            lambda: not _segments_held_by(pid),
            within=10,
            message=lambda: f"worker {pid} still holds {_segments_held_by(pid)}",
            every=0.02,
        )


def test_an_array_changed_between_chunks_is_sent_again() -> None:
    buf = np.zeros(2_000_000, dtype=np.float64)

    def items() -> Any:
        for i in range(6):
            buf[:] = i  # the same object, new contents: must not be sent stale
            yield buf.copy() if i % 2 else buf

    res = pmap(cases.slow_sum, items(), [0.0] * 6, workers=2, chunksize=1, buffer=1)
    assert res.unwrap() == [2_000_000.0 * i for i in range(6)]


def test_nothing_is_left_open_after_timeouts_crashes_and_cancels() -> None:
    run_cases("leaks", "fork", limit=120)


@pytest.mark.parametrize("start_method", ["spawn"])
def test_nothing_is_left_open_under_spawn(start_method: str) -> None:
    run_cases("leaks", start_method, limit=150)


def _segments_held_by(pid: int) -> list[str]:
    held = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            if "memfd:parmap" in (target := os.readlink(f"/proc/{pid}/fd/{fd}")):
                held.append(target)
    with open(f"/proc/{pid}/maps") as maps:
        held += [line.strip() for line in maps if "memfd:parmap" in line]
    return held


def _processes_holding_segments(session: int) -> list[int]:
    """Processes of ``session`` that hold or map a parmap segment.

    (Only that session's: other test runs on the machine have segments too.)
    """
    holders = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if os.getsid(int(name)) == session and _segments_held_by(int(name)):
                holders.append(int(name))
    return sorted(holders)


@pytest.mark.allow_leftover
def test_a_killed_parent_leaves_no_segment_behind(tmp_path: Path) -> None:
    marker = tmp_path / "pid"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.transport_cases", "hold", str(marker)],
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        eventually(marker.exists, within=60, message="the holder never started", every=0.05)
        time.sleep(0.5)  # the workers have their arrays mapped by now
        workers = [p for p in _processes_holding_segments(proc.pid) if p != proc.pid]
        assert workers, "no worker holds a segment"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        eventually(
            lambda: not any(pid_running(p) for p in workers),
            within=10,
            message=lambda: f"workers still alive: {[p for p in workers if pid_running(p)]}",
            every=0.05,
        )
        assert _processes_holding_segments(proc.pid) == []
        assert not [name for name in os.listdir("/dev/shm") if "parmap" in name]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_an_async_map_of_large_items_keeps_the_loop_free() -> None:
    items = cases.make_items(100_000, 300, "text")

    async def main() -> tuple[list[Any], int]:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.005)
                ticks += 1

        ticker = asyncio.get_running_loop().create_task(tick())
        try:
            from parmap import apmap

            res = await apmap(cases.transform, items, workers=2)
        finally:
            ticker.cancel()
        return res.unwrap(), ticks

    values, ticks = asyncio.run(main())
    assert values == [s.upper() for s in items]
    assert ticks > 0


def test_hypothesis_sizes_and_speeds() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tests.transport_hypothesis"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_shared_memory_threshold_is_validated() -> None:
    with pytest.raises(ValueError, match="shared_memory_threshold must be >= 0, got -1"):
        pmap(len, ["a"], shared_memory_threshold=-1)
    with pytest.raises(TypeError, match="shared_memory_threshold must be an int or None"):
        pmap(len, ["a"], shared_memory_threshold=1.5)  # type: ignore[arg-type]


# --------------------------------------------------------------- the codec
@settings(max_examples=60, deadline=None)
@given(
    bodies=st.lists(st.binary(min_size=0, max_size=200_000), min_size=1, max_size=6),
    cuts=st.lists(st.integers(min_value=1, max_value=300_000), min_size=1, max_size=30),
    with_fds=st.lists(st.integers(min_value=0, max_value=3), min_size=6, max_size=6),
)
def test_codec_round_trip(bodies: list[bytes], cuts: list[int], with_fds: list[int]) -> None:
    """Frames written in arbitrary pieces arrive whole, in order, with their descriptors."""
    outbox = Outbox()
    fake_fd = iter(range(1000, 2000))
    sent = []
    for body, nfds in zip(bodies, with_fds, strict=False):
        fds = [next(fake_fd) for _ in range(nfds)]
        outbox.put(body, fds)
        sent.append((body, fds))
    assert outbox.pending == sum(HEADER.size + len(b) for b in bodies)
    stream = bytearray()
    fd_stream: list[int] = []
    inbox = Inbox()
    got: list[Any] = []
    pending: list[tuple[bytes, list[int]]] = []
    i = 0
    while outbox:
        buffers, fds = outbox.next_write()
        data = b"".join(bytes(b) for b in buffers)
        n = min(len(data), cuts[i % len(cuts)])
        i += 1
        if fds:
            assert n > 0
        outbox.wrote(n)
        pending.append((data[:n], fds))
    for data, fds in pending:
        stream += data
        fd_stream += fds
        pos = 0
        first = True
        while pos < len(data):
            view = inbox.buffer()
            take = min(view.nbytes, len(data) - pos)
            view[:take] = data[pos : pos + take]
            got += inbox.received(take, fds if first else ())
            first = False
            pos += take
    assert [(bytes(b), f) for b, f in got] == sent
    assert outbox.pending == 0
