"""Threads of this process, one per worker slot (``backend="thread"``).

Items run in threads of the calling process, so nothing is pickled: the
function, its arguments and its results may be anything, and a closure sees
the caller's own state. Choose it for I/O-bound work or work that cannot be
pickled; pure-Python CPU work gains nothing from it (the GIL).

A thread cannot be stopped. A timed-out item is still reported at its
deadline as ``TaskTimeoutError``, but its thread is only *abandoned*: it runs
the item to its end, the result is discarded, and the thread then exits; a
new thread takes the slot. The same happens to items in flight when
``on_error="raise"`` stops a map or the pool is closed.

Threads report through a ``Mailbox``: a list of events behind a lock, plus a
pipe that holds one byte while the list is not empty. The drivers wait on the
pipe exactly as they wait on a worker process's pipe, so sync and async maps
need nothing special for threads.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from typing import Any, cast

from .._options import PoolConfig
from .._results import rebuild_error
from .._scheduler import BeaconReading, ChunkMessage, Scheduler
from .._worker import encode_error, load_function
from .base import Capabilities, InProcessIO, Waitable

# Tags of mailbox events; each event is a tuple ``(tag, wid, ...)``.
READY, INIT_FAILED, OUTCOME, DONE, NEXT = range(5)

Event = tuple[Any, ...]
Post = Callable[[Event], None]


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
    """Events posted from any thread, taken by the thread driving the pool.

    ``fd`` is readable exactly while events wait: the first event posted
    after a ``take`` writes one byte, ``take`` reads it back. After ``close``
    events are dropped (the descriptor number may already belong to someone
    else, so nothing is written to it).
    """

    def __init__(self) -> None:
        self.fd, self._w = os.pipe()
        os.set_blocking(self.fd, False)
        os.set_blocking(self._w, False)
        self._lock = threading.Lock()
        self._events: list[Event] = []
        self.closed = False

    def post(self, event: Event) -> None:
        """Queue ``event`` and wake the driver (any thread)."""
        with self._lock:
            if self.closed:
                return
            self._events.append(event)
            if len(self._events) == 1:
                with suppress(OSError):
                    os.write(self._w, b"x")

    def take(self) -> list[Event]:
        """Every event posted so far, in order."""
        with self._lock:
            events, self._events = self._events, []
            if events:
                with suppress(OSError):
                    os.read(self.fd, 64)
        return events

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
            self._events = []
            for fd in (self.fd, self._w):
                with suppress(OSError):
                    os.close(fd)


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

    def forget_finished(self, sched: Scheduler) -> None:
        forget_finished(self._by_job, sched)


def forget_finished(cache: dict[int, Any], sched: Scheduler) -> None:
    """Drop from ``cache`` (by job id) what maps the scheduler no longer runs.

    A running map's function must never be dropped (with more maps at once
    than any fixed bound, the oldest would lose it), and the scheduler's job
    list is the only sure sign that a map is over. A map has at most one
    entry, so a cache larger than the job list holds one that is over: it
    goes at once, since a function may hold much (a partial binding a large
    array) and a pool may live long.
    """
    if len(cache) > len(sched.jobs):
        live = {job.id for job in sched.jobs}
        for job_id in [j for j in cache if j not in live]:
            del cache[job_id]


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
    events: list[Event],
    report: Callable[[int, list[Any], dict[int, BaseException] | None, float], None],
    control: Callable[[Event], None],
) -> None:
    """Hand ``OUTCOME`` events to ``report``, a worker's consecutive ones as one
    batch, and every other event to ``control``, keeping each worker's order."""
    pending: dict[int, list[Event]] = {}

    def flush(wid: int) -> None:
        items = pending.pop(wid, None)
        if not items:
            return
        values = [item[2] for item in items]
        errors = {pos: item[3] for pos, item in enumerate(items) if item[3] is not None}
        report(wid, values, errors or None, sum(item[4] for item in items))

    for event in events:
        if event[0] == OUTCOME:
            pending.setdefault(event[1], []).append(event)
        else:
            flush(event[1])
            control(event)
    for wid in list(pending):
        flush(wid)


class _ThreadLane(Lane):
    __slots__ = ("inbox",)

    def __init__(self, wid: int) -> None:
        super().__init__(wid)
        self.inbox: queue.SimpleQueue[tuple[Callable[..., Any], bool, list[Any]] | None] = (
            queue.SimpleQueue()
        )


class ThreadBackend(InProcessIO):
    """Worker slots served by threads of this process (see the module docs)."""

    def __init__(self, config: PoolConfig, *, preload: Callable[..., Any] | None = None) -> None:
        self._config = config
        self.capabilities = Capabilities.in_this_process(config.resolved_workers, preload)
        self._functions = LocalFunctions(preload)
        self._mailbox = Mailbox()
        self._lanes: dict[int, _ThreadLane] = {}
        self.on_discard: Callable[[list[Waitable]], None] = lambda waitables: None

    def encode(self, message: ChunkMessage) -> object:
        """Nothing to pickle: the chunk goes to the thread as it is."""
        return self._functions.resolve(message)

    def spawn(self, wid: int) -> None:
        """Start a thread for slot ``wid``."""
        lane = _ThreadLane(wid)
        thread = threading.Thread(
            target=self._serve, args=(lane,), name=f"parmap-thread-{wid}", daemon=True
        )
        self._lanes[wid] = lane
        thread.start()

    def send(self, wid: int, payload: Any) -> None:
        lane = self._lanes.get(wid)
        if lane is not None:
            lane.inbox.put(payload)

    def kill(self, wid: int) -> None:
        """Abandon slot ``wid``: its thread stops after the item it is running."""
        lane = self._lanes.pop(wid, None)
        if lane is not None:
            lane.abandoned = True
            lane.inbox.put(None)

    def retire(self, wid: int) -> None:
        """Let idle slot ``wid``'s thread exit."""
        lane = self._lanes.pop(wid, None)
        if lane is not None:
            lane.inbox.put(None)

    def close(self) -> None:
        for wid in list(self._lanes):
            self.kill(wid)
        self._mailbox.shut(self.on_discard)

    def waitables(self) -> list[Waitable]:
        return self._mailbox.waitables()

    def beacon(self, wid: int) -> BeaconReading:
        lane = self._lanes.get(wid)
        return None if lane is None else lane.beacon

    def handle(self, waitable: Waitable, sched: Scheduler, now: float) -> None:
        """Feed what the threads posted to the scheduler."""

        def report(wid: int, values: list[Any], errors: Any, busy: float) -> None:
            sched.on_batch(wid, values, errors, busy, now)

        def control(event: Event) -> None:
            if event[0] == READY:
                sched.on_ready(event[1])
            elif event[0] == INIT_FAILED:
                sched.on_init_failed(event[1], event[2])

        deliver(self._mailbox.take(), report, control)
        self._functions.forget_finished(sched)

    def _serve(self, lane: _ThreadLane) -> None:
        """A slot's thread: run the initializer, then every chunk sent to it."""
        post = self._mailbox.post
        config = self._config
        if config.initializer is not None:
            try:
                config.initializer(*config.initargs)
            except BaseException as exc:
                post((INIT_FAILED, lane.wid, local_error(exc)))
                return
        post((READY, lane.wid))
        while True:
            message = lane.inbox.get()
            if message is None or lane.abandoned:
                return
            fn, star, chunk = message
            lane.run(fn, star, chunk, post)
