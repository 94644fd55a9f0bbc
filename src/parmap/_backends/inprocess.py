"""What the backends that run items in this process share (thread, serial, executor).

Threads and executor callbacks report through a ``Mailbox``: a list of notes
behind a lock, plus a pipe that holds one byte while the list is not empty.
The drivers wait on the pipe exactly as they wait on a worker process's
socket, so sync and async maps need nothing special for them. ``deliver``
turns the notes into the scheduler's events, a worker's consecutive outcomes
as one ``Batch``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from typing import Any, cast

from .._codec import encode_error, load_function
from .._events import Batch, ChunkMessage, Event
from .._results import rebuild_error
from .base import InProcessIO, Waitable

# Tags of mailbox notes; each note is a tuple ``(tag, wid, ...)``.
READY, INIT_FAILED, OUTCOME, DONE, NEXT = range(5)

Note = tuple[Any, ...]
Post = Callable[[Note], None]


def local_error(exc: BaseException) -> BaseException:
    """The error to report for an item that raised ``exc`` in this process.

    An ordinary exception is kept as it is, with its real traceback. Anything
    else (``SystemExit``, ``KeyboardInterrupt`` raised by the task) becomes
    ``RemoteError``, as it does from a worker process, so that looking at the
    result cannot stop the program.
    """
    if isinstance(exc, Exception):
        return exc
    return rebuild_error(encode_error(exc))


class Mailbox:
    """Notes posted from any thread, taken by the thread driving the pool.

    ``fd`` is readable exactly while notes wait: the first note posted
    after a ``take`` writes one byte, ``take`` reads it back. After ``close``
    notes are dropped (the descriptor number may already belong to someone
    else, so nothing is written to it).
    """

    def __init__(self) -> None:
        self.fd, self._w = os.pipe()
        os.set_blocking(self.fd, False)
        os.set_blocking(self._w, False)
        self._lock = threading.Lock()
        self._notes: list[Note] = []
        self.closed = False

    def post(self, note: Note) -> None:
        """Queue ``event`` and wake the driver (any thread)."""
        with self._lock:
            if self.closed:
                return
            self._notes.append(note)
            if len(self._notes) == 1:
                with suppress(OSError):
                    os.write(self._w, b"x")

    def take(self) -> list[Note]:
        """Every note posted so far, in order."""
        with self._lock:
            notes, self._notes = self._notes, []
            if notes:
                with suppress(OSError):
                    os.read(self.fd, 64)
        return notes

    def waitables(self) -> list[Waitable]:
        """What the drivers watch: the read end while open."""
        return [] if self.closed else [self.fd]

    def shut(self, on_discard: Callable[[list[Waitable]], None]) -> None:
        """Tell the drivers to stop watching, then close."""
        if not self.closed:
            on_discard([self.fd])
            self.close()

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
            self._notes = []
            for fd in (self.fd, self._w):
                with suppress(OSError):
                    os.close(fd)


class MailIO(InProcessIO):
    """An in-process backend whose workers post notes to one ``Mailbox``:
    its descriptor is all the drivers watch."""

    def __init__(self) -> None:
        self._mailbox = Mailbox()
        self.on_discard: Callable[[list[Waitable]], None] = lambda waitables: None

    def waitables(self) -> list[Waitable]:
        return self._mailbox.waitables()

    def _shut_mailbox(self) -> None:
        self._mailbox.shut(self.on_discard)


def _missing_function(*args: Any) -> Any:
    raise RuntimeError("parmap: the function of this map never reached the worker")


class LocalFunctions:
    """Each map's function, for backends that call it in this process.

    ``resolve`` turns the scheduler's chunk message into ``(function, star,
    args)``: the function comes with a job's first chunk to each worker and is
    remembered for the rest.
    """

    def __init__(self, preload: Callable[..., Any] | None) -> None:
        self._preload: Callable[..., Any] | None = getattr(preload, "__parmap_inline__", preload)
        self._by_job: dict[int, Callable[..., Any]] = {}

    def resolve(self, message: ChunkMessage) -> tuple[Callable[..., Any], bool, list[Any]]:
        job_id, fn, star, args = message.job_id, message.fn, message.star, message.args
        if fn is None:
            found = self._by_job.get(job_id) or self._preload or _missing_function
            return found, star, args
        if isinstance(fn, bytes):  # pickled anyway (a caller that does not know us)
            fn = load_function(fn)
        function = cast("Callable[..., Any]", getattr(fn, "__parmap_inline__", fn))
        self._by_job[job_id] = function
        return function, star, args

    def forget(self, job_id: int) -> None:
        """Map ``job_id`` is over: drop its function, which may hold much (a
        partial binding a large array) in a pool that lives long."""
        self._by_job.pop(job_id, None)


class Lane:
    """One worker slot's state, shared between the driver and the thread running it.

    ``beacon`` is replaced as one tuple, so the driver never reads half of
    an update; ``abandoned`` tells the thread to stop after its current item.
    """

    __slots__ = ("abandoned", "beacon", "started", "wid")

    def __init__(self, wid: int) -> None:
        self.wid = wid
        self.started = 0
        self.beacon: tuple[int, float | None] = (0, None)
        self.abandoned = False

    def run(self, fn: Callable[..., Any], star: bool, chunk: list[Any], post: Post) -> None:
        """Run ``chunk`` item by item in the calling thread, posting each outcome."""
        monotonic = time.monotonic
        wid = self.wid
        for args in chunk:
            if self.abandoned:
                return
            self.started += 1
            t0 = monotonic()
            self.beacon = (self.started, t0)
            error: BaseException | None = None
            try:
                value = fn(*args) if star else fn(args)
            except BaseException as exc:
                value, error = None, local_error(exc)
            t1 = monotonic()
            self.beacon = (self.started, None)
            post((OUTCOME, wid, value, error, t1 - t0))


def deliver(
    notes: list[Note],
    report: Callable[[int, list[Any], dict[int, BaseException] | None, float], Batch | None],
    control: Callable[[Note], list[Event]],
) -> list[Event]:
    """The events of ``notes``: ``OUTCOME`` notes through ``report``, a worker's
    consecutive ones as one batch, every other note through ``control``,
    keeping each worker's order."""
    events: list[Event] = []
    pending: dict[int, list[Note]] = {}

    def flush(wid: int) -> None:
        items = pending.pop(wid, None)
        if not items:
            return
        values = [item[2] for item in items]
        errors = {pos: item[3] for pos, item in enumerate(items) if item[3] is not None}
        batch = report(wid, values, errors or None, sum(item[4] for item in items))
        if batch is not None:
            events.append(batch)

    for note in notes:
        if note[0] == OUTCOME:
            pending.setdefault(note[1], []).append(note)
        else:
            flush(note[1])
            events.extend(control(note))
    for wid in list(pending):
        flush(wid)
    return events
