"""A pool's machinery: its scheduler, its backend, and what passes between them.

The engine is where the I/O-free scheduler meets the real world, and the only
part that talks to the scheduler: it hands it the backend's events
(``_events``), carries out its commands on the backend, and takes the drivers'
input to it. How a step of the event loop is waited for lives beside it:
``_pump`` for blocking maps (``poll`` on the backend's descriptors from the
calling thread, threads taking turns) and ``_attach`` for async maps (the same
descriptors on an asyncio loop). Either way the parent never blocks writing
to a worker: it writes what a socket accepts and keeps reading results
meanwhile. A pool serves either blocking maps or one event loop at a time.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from ._attach import Attachment
from ._backends.base import Backend, Waitable
from ._events import (
    Drained,
    Encoded,
    Kill,
    Measured,
    Retire,
    Send,
    Spawn,
    SpawnFailed,
    Started,
    Tick,
    encode_chunk,
)
from ._memory import Gauge
from ._options import MapConfig, PoolConfig
from ._pump import Pump
from ._scheduler import Job, Scheduler
from ._sigmask import sigint_held

_live_engines: weakref.WeakSet[Engine] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    # At exit every worker must go, also those of an engine whose close was
    # interrupted: ``close`` finishes what an earlier call left undone.
    for engine in list(_live_engines):
        engine.close()


def _ignore_discard(waitables: list[Waitable]) -> None:
    pass


class PoolInUseError(RuntimeError):
    """A pool was asked to serve two masters (an event loop and threads)."""


class Engine:
    """The scheduler and backend of one pool, and the drivers' common ground."""

    def __init__(self, config: PoolConfig, *, preload: Callable[..., Any] | None = None) -> None:
        from ._backends import make_backend

        self.config = config
        self.pid = os.getpid()
        self.backend: Backend = make_backend(config, preload=preload)
        caps = self.backend.capabilities
        # The backend says whether workers really have it (only under fork).
        self.preload = caps.preload
        self.sched = Scheduler(
            caps.workers,
            max_tasks_per_worker=config.max_tasks_per_worker,
            item_beacon=caps.item_beacon,
            can_kill=caps.can_kill,
            prefetch=caps.prefetch,
            backlogged=self.backend.backlogged,
            memory_limit=config.memory_limit,
        )
        # Pools with max_memory_per_worker: the parent reads its workers'
        # memory when the scheduler asks (see ``_check_memory``).
        self._gauge = (
            None if config.memory_limit is None else Gauge(forked=caps.start_method == "fork")
        )
        self.backend.on_discard = self._on_discard
        #: Waitables discarded while one wait's ready list is being handled:
        #: their numbers may already belong to a new worker.
        self.discarded: set[Waitable] = set()
        self.closed = False
        self._close_done = False  # every worker stopped (``closed`` is set first)
        #: Workers to start on a later turn of the event loop served (see
        #: ``execute``), with the chunks sent to them meanwhile.
        self._unspawned: dict[int, list[Send]] = {}
        # Who drives the pool: blocking maps (counted) or one event loop.
        self._mode = threading.Lock()
        self._sync_maps = 0
        self.sync = Pump(self)
        self.aio = Attachment(self)
        _live_engines.add(self)

    # -------------------------------------------------------------- commands
    def execute(self) -> None:
        """Carry out what the scheduler asked for.

        Serving an event loop, the engine starts at most one worker per turn
        of it: a fork takes milliseconds, and starting a whole pool in one
        callback stalled the loop for their sum. The others start on later
        turns (``Attachment.spawn_later``), or at once when the loop has let
        go of the pool.
        """
        sched, backend = self.sched, self.backend
        if self._gauge is not None:
            self._check_memory()
        if self.closed:
            self._unspawned.clear()
        while self._unspawned and self.aio.may_fork():
            wid = next(iter(self._unspawned))  # the longest put off
            sends = self._unspawned.pop(wid)
            self._start(wid)
            for send in sends:
                self._send(send)
        while commands := sched.take_commands():
            for cmd in commands:
                if isinstance(cmd, Send):
                    if cmd.wid in self._unspawned:
                        self._unspawned[cmd.wid].append(cmd)
                    else:
                        self._send(cmd)
                elif isinstance(cmd, Spawn):
                    self._start(cmd.wid)
                elif isinstance(cmd, Kill | Retire) and cmd.wid in self._unspawned:
                    del self._unspawned[cmd.wid]  # never started: nothing to stop
                elif isinstance(cmd, Kill):
                    backend.kill(cmd.wid)
                elif isinstance(cmd, Retire):
                    backend.retire(cmd.wid)
        if self._unspawned:
            self.aio.spawn_later()
        self.aio.after_execute()

    def _send(self, cmd: Send) -> None:
        # Pickling happens here, not in the scheduler; how it went (the
        # chunk's weight, or which inputs do not pickle) is an event, which
        # may queue the next Send for ``execute``'s loop.
        payload, report = encode_chunk(self.backend.encode, cmd)
        if isinstance(report, Encoded):
            self.backend.send(cmd.wid, payload)
        self.sched.handle(report)

    def _start(self, wid: int) -> None:
        """Start worker ``wid`` now, or on a later turn of the loop served."""
        if not self.aio.may_fork():
            self._unspawned[wid] = []
            return
        self.aio.forked()
        sched = self.sched
        if self._gauge is not None:
            self._gauge.spawned(wid)
        try:
            self.backend.spawn(wid)
        except Exception as exc:
            sched.handle(SpawnFailed(wid, exc))
        else:
            sched.handle(Started(wid, time.monotonic()))

    def _check_memory(self) -> None:
        # Called on every step of either driver, after the event that may
        # have made a reading due (a deadline, a finished item).
        gauge, sched, backend = self._gauge, self.sched, self.backend
        assert gauge is not None
        now = time.monotonic()
        due = sched.memory_due(now)
        if due:
            rss = {wid: gauge.read(wid, backend.pid(wid)) for wid in due}
            sched.handle(Measured(rss, {wid: backend.beacon(wid) for wid in due}, now))

    # ---------------------------------------------------------------- events
    # What the waiting sides (``_pump``, ``_attach``) saw, handed on.
    def readable(self, waitable: Waitable, now: float) -> None:
        """``waitable`` is ready to read: the backend's events go to the scheduler."""
        handle = self.sched.handle
        for event in self.backend.handle(waitable, now):
            handle(event)
        self.execute()

    def writable(self, waitable: Waitable, now: float) -> None:
        """``waitable`` accepts output again."""
        if self.backend.on_writable(waitable):
            self.sched.handle(Drained(now))

    def tick(self, now: float) -> None:
        """Time passed: the scheduler checks deadlines against the beacons it
        needs, read here and now."""
        beacon = self.backend.beacon
        wanted = self.sched.beacons_wanted(now)
        self.sched.handle(Tick(now, {wid: beacon(wid) for wid in wanted}))

    def next_deadline(self) -> float | None:
        """When ``tick`` is due next, if ever."""
        return self.sched.next_deadline()

    def charge(self, seconds: float) -> None:
        """Count ``seconds`` of the parent's time to the maps that ran (MapStats)."""
        self.sched.charge(seconds)

    def _on_discard(self, waitables: list[Waitable]) -> None:
        self.discarded.update(waitables)
        self.aio.discard(waitables)

    # ------------------------------------------------------- maps and input
    # What the drivers tell the scheduler, through the engine like everything else.
    def check_open(self) -> None:
        """Raise if this pool cannot take new maps."""
        if self.closed:
            raise RuntimeError("this pool is closed")

    @property
    def workers(self) -> int:
        """The pool's worker slots."""
        return self.sched.workers

    @property
    def broken(self) -> BaseException | None:
        """Why the pool can run nothing any more, if it cannot."""
        return self.sched.broken

    def new_job(self, config: MapConfig, **kwargs: Any) -> Job:
        """A new map (see ``Scheduler.new_job``)."""
        return self.sched.new_job(config, **kwargs)

    def want(self, job: Job) -> int:
        """How many more inputs ``job`` takes now."""
        return self.sched.want(job)

    def feed(self, job: Job, args: list[Any], now: float) -> None:
        """The next inputs of ``job``."""
        self.sched.feed(job, args, now)

    def skip(self, job: Job, values: list[Any], now: float) -> None:
        """The next inputs of ``job`` are done already (resumed): their values."""
        self.sched.skip(job, values, now)

    def end_input(self, job: Job) -> None:
        """``job`` has no more input."""
        self.sched.end_input(job)

    def input_failed(self, job: Job, error: BaseException, now: float) -> None:
        """Reading ``job``'s input (or its consumer) raised ``error``: it fails."""
        self.sched.input_failed(job, error, now)

    def finish(self, job: Job, *, cancel: bool, settle: bool = False) -> None:
        """The consumer of ``job`` is done with it; with ``cancel``, stop its work.

        Killed workers that have exited are reaped. With ``settle`` (a
        blocking map ends) those still dying get a moment too, so that no
        zombie outlives the map; an event loop is never made to wait.
        """
        self.aio.forget(job)
        self.backend.forget(job.id)
        if cancel and not job.done:
            self.sched.cancel(job, time.monotonic())
        else:
            self.sched.remove(job)
        if not self.closed:
            self.execute()
            self.backend.reap(wait=settle)

    def close(self) -> None:
        """Stop every worker; running maps fail with ``RuntimeError``.

        Safe from any thread while a blocking map runs (it takes the turn),
        and against Ctrl-C (held back until the workers are stopped).
        """
        if self._close_done or os.getpid() != self.pid:
            return
        with sigint_held(), self.sync.turn_for_close():
            self._close()

    def _close(self) -> None:
        if self._close_done:  # another thread closed it while we waited for the turn
            return
        self.closed = True
        self._release_closed_loop(cancel=False)
        self.sched.close()
        self.execute()
        self.backend.close()
        self._close_done = True
        # The backend calls back into us; a closed engine should not wait
        # for the cycle collector to be freed.
        self.backend.on_discard = _ignore_discard
        self.aio.notify()
        self.aio.detach_all()
        self.sync.close()
        _live_engines.discard(self)

    # ----------------------------------------------------------- who drives
    def begin_sync(self) -> None:
        """A blocking map starts; refused while an event loop drives the pool."""
        with self._mode:
            self._release_closed_loop()
            if self.aio.loop is not None:
                raise PoolInUseError(
                    "this pool is serving an asyncio event loop; a blocking map cannot use it "
                    "at the same time (use a separate Pool)"
                )
            self._sync_maps += 1

    def end_sync(self) -> None:
        """A blocking map is over."""
        with self._mode:
            self._sync_maps -= 1

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Serve ``loop``: watch the backend's descriptors on it."""
        with self._mode:
            self._release_closed_loop()
            if self._sync_maps:
                raise PoolInUseError(
                    "this pool is running a blocking map; an async map cannot use it at the "
                    "same time (use a separate Pool)"
                )
            if self.aio.loop is not None and self.aio.loop is not loop:
                raise PoolInUseError("this pool is already serving another event loop")
            self.aio.attach(loop)

    def _release_closed_loop(self, *, cancel: bool = True) -> None:
        """Let go of an event loop that was closed while maps of ours were pending on it.

        Their work is stopped (with ``cancel``) and the loop forgotten, so
        that the pool serves blocking maps and other loops again, and closing
        it does not touch the dead loop's futures.
        """
        if not self.aio.loop_closed():
            return
        if cancel:
            for job in list(self.sched.jobs):
                self.sched.cancel(job, time.monotonic())
        self.aio.detach_all()
        if cancel:
            self.execute()
