"""How an event loop learns that a worker's socket or sentinel is ready.

Descriptors are watched for reading (results, exits) and, while the parent
has output queued for a worker, for writing. Two strategies with one
interface (``update``, ``discard``, ``close``):

* ``ReaderWatch`` registers each descriptor with ``loop.add_reader`` and
  ``loop.add_writer``. Every POSIX event loop supports them (asyncio's
  selector loop, uvloop), and they need no thread.
* ``ThreadWatch`` is the fallback for loops that cannot watch descriptors (the
  Windows proactor loop, some third-party loops). A thread only *waits*, on
  duplicates of the descriptors, and hands what became ready to the loop with
  ``call_soon_threadsafe``. Everything else still happens on the loop thread,
  so the scheduler is never touched from two threads. Waiting on duplicates
  means the loop may close a descriptor at any time without pulling it out
  from under the waiting thread.
"""

from __future__ import annotations

import asyncio
import os
import select
import threading
from collections.abc import Callable, Iterable
from contextlib import suppress

from ._backends.base import Waitable

Callback = Callable[[Waitable], None]
_READ = select.POLLIN | select.POLLPRI | select.POLLHUP | select.POLLERR


def _ready(waitable: Waitable, mask: int) -> bool:
    poller = select.poll()
    poller.register(fd_of(waitable), mask)
    return any(events & mask for _, events in poller.poll(0))


def fd_of(waitable: Waitable) -> int:
    """The descriptor number of a waitable."""
    return waitable if isinstance(waitable, int) else waitable.fileno()


def make_watch(
    loop: asyncio.AbstractEventLoop, on_read: Callback, on_write: Callback
) -> ReaderWatch | ThreadWatch:
    """The best way for ``loop`` to watch descriptors."""
    r, w = os.pipe()
    try:
        loop.add_reader(r, lambda: None)
        loop.remove_reader(r)
    except NotImplementedError:
        return ThreadWatch(loop, on_read, on_write)
    finally:
        os.close(r)
        os.close(w)
    return ReaderWatch(loop, on_read, on_write)


class _Watch:
    """What either watch is given: the loop, and whom to call for which readiness."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, on_read: Callback, on_write: Callback
    ) -> None:
        self._loop = loop
        self._on_read = on_read
        self._on_write = on_write


class ReaderWatch(_Watch):
    """Watch descriptors with ``loop.add_reader`` and ``loop.add_writer``."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, on_read: Callback, on_write: Callback
    ) -> None:
        super().__init__(loop, on_read, on_write)
        self._readers: dict[Waitable, int] = {}
        self._writers: dict[Waitable, int] = {}

    def update(self, readers: Iterable[Waitable], writers: Iterable[Waitable] = ()) -> None:
        """Watch exactly ``readers`` for reading and ``writers`` for writing from now on.

        Raises ``NotImplementedError`` when the loop cannot watch descriptors.
        """
        loop = self._loop
        for watched, wanted, add, remove, callback in (
            (self._readers, set(readers), loop.add_reader, loop.remove_reader, self._on_read),
            (self._writers, set(writers), loop.add_writer, loop.remove_writer, self._on_write),
        ):
            for waitable in [w for w in watched if w not in wanted]:
                remove(watched.pop(waitable))
            for waitable in wanted:
                if waitable not in watched:
                    fd = fd_of(waitable)
                    add(fd, callback, waitable)
                    watched[waitable] = fd

    def discard(self, waitables: Iterable[Waitable]) -> None:
        """Stop watching ``waitables`` (before they are closed)."""
        for waitable in waitables:
            fd = self._readers.pop(waitable, None)
            if fd is not None:
                self._loop.remove_reader(fd)
            fd = self._writers.pop(waitable, None)
            if fd is not None:
                self._loop.remove_writer(fd)

    def close(self) -> None:
        """Stop watching everything."""
        self.discard([*self._readers, *self._writers])


