"""Both ways of watching descriptors from an event loop, on real sockets:
readers and writers added, changed and discarded."""

from __future__ import annotations

import asyncio
import os
import socket

from parmap._backends.base import Waitable
from parmap._loopwatch import ReaderWatch, ThreadWatch


async def _exercise(kind: type[ReaderWatch] | type[ThreadWatch]) -> list[tuple[str, int]]:
    loop = asyncio.get_running_loop()
    seen: list[tuple[str, int]] = []
    sa, b = socket.socketpair()
    sc, sd = socket.socketpair()
    a, c, d = sa.fileno(), sc.fileno(), sd.fileno()
    readable = asyncio.Event()
    writable = asyncio.Event()

    def on_read(w: Waitable) -> None:
        assert isinstance(w, int)
        seen.append(("read", w))
        os.read(w, 100)
        readable.set()

    def on_write(w: Waitable) -> None:
        assert isinstance(w, int)
        seen.append(("write", w))
        writable.set()
        watch.update([a], [])  # written once: stop watching it for writing

    watch = kind(loop, on_read, on_write)
    try:
        watch.update([a, c], [d])
        await asyncio.wait_for(writable.wait(), 10)
        b.send(b"x")
        await asyncio.wait_for(readable.wait(), 10)
        watch.update([a], [c])
        await asyncio.sleep(0)
        watch.discard([a, c])
        watch.discard([a])  # twice: nothing left to stop
        readable.clear()
        b.send(b"y")
        await asyncio.sleep(0.05)
        assert not readable.is_set()  # no longer watched
    finally:
        watch.close()
        for s in (sa, b, sc, sd):
            s.close()
    return seen


def test_reader_watch() -> None:
    seen = asyncio.run(_exercise(ReaderWatch))
    assert seen[0][0] == "write"
    assert ("read", seen[-1][1]) in seen
    assert [k for k, _ in seen].count("read") == 1


def test_thread_watch() -> None:
    seen = asyncio.run(_exercise(ThreadWatch))
    assert seen[0][0] == "write"
    assert [k for k, _ in seen].count("read") == 1
