"""The asyncio side of a pool: its descriptors and deadlines on an event loop.

A pool serving a loop watches the backend's descriptors with
``loop.add_reader``/``loop.add_writer`` and its next deadline with
``loop.call_later``, so no helper thread runs (a loop that cannot watch
descriptors gets a thread that only waits; see ``_loopwatch``). Async maps
wait on futures (``changed``) that the loop callbacks resolve when their map
may have progressed.
"""

from __future__ import annotations

import asyncio
import select
import time
from collections.abc import Callable
from contextlib import nullcontext, suppress
from typing import TYPE_CHECKING

from ._loopwatch import ReaderWatch, ThreadWatch, fd_of, make_watch
from ._pump import READ

if TYPE_CHECKING:
    from ._backends.base import Waitable
    from ._engine import Engine
    from ._scheduler import Job


#: Seconds between two workers' starts while a pool serves a loop.
SPAWN_GAP = 0.001


class Attachment:
    """One engine's hold on the event loop it serves (at most one at a time)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.loop: asyncio.AbstractEventLoop | None = None
        self._users = 0
        self._watch: ReaderWatch | ThreadWatch | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._waiters: dict[Job, list[asyncio.Future[None]]] = {}
        self._spawn_due = False  # a turn to start a worker is scheduled (``spawn_later``)
        self._forked = False  # a worker was started in this turn of the loop

    def attach(self, loop: asyncio.AbstractEventLoop) -> bool:
        """One more async map on ``loop``; True for the first (the loop is new)."""
        first = self.loop is None
        self.loop = loop
        if first:
            backend = self._engine.backend
            self._watch = make_watch(loop, self._on_readable, self._on_writable)
            self._watch.update(backend.waitables(), backend.writables())
            self._schedule_timer()
        self._users += 1
        return first

    def detach(self) -> None:
        """One async map is done with the loop."""
        self._users -= 1
        if self._users <= 0:
            self.detach_all()

    def detach_all(self) -> None:
        """Let go of the loop: its readers, writers and timer."""
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
        self._users = 0
        self._spawn_due = self._forked = False  # their callbacks die with the loop
        self.loop = None

    def loop_closed(self) -> bool:
        """Whether the loop served was closed while maps of ours were pending on it.

        Those maps can never resume: their tasks went down with the loop,
        without running their cleanup; their futures are forgotten.
        """
        loop = self.loop
        if loop is None or not loop.is_closed():
            return False
        self._waiters.clear()  # futures of the dead loop: no one awaits them
        return True

    def after_execute(self) -> None:
        """Commands ran: watch the descriptors and the deadline they leave."""
        if self._watch is not None:
            backend = self._engine.backend
            self._watch.update(backend.waitables(), backend.writables())
            self._schedule_timer()

    def may_fork(self) -> bool:
        """Whether the engine may start a worker now: always, unless a loop is
        served and this turn of it started one already."""
        return self.loop is None or not self._forked

    def forked(self) -> None:
        """The engine started a worker: the next one waits for the next turn."""
        if self.loop is not None and not self._forked:
            self._forked = True
            self.loop.call_soon(self._turn_over)

    def _turn_over(self) -> None:
        self._forked = False

    def spawn_later(self) -> None:
        """Give the engine a later turn of the loop to start its next worker."""
        if self.loop is not None and not self._spawn_due:
            self._spawn_due = True
            # Later than the next turn: the tasks that the last fork kept
            # waiting run first.
            self.loop.call_later(SPAWN_GAP, self._on_spawn_turn)

    def _on_spawn_turn(self) -> None:
        self._spawn_due = False
        if self.loop is not None:
            self._guarded(lambda now: None)  # ``execute`` starts the worker

    def discard(self, waitables: list[Waitable]) -> None:
        """Stop watching ``waitables`` (about to be closed)."""
        if self._watch is not None:
            self._watch.discard(waitables)

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
        want = self._engine.want
        for waited, futures in list(self._waiters.items()):
            if job is waited or (
                job is None and (waited.ready or waited.finished or want(waited) > 0)
            ):
                del self._waiters[waited]
                for future in futures:
                    if not future.done():
                        future.set_result(None)

    def forget(self, job: Job) -> None:
        """``job`` is over: nobody waits for it any more."""
        self._waiters.pop(job, None)

    def _schedule_timer(self) -> None:
        loop = self.loop
        assert loop is not None
        deadline = self._engine.next_deadline()
        if deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = deadline
        if deadline is not None:
            self._timer = loop.call_later(max(0.0, deadline - time.monotonic()), self._on_timer)

    def _on_readable(self, waitable: Waitable) -> None:
        self._guarded(lambda now: self._engine.readable(waitable, now))

    def _on_writable(self, waitable: Waitable) -> None:
        self._guarded(lambda now: self._engine.writable(waitable, now))

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None

        def step(now: float) -> None:
            # Read what already arrived first: a loop that was busy must not
            # time out a worker whose outcomes wait in its socket.
            self._handle_ready(now)
            self._engine.tick(time.monotonic())

        self._guarded(step)

    def _handle_ready(self, now: float) -> None:
        engine = self._engine
        poller = select.poll()
        readers = {fd_of(w): w for w in engine.backend.waitables()}
        for fd in readers:
            poller.register(fd, READ)
        engine.discarded.clear()
        for fd, _ in poller.poll(0):
            waitable = readers[fd]
            if waitable not in engine.discarded:
                engine.readable(waitable, now)

    def _guarded(self, step: Callable[[float], None]) -> None:
        # An exception escaping a loop callback would only be logged, leaving
        # every awaiting map hanging: fail them with it instead.
        engine = self._engine
        started = time.thread_time()
        try:
            step(time.monotonic())
            engine.execute()
            engine.charge(time.thread_time() - started)
        except BaseException as exc:
            for job in list(self._waiters):
                engine.input_failed(job, exc, time.monotonic())
            self.notify()
            raise
        self.notify()
