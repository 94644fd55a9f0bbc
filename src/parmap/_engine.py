"""A pool's machinery: its scheduler, its backend, and the commands between them.

The engine is where the I/O-free scheduler meets the real world. It carries
out the scheduler's commands on the backend and runs one step of the event
loop in either of two ways:

* synchronously (``pump``), waiting with ``poll`` on the backend's sockets
  and sentinels (for reading) and on the sockets it has output for (for
  writing), the nearest deadline as timeout;
* on an asyncio loop (``attach``), with ``loop.add_reader`` and
  ``loop.add_writer`` on the same file descriptors and ``loop.call_later``
  for deadlines, so no helper thread (a loop that cannot watch descriptors
  gets a thread that only waits; see ``_loopwatch``).

Either way the parent never blocks writing to a worker: it writes what a
socket accepts and keeps reading results meanwhile.

Threads may share a pool: one thread at a time takes the *turn* to pump, and a
thread waiting for the turn wakes the pumping one through a self-pipe. A pool
serves either synchronous callers or one event loop at a time.
"""

from __future__ import annotations

import asyncio
import atexit
import math
import os
import select
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext, suppress
from typing import Any

from ._backends.base import Backend, Waitable
from ._events import (
    Drained,
    Encoded,
    Event,
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
from ._loopwatch import ReaderWatch, ThreadWatch, fd_of, make_watch
from ._memory import Gauge
from ._options import MapConfig, PoolConfig
from ._scheduler import Job, Scheduler
from ._sigmask import sigint_held

_live_engines: weakref.WeakSet[Engine] = weakref.WeakSet()
#: The longest single wait (poll takes milliseconds in a C int): a deadline
#: further away than this is simply waited for in several steps.
MAX_WAIT_MS = 24 * 3600 * 1000
_READ = select.POLLIN | select.POLLPRI | select.POLLHUP | select.POLLERR


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
        # Waitables discarded while one wait's ready list is being handled:
        # their numbers may already belong to a new worker.
        self._discarded: set[Waitable] = set()
        self.closed = False
        self._close_done = False  # every worker stopped (``closed`` is set first)
        # Who drives the pool: blocking maps (counted) or one event loop.
        self._mode = threading.Lock()
        self._sync_maps = 0
        # Sync turn-taking; the self-pipe is made on first use, so a map that
        # is never iterated holds no descriptors.
        self._turn = threading.Lock()
        self._turn_owner: int | None = None  # thread ident of the holder
        self._waiting = 0
        self._waiting_lock = threading.Lock()
        self._wake: tuple[int, int] | None = None
        # Async attachment.
        self.loop: asyncio.AbstractEventLoop | None = None
        self._async_users = 0
        self._watch: ReaderWatch | ThreadWatch | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._waiters: dict[Job, list[asyncio.Future[None]]] = {}
        _live_engines.add(self)

    # -------------------------------------------------------------- commands
    def execute(self) -> None:
        """Carry out what the scheduler asked for."""
        sched, backend = self.sched, self.backend
        if self._gauge is not None:
            self._check_memory()
        while commands := sched.take_commands():
            for cmd in commands:
                if isinstance(cmd, Send):
                    # Pickling happens here, not in the scheduler; how it went
                    # (the chunk's weight, or which inputs do not pickle) is
                    # an event, which may queue the next Send for this loop.
                    payload, report = encode_chunk(backend.encode, cmd)
                    if isinstance(report, Encoded):
                        backend.send(cmd.wid, payload)
                    sched.handle(report)
                elif isinstance(cmd, Spawn):
                    if self._gauge is not None:
                        self._gauge.spawned(cmd.wid)
                    try:
                        backend.spawn(cmd.wid)
                    except Exception as exc:
                        sched.handle(SpawnFailed(cmd.wid, exc))
                    else:
                        sched.handle(Started(cmd.wid, time.monotonic()))
                elif isinstance(cmd, Kill):
                    backend.kill(cmd.wid)
                elif isinstance(cmd, Retire):
                    backend.retire(cmd.wid)
        if self._watch is not None:
            self._watch.update(self.backend.waitables(), self.backend.writables())
            self._schedule_timer()

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

    def _events(self, events: list[Event]) -> None:
        # The only way what happened reaches the scheduler.
        handle = self.sched.handle
        for event in events:
            handle(event)

    def _tick(self, now: float) -> None:
        # Time passed: the scheduler checks deadlines against the beacons it
        # needs, read here and now.
        beacon = self.backend.beacon
        wanted = self.sched.beacons_wanted(now)
        self.sched.handle(Tick(now, {wid: beacon(wid) for wid in wanted}))

    def _drained(self, waitable: Waitable, now: float) -> None:
        if self.backend.on_writable(waitable):
            self.sched.handle(Drained(now))

    def check_open(self) -> None:
        """Raise if this pool cannot take new maps."""
        if self.closed:
            raise RuntimeError("this pool is closed")

    # ------------------------------------------------------- maps and input
    # What the drivers tell the scheduler, through the engine like everything else.
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
        self._waiters.pop(job, None)
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
        with sigint_held(), self._turn_for_close():
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
        self.notify()
        self._detach_all()
        if self._wake is not None:
            for fd in self._wake:
                with suppress(OSError):
                    os.close(fd)
        _live_engines.discard(self)

    # ------------------------------------------------------------- sync side
    def begin_sync(self) -> None:
        """A blocking map starts; refused while an event loop drives the pool."""
        with self._mode:
            self._release_closed_loop()
            if self.loop is not None:
                raise PoolInUseError(
                    "this pool is serving an asyncio event loop; a blocking map cannot use it "
                    "at the same time (use a separate Pool)"
                )
            self._sync_maps += 1

    def end_sync(self) -> None:
        """A blocking map is over."""
        with self._mode:
            self._sync_maps -= 1

    def _wake_fds(self) -> tuple[int, int]:
        with self._waiting_lock:
            if self._wake is None:
                r, w = os.pipe()
                os.set_blocking(r, False)
                os.set_blocking(w, False)
                self._wake = (r, w)
            return self._wake

    @contextmanager
    def _turn_for_close(self) -> Iterator[None]:
        # The turn, unless this thread holds it already (close from inside a
        # map, or at exit from the thread that was mapping); a holder that
        # never lets go (a thread stuck in user code) is not waited for long.
        if self._turn_owner == threading.get_ident():
            yield
            return
        with self._waiting_lock:
            self._waiting += 1  # the pumping thread steps aside (see ``turn``)
        try:
            with suppress(OSError):
                os.write(self._wake_fds()[1], b"x")
            got = self._turn.acquire(timeout=5.0)
        finally:
            with self._waiting_lock:
                self._waiting -= 1
        if got:
            self._turn_owner = threading.get_ident()
        try:
            yield
        finally:
            if got:
                self._turn_owner = None
                self._turn.release()

    @contextmanager
    def turn(self) -> Iterator[None]:
        """Hold the right to pump this pool from the current thread."""
        if not self._turn.acquire(blocking=False):
            with self._waiting_lock:
                self._waiting += 1
            with suppress(OSError):
                os.write(self._wake_fds()[1], b"x")
            try:
                self._turn.acquire()
            finally:
                with self._waiting_lock:
                    self._waiting -= 1
        self._turn_owner = threading.get_ident()
        try:
            yield
        finally:
            self._turn_owner = None
            self._turn.release()
            if self._waiting:
                # Python locks are not fair: step aside so a waiting thread
                # gets the turn rather than us taking it straight back.
                time.sleep(0.0005)

    def pump(self) -> None:
        """Wait for the next event or deadline and process it (sync drivers)."""
        sched, backend = self.sched, self.backend
        deadline = sched.next_deadline()
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        readers = backend.waitables()
        if not readers and timeout is None:
            timeout = 0.05  # nothing to watch (all workers being replaced)
        poller = select.poll()
        watched: dict[int, tuple[Waitable | None, Waitable | None]] = {}
        for waitable in readers:
            watched[fd_of(waitable)] = (waitable, None)
        for waitable in backend.writables():
            fd = fd_of(waitable)
            watched[fd] = (watched.get(fd, (None, None))[0], waitable)
        wake_r = self._wake_fds()[0]
        for fd, (reader, writer) in watched.items():
            poller.register(
                fd,
                (_READ if reader is not None else 0)
                | (select.POLLOUT if writer is not None else 0),
            )
        poller.register(wake_r, select.POLLIN)
        wait_ms = None if timeout is None else min(math.ceil(timeout * 1000), MAX_WAIT_MS)
        events = poller.poll(wait_ms)
        now = time.monotonic()
        self._discarded.clear()
        writable: list[Waitable] = []
        for fd, mask in events:
            if fd == wake_r:
                self._drain_wakeups(wake_r)
                continue
            reader, writer = watched[fd]
            if writer is not None and mask & select.POLLOUT:
                writable.append(writer)
            if reader is None or not mask & _READ or reader in self._discarded:
                continue
            self._events(backend.handle(reader, now))
            self.execute()
        for writer in writable:
            if writer not in self._discarded:
                self._drained(writer, now)
        if deadline is not None and now >= deadline:
            self._tick(now)
        self.execute()

    def wake(self) -> None:
        """Make a ``pump`` waiting in another thread return soon (it has new work)."""
        with suppress(OSError):
            os.write(self._wake_fds()[1], b"x")

    @staticmethod
    def _drain_wakeups(fd: int) -> None:
        with suppress(OSError):
            while os.read(fd, 512):
                pass

    # ------------------------------------------------------------ async side
    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Serve ``loop``: watch the backend's descriptors on it."""
        with self._mode:
            self._release_closed_loop()
            if self._sync_maps:
                raise PoolInUseError(
                    "this pool is running a blocking map; an async map cannot use it at the "
                    "same time (use a separate Pool)"
                )
            if self.loop is not None and self.loop is not loop:
                raise PoolInUseError("this pool is already serving another event loop")
            first = self.loop is None
            self.loop = loop
        if first:
            # A loop that cannot watch descriptors (e.g. Windows' proactor
            # loop) gets a thread that only waits for them.
            self._watch = make_watch(loop, self._on_readable, self._on_writable)
            self._watch.update(self.backend.waitables(), self.backend.writables())
            self._schedule_timer()
        self._async_users += 1

    def detach(self) -> None:
        """One async map is done with the loop."""
        self._async_users -= 1
        if self._async_users <= 0:
            self._detach_all()

    def _detach_all(self) -> None:
        loop = self.loop
        if loop is None:
            return
        # A closed loop may refuse even to forget a reader or a timer (uvloop).
        with suppress(RuntimeError) if loop.is_closed() else nullcontext():
            if self._watch is not None:
                self._watch.close()
            if self._timer is not None:
                self._timer.cancel()
        self._watch = None
        self._timer = self._timer_at = None
        self._async_users = 0
        self.loop = None

    def _release_closed_loop(self, *, cancel: bool = True) -> None:
        """Let go of an event loop that was closed while maps of ours were pending on it.

        Those maps can never resume: their tasks went down with the loop,
        without running their cleanup. Their work is stopped (with
        ``cancel``) and the loop forgotten, so that the pool serves blocking
        maps and other loops again, and closing it does not touch the dead
        loop's futures.
        """
        loop = self.loop
        if loop is None or not loop.is_closed():
            return
        self._waiters.clear()  # futures of the dead loop: no one awaits them
        if cancel:
            for job in list(self.sched.jobs):
                self.sched.cancel(job, time.monotonic())
        self._detach_all()
        if cancel:
            self.execute()

    def changed(self, job: Job) -> asyncio.Future[None]:
        """A future resolved the next time ``job`` may have progressed.

        Resolved when the job has outcomes ready, has finished, or has room
        for more input; waiters re-check what they wait for.
        """
        assert self.loop is not None
        future: asyncio.Future[None] = self.loop.create_future()
        self._waiters.setdefault(job, []).append(future)
        return future

    def notify(self, job: Job | None = None) -> None:
        """Wake the waiters of ``job`` (of every job that progressed, by default)."""
        want = self.sched.want
        for waited, futures in list(self._waiters.items()):
            if job is waited or (
                job is None and (waited.ready or waited.finished or want(waited) > 0)
            ):
                del self._waiters[waited]
                for future in futures:
                    if not future.done():
                        future.set_result(None)

    def _on_discard(self, waitables: list[Waitable]) -> None:
        self._discarded.update(waitables)
        if self._watch is not None:
            self._watch.discard(waitables)

    def _schedule_timer(self) -> None:
        loop = self.loop
        assert loop is not None
        deadline = self.sched.next_deadline()
        if deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = deadline
        if deadline is not None:
            self._timer = loop.call_later(max(0.0, deadline - time.monotonic()), self._on_timer)

    def _on_readable(self, waitable: Waitable) -> None:
        self._guarded(lambda now: self._events(self.backend.handle(waitable, now)))

    def _on_writable(self, waitable: Waitable) -> None:
        self._guarded(lambda now: self._drained(waitable, now))

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None

        def step(now: float) -> None:
            # Read what already arrived first: a loop that was busy must not
            # time out a worker whose outcomes wait in its socket.
            self._handle_ready(now)
            self._tick(time.monotonic())

        self._guarded(step)

    def _handle_ready(self, now: float) -> None:
        poller = select.poll()
        readers = {fd_of(w): w for w in self.backend.waitables()}
        for fd in readers:
            poller.register(fd, _READ)
        self._discarded.clear()
        for fd, _ in poller.poll(0):
            waitable = readers[fd]
            if waitable not in self._discarded:
                self._events(self.backend.handle(waitable, now))
                self.execute()

    def _guarded(self, step: Callable[[float], None]) -> None:
        # An exception escaping a loop callback would only be logged, leaving
        # every awaiting map hanging: fail them with it instead.
        started = time.thread_time()
        try:
            step(time.monotonic())
            self.execute()
            self.sched.charge(time.thread_time() - started)
        except BaseException as exc:
            for job in list(self._waiters):
                self.sched.input_failed(job, exc, time.monotonic())
            self.notify()
            raise
        self.notify()