class ThreadWatch(_Watch):
    """Watch descriptors from a thread that only waits, for loops without ``add_reader``."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, on_read: Callback, on_write: Callback
    ) -> None:
        super().__init__(loop, on_read, on_write)
        self._lock = threading.Lock()
        self._dups: dict[Waitable, int] = {}  # owned by the loop thread until retired
        self._readers: set[Waitable] = set()  # of ``_dups``, those watched for reading
        self._writers: set[Waitable] = set()  # of ``_dups``, those watched for writing
        self._retired: list[int] = []  # duplicates the waiting thread must close
        self._stopping = False
        self._resume = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name="parmap-loop-watch", daemon=True)
        self._thread.start()

    def update(self, readers: Iterable[Waitable], writers: Iterable[Waitable] = ()) -> None:
        """Watch exactly ``readers`` for reading and ``writers`` for writing from now on."""
        wanted_writers = set(writers)
        current = set(readers) | wanted_writers
        with self._lock:
            for waitable in [w for w in self._dups if w not in current]:
                self._retired.append(self._dups.pop(waitable))
            for waitable in current:
                if waitable not in self._dups:
                    self._dups[waitable] = os.dup(fd_of(waitable))
            self._readers = set(readers)
            self._writers = wanted_writers
        self._poke()

    def discard(self, waitables: Iterable[Waitable]) -> None:
        """Stop watching ``waitables`` (before they are closed)."""
        with self._lock:
            for waitable in waitables:
                dup = self._dups.pop(waitable, None)
                self._readers.discard(waitable)
                self._writers.discard(waitable)
                if dup is not None:
                    self._retired.append(dup)
        self._poke()

    def close(self) -> None:
        """Stop the waiting thread; it closes every duplicate on its way out."""
        with self._lock:
            self._stopping = True
        self._poke()
        self._resume.set()

    def _poke(self) -> None:
        with suppress(OSError):
            os.write(self._wake_w, b"x")

    def _run(self) -> None:
        try:
            while True:
                with self._lock:
                    for fd in self._retired:
                        os.close(fd)
                    self._retired.clear()
                    if self._stopping:
                        return
                    by_dup = {dup: waitable for waitable, dup in self._dups.items()}
                    poller = select.poll()
                    for waitable, dup in self._dups.items():
                        mask = _READ if waitable in self._readers else 0
                        if waitable in self._writers:
                            mask |= select.POLLOUT
                        poller.register(dup, mask)
                poller.register(self._wake_r, select.POLLIN)
                hits: list[tuple[Waitable, bool]] = []
                for fd, mask in poller.poll():
                    if fd == self._wake_r:
                        with suppress(OSError):
                            os.read(self._wake_r, 512)
                        continue
                    if mask & _READ:
                        hits.append((by_dup[fd], False))
                    if mask & select.POLLOUT:
                        hits.append((by_dup[fd], True))
                if not hits:
                    continue
                # Wait until the loop has handled them: the descriptors stay
                # ready until then, and we must not report them twice.
                self._resume.clear()
                try:
                    self._loop.call_soon_threadsafe(self._deliver, hits)
                except RuntimeError:  # the loop is closed
                    return
                self._resume.wait()
        finally:
            with self._lock:
                for fd in [*self._dups.values(), *self._retired]:
                    with suppress(OSError):
                        os.close(fd)
                self._dups.clear()
                self._retired.clear()
            for fd in (self._wake_r, self._wake_w):
                with suppress(OSError):
                    os.close(fd)

    def _deliver(self, hits: list[tuple[Waitable, bool]]) -> None:
        try:
            for waitable, for_writing in hits:
                # Still watched, and still ready? (An earlier callback in this
                # batch may have read or closed it; reading again would block.)
                if waitable not in self._dups:
                    continue
                if for_writing:
                    if waitable in self._writers and _ready(waitable, select.POLLOUT):
                        self._on_write(waitable)
                elif waitable in self._readers and _ready(waitable, _READ):
                    self._on_read(waitable)
        finally:
            self._resume.set()
