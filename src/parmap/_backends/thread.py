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

Threads report through a ``Mailbox`` (see ``inprocess``), so sync and async
maps need nothing special for threads.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from functools import partial
from typing import Any

from .._events import Batch, BeaconReading, ChunkMessage, Event, InitFailed, Ready
from .._options import PoolConfig
from .base import Capabilities, Waitable
from .inprocess import INIT_FAILED, READY, Lane, LocalFunctions, MailIO, Note, deliver, local_error


class _ThreadLane(Lane):
    __slots__ = ("inbox",)

    def __init__(self, wid: int) -> None:
        super().__init__(wid)
        self.inbox: queue.SimpleQueue[tuple[Callable[..., Any], bool, list[Any]] | None] = (
            queue.SimpleQueue()
        )


class ThreadBackend(MailIO):
    """Worker slots served by threads of this process (see the module docs)."""

    def __init__(self, config: PoolConfig, *, preload: Callable[..., Any] | None = None) -> None:
        self._config = config
        self.capabilities = Capabilities.in_this_process(config.resolved_workers, preload)
        self._functions = LocalFunctions(preload)
        super().__init__()
        self._lanes: dict[int, _ThreadLane] = {}

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
        self._shut_mailbox()

    def beacon(self, wid: int) -> BeaconReading:
        lane = self._lanes.get(wid)
        return None if lane is None else lane.beacon

    def forget(self, job_id: int) -> None:
        """Map ``job_id`` is over: its function goes."""
        self._functions.forget(job_id)

    def handle(self, waitable: Waitable, now: float) -> list[Event]:
        """What the threads posted, as events."""

        def control(note: Note) -> list[Event]:
            if note[0] == READY:
                return [Ready(note[1])]
            assert note[0] == INIT_FAILED
            return [InitFailed(note[1], note[2])]

        return deliver(self._mailbox.take(), partial(Batch, now=now), control)

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
