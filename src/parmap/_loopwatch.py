"""How an event loop learns that a worker's pipe or sentinel is ready.

Two strategies with one interface (``update``, ``discard``, ``close``):

* ``ReaderWatch`` registers each descriptor with ``loop.add_reader``. Every
  POSIX event loop supports it (asyncio's selector loop, uvloop), and it needs
  no thread.
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
import threading
from collections.abc import Callable, Iterable
from contextlib import suppress
from multiprocessing.connection import wait as mp_wait

from ._backends.base import Waitable

Callback = Callable[[Waitable], None]


def _fd(waitable: Waitable) -> int:
    return waitable if isinstance(waitable, int) else waitable.fileno()


def make_watch(loop: asyncio.AbstractEventLoop, callback: Callback) -> ReaderWatch | ThreadWatch:
    """The best way for ``loop`` to watch descriptors."""
    r, w = os.pipe()
    try:
        loop.add_reader(r, lambda: None)
        loop.remove_reader(r)
    except NotImplementedError:
        return ThreadWatch(loop, callback)
    finally:
        os.close(r)
        os.close(w)
    return ReaderWatch(loop, callback)


class ReaderWatch:
    """Watch descriptors with ``loop.add_reader``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callback) -> None:
        self._loop = loop
        self._callback = callback
        self._fds: dict[Waitable, int] = {}

    def update(self, waitables: Iterable[Waitable]) -> None:
        """Watch exactly ``waitables`` from now on.

        Raises ``NotImplementedError`` when the loop cannot watch descriptors.
        """
        current = set(waitables)
        self.discard([w for w in self._fds if w not in current])
        for waitable in current:
            if waitable not in self._fds:
                fd = _fd(waitable)
                self._loop.add_reader(fd, self._callback, waitable)
                self._fds[waitable] = fd

    def discard(self, waitables: Iterable[Waitable]) -> None:
        """Stop watching ``waitables`` (before they are closed)."""
        for waitable in waitables:
            fd = self._fds.pop(waitable, None)
            if fd is not None:
                self._loop.remove_reader(fd)

    def close(self) -> None:
        """Stop watching everything."""
        self.discard(list(self._fds))


class ThreadWatch:
    """Watch descriptors from a thread that only waits, for loops without ``add_reader``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callback) -> None:
        self._loop = loop
        self._callback = callback
        self._lock = threading.Lock()
        self._dups: dict[Waitable, int] = {}  # owned by the loop thread until retired
        self._retired: list[int] = []  # duplicates the waiting thread must close
        self._stopping = False
        self._resume = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name="parmap-loop-watch", daemon=True)
        self._thread.start()

    def update(self, waitables: Iterable[Waitable]) -> None:
        """Watch exactly ``waitables`` from now on."""
        current = set(waitables)
        with self._lock:
            for waitable in [w for w in self._dups if w not in current]:
                self._retired.append(self._dups.pop(waitable))
            for waitable in current:
                if waitable not in self._dups:
                    self._dups[waitable] = os.dup(_fd(waitable))
        self._poke()

    def discard(self, waitables: Iterable[Waitable]) -> None:
        """Stop watching ``waitables`` (before they are closed)."""
        with self._lock:
            for waitable in waitables:
                dup = self._dups.pop(waitable, None)
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
                ready = mp_wait([*by_dup, self._wake_r])
                if self._wake_r in ready:
                    with suppress(OSError):
                        os.read(self._wake_r, 512)
                hits = [by_dup[r] for r in ready if r in by_dup]
                if not hits:
                    continue
                # Wait until the loop has handled them: the descriptors stay
                # readable until then, and we must not report them twice.
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

    def _deliver(self, hits: list[Waitable]) -> None:
        try:
            for waitable in hits:
                # Still watched, and still ready? (An earlier callback in this
                # batch may have read or closed it; reading again would block.)
                if waitable in self._dups and mp_wait([waitable], 0):
                    self._callback(waitable)
        finally:
            self._resume.set()
