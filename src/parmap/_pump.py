"""The blocking side of a pool: whose turn it is to wait, and the wait itself.

Threads may share a pool: one thread at a time holds the *turn* and waits
(``pump``) with ``poll`` on the backend's descriptors (for reading), on the
sockets it has output for (for writing), and on a self-pipe, the nearest
deadline as timeout. A thread that wants the turn writes a byte to the
self-pipe so that the waiting one returns and steps aside.
"""

from __future__ import annotations

import math
import os
import select
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING

from ._loopwatch import fd_of

if TYPE_CHECKING:
    from ._backends.base import Waitable
    from ._engine import Engine

#: The longest single wait (poll takes milliseconds in a C int): a deadline
#: further away than this is simply waited for in several steps.
MAX_WAIT_MS = 24 * 3600 * 1000
READ = select.POLLIN | select.POLLPRI | select.POLLHUP | select.POLLERR


class Pump:
    """Turn-taking and waiting for the blocking maps of one engine."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._turn = threading.Lock()
        self._owner: int | None = None  # thread ident of the holder
        self._waiting = 0
        self._waiting_lock = threading.Lock()
        # Made on first use, so a map that is never iterated holds no descriptors.
        self._wake: tuple[int, int] | None = None

    def _wake_fds(self) -> tuple[int, int]:
        with self._waiting_lock:
            if self._wake is None:
                r, w = os.pipe()
                os.set_blocking(r, False)
                os.set_blocking(w, False)
                self._wake = (r, w)
            return self._wake

    def wake(self) -> None:
        """Make a ``pump`` waiting in another thread return soon (it has new work)."""
        with suppress(OSError):
            os.write(self._wake_fds()[1], b"x")

    @contextmanager
    def turn(self) -> Iterator[None]:
        """Hold the right to pump this pool from the current thread."""
        if not self._turn.acquire(blocking=False):
            with self._waiting_lock:
                self._waiting += 1
            self.wake()
            try:
                self._turn.acquire()
            finally:
                with self._waiting_lock:
                    self._waiting -= 1
        self._owner = threading.get_ident()
        try:
            yield
        finally:
            self._owner = None
            self._turn.release()
            if self._waiting:
                # Python locks are not fair: step aside until a waiting thread
                # took the turn. Taken straight back, the turn would go into a
                # wait with no end (its wake-up was read already) while the
                # other thread, slow to run on a loaded machine, waits for it.
                while self._waiting and not self._turn.locked():
                    time.sleep(0.0005)

    @contextmanager
    def turn_for_close(self) -> Iterator[None]:
        """The turn, unless this thread holds it already (close from inside a
        map, or at exit from the thread that was mapping); a holder that
        never lets go (a thread stuck in user code) is not waited for long."""
        if self._owner == threading.get_ident():
            yield
            return
        with self._waiting_lock:
            self._waiting += 1  # the pumping thread steps aside (see ``turn``)
        try:
            self.wake()
            got = self._turn.acquire(timeout=5.0)
        finally:
            with self._waiting_lock:
                self._waiting -= 1
        if got:
            self._owner = threading.get_ident()
        try:
            yield
        finally:
            if got:
                self._owner = None
                self._turn.release()

    def pump(self) -> None:
        """Wait for the next event or deadline and process it."""
        engine = self._engine
        backend = engine.backend
        deadline = engine.next_deadline()
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        readers = backend.waitables()
        if not readers and timeout is None:
            timeout = 0.05  # nothing to watch (all workers being replaced)
        watched = self._watched(readers, backend.writables())
        poller = select.poll()
        for fd, (reader, writer) in watched.items():
            poller.register(
                fd, (READ if reader is not None else 0) | (select.POLLOUT if writer else 0)
            )
        wake_r = self._wake_fds()[0]
        poller.register(wake_r, select.POLLIN)
        wait_ms = None if timeout is None else min(math.ceil(timeout * 1000), MAX_WAIT_MS)
        events = poller.poll(wait_ms)
        now = time.monotonic()
        engine.discarded.clear()
        writable: list[Waitable] = []
        for fd, mask in events:
            if fd == wake_r:
                self._drain_wakeups(wake_r)
                continue
            reader, writer = watched[fd]
            if writer is not None and mask & select.POLLOUT:
                writable.append(writer)
            if reader is not None and mask & READ and reader not in engine.discarded:
                engine.readable(reader, now)
        for writer in writable:
            if writer not in engine.discarded:
                engine.writable(writer, now)
        if deadline is not None and now >= deadline:
            engine.tick(now)
        engine.execute()

    @staticmethod
    def _watched(
        readers: list[Waitable], writers: list[Waitable]
    ) -> dict[int, tuple[Waitable | None, Waitable | None]]:
        # One entry per descriptor: a socket may be watched both ways.
        watched: dict[int, tuple[Waitable | None, Waitable | None]] = {}
        for waitable in readers:
            watched[fd_of(waitable)] = (waitable, None)
        for waitable in writers:
            fd = fd_of(waitable)
            watched[fd] = (watched.get(fd, (None, None))[0], waitable)
        return watched

    @staticmethod
    def _drain_wakeups(fd: int) -> None:
        with suppress(OSError):
            while os.read(fd, 512):
                pass

    def close(self) -> None:
        """Close the self-pipe (the engine is closed)."""
        if self._wake is not None:
            for fd in self._wake:
                with suppress(OSError):
                    os.close(fd)
