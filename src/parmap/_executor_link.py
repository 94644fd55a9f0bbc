"""The link between an executor's callers and its pump thread.

Everything in a ``_Link`` is shared by the threads, under its one ``cv``.
Callers (``submit``, ``cancel``, ``map``'s consumer, ``shutdown``) append tasks
to ``queue`` and requests to ``inbox`` and ``poke`` the pump thread, which
starts it the first time and then wakes it: with ``Engine.wake`` while it
waits in ``Engine.pump``, through ``cv`` while it has nothing in flight.
"""

from __future__ import annotations

import atexit
import os
import threading
import weakref
from collections import deque
from concurrent.futures.process import BrokenProcessPool
from typing import Literal

from ._engine import Engine
from ._executor_pump import _Pump
from ._executor_runs import _Request, _Task
from ._options import MapConfig, PoolConfig

#: How long interpreter exit (or a second Ctrl-C) waits for the pump thread.
STOP_JOIN_SECONDS = 10.0
#: How often a consumer waiting for the pump thread checks that it still runs.
EVENT_POLL_SECONDS = 0.1

_links: weakref.WeakSet[_Link] = weakref.WeakSet()


class _Link:
    """One executor's queues and state, its engine and its pump thread (made on first use)."""

    def __init__(self, config: PoolConfig, task_config: MapConfig, timeout: float | None) -> None:
        self.config = config
        self.task_config = task_config
        self.timeout = timeout
        self.pid = os.getpid()
        self.cv = threading.Condition()
        self.queue: deque[_Task] = deque()
        self.inbox: deque[_Request] = deque()
        self.phase: Literal["busy", "pumping", "idle"] = "busy"
        self.shutdown = False
        self.stop: Literal["drain", "terminate"] | None = None
        self.broken: BrokenProcessPool | None = None
        self.engine: Engine | None = None
        self.thread: threading.Thread | None = None
        _links.add(self)

    def take_queued(self, *, shutdown: bool = False) -> list[_Task]:
        """Empty the queue of tasks not yet started and return them (``shutdown``: close too)."""
        with self.cv:
            if shutdown:
                self.shutdown = True
            queued = list(self.queue)
            self.queue.clear()
        return queued

    def check_open(self) -> None:
        """Raise unless new work may be scheduled (the caller holds ``cv``)."""
        if self.shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        if os.getpid() != self.pid:
            raise RuntimeError("this Executor belongs to the process that created it")

    def post_open(self, request: _Request) -> None:
        """Hand ``request`` to the pump thread (starting it) unless shut down."""
        with self.cv:
            self.check_open()
            self.inbox.append(request)
            self.poke()

    def post(self, request: _Request) -> None:
        """Hand ``request`` to the pump thread, if it runs (or once it does)."""
        with self.cv:
            self.inbox.append(request)
            if self.thread is not None:
                self.poke()

    def poke(self) -> None:
        """Make the pump thread look at its queues (the caller holds ``cv``)."""
        if self.thread is None:
            self.engine = Engine(self.config)
            self.thread = threading.Thread(target=self._run, name="parmap-executor", daemon=True)
            self.thread.start()
        elif self.phase == "pumping":
            assert self.engine is not None
            self.engine.sync.wake()
        elif self.phase == "idle":
            self.cv.notify()
        self.phase = "busy"

    def _run(self) -> None:
        engine = self.engine
        assert engine is not None
        _Pump(self, engine).run()

    def terminate(self) -> None:
        """Cancel every task, kill the running ones, stop the pump thread."""
        with self.cv:
            if os.getpid() != self.pid:
                return
            self.shutdown = True
            if self.thread is not None:
                self.stop = "terminate"
                self.poke()

    def wait_for(self, event: threading.Event) -> None:
        """Wait until the pump thread sets ``event``, or is gone.

        Never in the pump thread itself (a done-callback, or the garbage
        collector finalizing a map's iterator there): it would wait for itself.
        """
        if threading.current_thread() is self.thread:
            return
        while not event.wait(EVENT_POLL_SECONDS):
            thread = self.thread
            if thread is None or not thread.is_alive():
                return

    def join(self, thread: threading.Thread) -> None:
        """Wait for the pump thread to end; on Ctrl-C, stop its tasks first."""
        if thread is threading.current_thread():
            return  # shutdown from a done-callback: the thread ends on its own
        try:
            thread.join()
        except BaseException:
            # Ctrl-C while waiting for tasks: stop them instead.
            self.terminate()
            thread.join(STOP_JOIN_SECONDS)
            raise


@atexit.register
def _stop_at_exit() -> None:
    # Registered after the engine's own exit hook, so it runs first: the pump
    # threads close their engines themselves, from their own thread.
    links = list(_links)
    for link in links:
        link.terminate()
    for link in links:
        thread = link.thread
        if thread is not None and link.pid == os.getpid():
            thread.join(STOP_JOIN_SECONDS)
