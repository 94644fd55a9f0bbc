"""Any ``concurrent.futures.Executor`` the caller owns (``backend=executor``).

parmap only submits to the executor; it never shuts it down. The pool's
``workers`` slots (the ``workers`` option, else the number of CPUs) are how
many chunks are in flight at once: give the executor at least that many
workers, or chunks wait in its queue (and, with a ``timeout``, the clock of a
process executor's chunk runs while it waits).

Two kinds of executor are told apart:

* a ``ThreadPoolExecutor`` runs chunks in this process like the ``"thread"``
  backend: nothing is pickled, per-item progress and timeouts are exact;
* any other executor (``ProcessPoolExecutor``, loky, MPI, ...) is treated as
  running elsewhere: a chunk is pickled by parmap itself (so unpicklable
  arguments fail only their own item, as with processes) and runs as one call
  of ``_codec.run_chunk``, which returns every outcome of the chunk at once.
  Since nothing tells which item of that call is running, a map with a
  ``timeout`` and no ``chunksize`` sends one item per call, so the timeout
  holds per item, measured from the call's submission. With an explicit
  ``chunksize`` the timeout starts with the chunk and is charged to its first
  unfinished item; the rest of the chunk runs again.

Neither kind can stop a running call: a timed-out item is reported as
``TaskTimeoutError`` and its call is cancelled if it has not started, or
abandoned (it runs to its end, the result is discarded) if it has.

Outcomes reach the drivers through a ``Mailbox`` (see ``thread``): future
callbacks, which run in the executor's threads, post to it and its pipe wakes
the driver. A call that fails as a whole (the executor was shut down or is
broken, or a dask worker died) fails its item; for a chunk of several items,
they are run again one per call, so the failure lands on the right one.
"""

from __future__ import annotations

import pickle
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

from .._codec import PROTOCOL, decode_batch, run_chunk
from .._events import Batch, BeaconReading, ChunkMessage, Event, Ready
from .._options import PoolConfig
from .base import Capabilities, Waitable
from .inprocess import DONE, NEXT, READY, Lane, LocalFunctions, MailIO, Note, deliver, local_error


class _Chunk:
    """A chunk ready to submit: its items, and for remote runs their pickle."""

    __slots__ = ("args", "data", "fn", "star")

    def __init__(self, fn: Any, star: bool, args: list[Any], data: bytes | None) -> None:
        self.fn = fn
        self.star = star
        self.args = args
        self.data = data


class _Unit:
    """One submitted call: ``args`` of the slot's chunk, as one future."""

    __slots__ = ("args", "future", "reported", "seq", "submitted")

    def __init__(self, seq: int, args: list[Any], reported: int) -> None:
        self.seq = seq
        self.args = args
        self.reported = reported  # the slot's reported count when submitted
        self.submitted = time.monotonic()
        self.future: Any = None


class _Slot(Lane):
    __slots__ = ("chunk", "reported", "rest", "unit")

    def __init__(self, wid: int) -> None:
        super().__init__(wid)
        self.reported = 0
        self.unit: _Unit | None = None
        self.chunk: _Chunk | None = None
        self.rest: deque[Any] = deque()


def _outcome(future: Any) -> tuple[Any, BaseException | None]:
    try:
        return future.result(), None
    except BaseException as exc:
        # Its traceback's frames (ours, and with dask those tblib makes up)
        # hold the future: a dask future kept alive keeps its task, and its
        # result, on the cluster for as long as the error is kept.
        return None, exc.with_traceback(None)


