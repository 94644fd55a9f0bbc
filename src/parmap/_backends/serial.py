"""The caller itself, one item after another (``backend="serial"``).

For debugging: items run in the calling thread, in input order, so
``breakpoint()``/``pdb`` and plain tracebacks work, and nothing is pickled.
The map is otherwise the same: the same ``MapResult`` and outcomes, the same
``on_error``, ``retries``, ``buffer`` and ``progress`` behaviour.

Timeouts are reported after the fact: an item cannot be interrupted, so it
runs to its end; if it took longer than ``timeout``, its value is discarded
and it fails with ``TaskTimeoutError`` (and is retried only when
``retry_on`` names the timeout, as with processes). ``KeyboardInterrupt`` and
``bdb.BdbQuit`` (quitting the debugger) raised by an item stop the map
instead of being captured. Under ``apmap``/``aimap`` each item runs inside
the event loop and blocks it while it runs.

How it fits the drivers: the backend keeps a byte in a pipe while it has
something to do; each time the driver finds the pipe readable, ``handle``
runs one item (or one slot's initializer) and reports it. One item per turn
keeps a map that is stopped (``on_error="raise"``, a timeout, the consumer
leaving) from running anything more than the item it was on.
"""

from __future__ import annotations

import bdb
import os
import time
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from .._events import Batch, BeaconReading, ChunkMessage, Event, InitFailed, Ready, Tick
from .._options import PoolConfig
from .base import Capabilities, InProcessIO, Waitable
from .inprocess import LocalFunctions, local_error


class _Slot:
    __slots__ = ("args", "beacon", "fn", "pos", "star", "started")

    def __init__(self) -> None:
        self.started = 0
        self.beacon: tuple[int, float | None] = (0, None)
        self.fn: Callable[..., Any] | None = None
        self.star = False
        self.args: list[Any] = []
        self.pos = 0


class SerialBackend(InProcessIO):
    """One worker slot, served by the thread that drives the map (see the module docs)."""

    def __init__(self, config: PoolConfig, *, preload: Callable[..., Any] | None = None) -> None:
        self._config = config
        self.capabilities = Capabilities.in_this_process(1, preload)
        self._functions = LocalFunctions(preload)
        self._slots: dict[int, _Slot] = {}
        self._starting: list[int] = []
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)
        self._armed = False
        self._closed = False
        self.on_discard: Callable[[list[Waitable]], None] = lambda waitables: None

    def encode(self, message: ChunkMessage) -> object:
        """Nothing to pickle: the chunk is run as it is."""
        return self._functions.resolve(message)

    def spawn(self, wid: int) -> None:
        self._slots[wid] = _Slot()
        self._starting.append(wid)
        self._arm()

    def send(self, wid: int, payload: Any) -> None:
        slot = self._slots.get(wid)
        if slot is not None:
            slot.fn, slot.star, slot.args = payload
            slot.pos = 0
            self._arm()

    def kill(self, wid: int) -> None:
        """Forget slot ``wid`` and the rest of its chunk."""
        self._slots.pop(wid, None)
        if wid in self._starting:
            self._starting.remove(wid)
        self._arm()

    retire = kill

    def close(self) -> None:
        self._slots.clear()
        self._starting.clear()
        if not self._closed:
            self._closed = True
            self.on_discard([self._r])
            for fd in (self._r, self._w):
                with suppress(OSError):
                    os.close(fd)

    def waitables(self) -> list[Waitable]:
        return [] if self._closed else [self._r]

    def beacon(self, wid: int) -> BeaconReading:
        slot = self._slots.get(wid)
        return None if slot is None else slot.beacon

    def _arm(self) -> None:
        """Keep one byte in the pipe exactly while there is something to run."""
        if self._closed:
            return
        busy = bool(self._starting) or any(s.pos < len(s.args) for s in self._slots.values())
        if busy and not self._armed:
            os.write(self._w, b"x")
            self._armed = True
        elif not busy and self._armed:
            with suppress(BlockingIOError):
                os.read(self._r, 64)
            self._armed = False

    def forget(self, job_id: int) -> None:
        """Map ``job_id`` is over: its function goes."""
        self._functions.forget(job_id)

    def handle(self, waitable: Waitable, now: float) -> list[Event]:
        """Start one slot, or run one item and report it."""
        try:
            if self._starting:
                return [self._start(self._starting.pop(0))]
            for wid, slot in self._slots.items():
                if slot.pos < len(slot.args):
                    return self._run_one(wid, slot)
            return []
        finally:
            self._arm()

    def _start(self, wid: int) -> Event:
        config = self._config
        if config.initializer is not None:
            try:
                config.initializer(*config.initargs)
            except (KeyboardInterrupt, bdb.BdbQuit):
                raise
            except BaseException as exc:
                return InitFailed(wid, local_error(exc))
        return Ready(wid)

    def _run_one(self, wid: int, slot: _Slot) -> list[Event]:
        fn = slot.fn
        assert fn is not None
        args = slot.args[slot.pos]
        slot.pos += 1
        if slot.pos >= len(slot.args):
            slot.args, slot.pos, slot.fn = [], 0, None
        slot.started += 1
        t0 = time.monotonic()
        slot.beacon = (slot.started, t0)
        error: BaseException | None = None
        try:
            value = fn(*args) if slot.star else fn(args)
        except (KeyboardInterrupt, bdb.BdbQuit):
            raise
        except BaseException as exc:
            value, error = None, local_error(exc)
        t1 = time.monotonic()
        slot.beacon = (slot.started, None)
        # The time first, with the item still running since t0: if it ran
        # past its timeout, the scheduler fails it with TaskTimeoutError and
        # drops this slot, and the batch is ignored.
        return [
            Tick(t1, {wid: (slot.started, t0)}),
            Batch(wid, [value], None if error is None else {0: error}, t1 - t0, t1),
        ]