class ExecutorBackend(MailIO):
    """Worker slots whose chunks run as futures of a caller's executor."""

    #: Used in error messages: what refused an initializer.
    kind = "an Executor"

    def __init__(
        self, target: Any, config: PoolConfig, *, preload: Callable[..., Any] | None = None
    ) -> None:
        if config.initializer is not None:
            raise ValueError(
                f"initializer is not supported with {self.kind} as backend: "
                f"{self._initializer_advice()}"
            )
        self._target = target
        self._in_process = self._runs_here(target)
        self.capabilities = Capabilities(
            workers=self._default_workers(config),
            can_kill=False,
            # A call run elsewhere says nothing until it returns.
            item_beacon=self._in_process,
            prefetch=False,
            in_process=self._in_process,
            start_method=None,
            preload=preload if self._in_process else None,
        )
        self._functions = LocalFunctions(preload) if self._in_process else None
        self._payloads: dict[int, bytes] = {}
        super().__init__()
        self._slots: dict[int, _Slot] = {}
        self._seq = 0

    # ---------------------------------------------------- what subclasses change
    @staticmethod
    def _runs_here(target: Any) -> bool:
        return isinstance(target, ThreadPoolExecutor)

    @staticmethod
    def _initializer_advice() -> str:
        return "give the executor its own (e.g. ThreadPoolExecutor(initializer=...))"

    def _default_workers(self, config: PoolConfig) -> int:
        # The executor's own size is private (``_max_workers``): not read.
        return config.resolved_workers

    def _submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self._target.submit(fn, *args)

    def _cancel(self, futures: list[Any]) -> None:
        for future in futures:
            future.cancel()

    # ---------------------------------------------------------------- commands
    def encode(self, message: ChunkMessage) -> object:
        """In-process: the chunk as it is. Remote: the chunk pickled, with its function."""
        if self._functions is not None:
            return _Chunk(*self._functions.resolve(message), None)
        job_id, fn, star, args = message.job_id, message.fn, message.star, message.args
        if fn is None:
            fn = self._payloads[job_id]
        else:
            # Every call carries the function: remember it past the job's
            # first chunk, which is the only one the scheduler sends it with.
            self._payloads[job_id] = fn
        return _Chunk(fn, star, args, pickle.dumps((fn, star, args), PROTOCOL))

    def spawn(self, wid: int) -> None:
        """A slot needs no starting: report it ready."""
        self._slots[wid] = _Slot(wid)
        self._mailbox.post((READY, wid))

    def send(self, wid: int, payload: Any) -> None:
        slot = self._slots.get(wid)
        if slot is None:
            return
        slot.chunk = payload
        self._start(slot, payload.args, payload.data)

    def kill(self, wid: int) -> None:
        """Give up on slot ``wid``: cancel its call, or abandon it if it runs."""
        slot = self._slots.pop(wid, None)
        if slot is None:
            return
        slot.abandoned = True
        if slot.unit is not None and slot.unit.future is not None:
            self._cancel([slot.unit.future])

    def retire(self, wid: int) -> None:
        self._slots.pop(wid, None)

    def close(self) -> None:
        """Cancel what is in flight; the executor itself stays the caller's."""
        slots, self._slots = list(self._slots.values()), {}
        futures = [s.unit.future for s in slots if s.unit is not None and s.unit.future is not None]
        for slot in slots:
            slot.abandoned = True
        if futures:
            self._cancel(futures)
        self._shut_mailbox()

    def beacon(self, wid: int) -> BeaconReading:
        slot = self._slots.get(wid)
        if slot is None:
            return None
        if self._in_process:
            return slot.beacon
        # A remote call says nothing until it returns: count its first item
        # as running since the call was submitted.
        unit = slot.unit
        return (slot.reported, None) if unit is None else (slot.reported + 1, unit.submitted)

    # ------------------------------------------------------------------ calls
    def _start(self, slot: _Slot, args: list[Any], data: bytes | None) -> None:
        """Submit ``args`` of the slot's chunk as one call."""
        chunk = slot.chunk
        assert chunk is not None
        self._seq += 1
        unit = slot.unit = _Unit(self._seq, args, slot.reported)
        post = self._mailbox.post
        try:
            if data is None:
                future = self._submit(slot.run, chunk.fn, chunk.star, args, post)
            else:
                future = self._submit(run_chunk, data)
        except Exception as exc:  # shut down, broken, or the client is gone
            post((DONE, slot.wid, unit.seq, None, exc))
            return
        unit.future = future
        future.add_done_callback(partial(self._done, post, slot.wid, unit.seq))

    @staticmethod
    def _done(post: Callable[[Note], None], wid: int, seq: int, future: Any) -> None:
        """A call finished (in whatever thread the executor calls back from)."""
        result, error = _outcome(future)
        post((DONE, wid, seq, result, error))

    def forget(self, job_id: int) -> None:
        """Map ``job_id`` is over: its function goes."""
        self._payloads.pop(job_id, None)
        if self._functions is not None:
            self._functions.forget(job_id)

    def handle(self, waitable: Waitable, now: float) -> list[Event]:
        """What the calls posted, as events."""

        def report(wid: int, values: list[Any], errors: Any, busy: float) -> Batch | None:
            slot = self._slots.get(wid)
            if slot is None:
                return None
            slot.reported += len(values)
            return Batch(wid, values, errors, busy, now)

        def control(note: Note) -> list[Event]:
            tag, wid = note[0], note[1]
            if tag == READY:
                return [Ready(wid)]
            slot = self._slots.get(wid)
            if slot is None:
                return []  # killed or retired: whatever it was is discarded
            if tag == DONE:
                return self._finished(slot, note[2], note[3], note[4], now)
            if tag == NEXT and slot.unit is None and slot.rest and slot.chunk is not None:
                arg = slot.rest.popleft()
                chunk = slot.chunk
                data = None
                if chunk.data is not None:
                    data = pickle.dumps((chunk.fn, chunk.star, [arg]), PROTOCOL)
                self._start(slot, [arg], data)
            return []

        return deliver(self._mailbox.take(), report, control)

    def _finished(
        self, slot: _Slot, seq: int, result: Any, error: BaseException | None, now: float
    ) -> list[Event]:
        unit = slot.unit
        if unit is None or unit.seq != seq:
            return []
        slot.unit = None
        events: list[Event] = []
        if error is None:
            if not self._in_process:  # in-process calls posted their outcomes already
                values, raw_errors, pickled, busy = result
                values, errors = decode_batch(values, raw_errors, pickled)
                slot.reported += len(values)
                events.append(Batch(slot.wid, values, errors, busy, now))
        else:
            # The call failed as a whole, not one of its items.
            left = unit.args[slot.reported - unit.reported :]
            if len(left) == 1:
                slot.reported += 1
                failure = {0: local_error(error)}
                events.append(Batch(slot.wid, [None], failure, now - unit.submitted, now))
            else:
                # Which item broke it is unknown: run them one per call.
                slot.rest.extendleft(reversed(left))
        if slot.rest:
            # Submit after the engine carried out this turn's commands: a
            # Kill for this slot may be among them.
            self._mailbox.post((NEXT, slot.wid))
        elif slot.unit is None:
            slot.chunk = None
        return events
