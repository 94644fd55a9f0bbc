"""``Scheduler``: the events a pool's workers cause, one at a time (see the package)."""

from __future__ import annotations

from pickle import PicklingError
from typing import Any

from .._events import (
    Batch,
    BeaconReading,
    Drained,
    Encoded,
    Event,
    Exited,
    InitFailed,
    Kill,
    Measured,
    Ready,
    Retire,
    SpawnFailed,
    Started,
    Tick,
    Unpicklable,
)
from .._results import WorkerCrashedError, add_note, mark_index
from .._stats import Slice
from .jobs import Chunk, Job, Run
from .memory import Memory
from .tuning import ITEM_TIMES_KEPT, MAX_STARTUP_FAILURES


class Scheduler(Memory):
    """The state of a pool's workers and maps, driven by events.

    ``workers`` is the pool size. What workers are running comes with the
    events (see ``BeaconReading``). ``item_beacon=False`` says the beacon
    cannot tell which item of a chunk is running (an executor's or dask's
    future runs a whole chunk): maps with a timeout then get one item per
    chunk, unless they set ``chunksize``, so that timeouts stay per item.
    ``can_kill=False``: a timed-out item is abandoned, not stopped.
    ``prefetch``: workers read their chunks in order, so a busy one may be
    sent its next; ``backlogged(wid)`` says when one has too much to read
    for that. ``memory_limit`` is ``max_memory_per_worker`` in bytes.
    """

    def handle(self, event: Event) -> None:
        """Take one event from the engine (see ``_events``)."""
        if isinstance(event, Batch):
            self.on_batch(
                event.wid, event.values, event.errors, event.busy, event.now, event.slices
            )
        elif isinstance(event, Encoded):
            self.on_encoded(event.items, event.weight)
        elif isinstance(event, Tick):
            self.on_time(event.now, event.beacons)
        elif isinstance(event, Ready):
            self.on_ready(event.wid, event.now)
        elif isinstance(event, Exited):
            self.on_exit(event.wid, event.exitcode, event.now, event.beacon, event.hint)
        elif isinstance(event, Drained):
            self.resume(event.now)
        elif isinstance(event, Measured):
            self.on_memory(event.rss, event.now, event.beacons)
        elif isinstance(event, Started):
            self.on_spawned(event.wid, event.now)
        elif isinstance(event, Unpicklable):
            self.on_unpicklable(event.errors)
        elif isinstance(event, SpawnFailed):
            self.on_spawn_failed(event.wid, event.error)
        elif isinstance(event, InitFailed):
            self.on_init_failed(event.wid, event.error)
        else:
            self.on_undecodable(event.wid, event.error, event.now)

    def resume(self, now: float) -> None:
        """A worker's backlog cleared: it may be sent work ahead of time again."""
        self._dispatch(now)

    # ------------------------------------------------------------- lifecycle
    def on_spawned(self, wid: int, now: float) -> None:
        """Worker ``wid``'s process was started at ``now`` (its start-up clock runs)."""
        slot = self.slots.get(wid)
        if slot is not None and slot.spawned_at is None:
            slot.spawned_at = now

    def on_ready(self, wid: int, now: float | None = None) -> None:
        """Worker ``wid`` started and ran its initializer."""
        slot = self.slots.get(wid)
        if slot is not None:
            slot.ready = True
            self._startup_failures = 0
            if now is not None:
                self._now = now
                self._dispatch(now)

    def on_init_failed(self, wid: int, error: BaseException) -> None:
        """A worker's initializer raised: the pool cannot run anything."""
        add_note(error, "parmap: raised by the worker initializer; the pool is unusable")
        self._break(error)

    def on_spawn_failed(self, wid: int, error: BaseException) -> None:
        """Starting a worker raised in the parent: the pool cannot run anything."""
        slot = self.slots.pop(wid, None)
        self._tasks.pop(wid, None)
        if slot is not None:
            self._break(error)

    def on_exit(
        self,
        wid: int,
        exitcode: int | None,
        now: float,
        beacon: BeaconReading = None,
        hint: str | None = None,
    ) -> None:
        """Worker ``wid`` died (its outcomes were all read before this call).

        ``beacon`` is what it was running when it died; ``hint`` is the
        backend's guess at why, for the item's error (e.g. the OOM killer,
        for a SIGKILL that parmap did not send).
        """
        self._now = now
        slot = self.slots.get(wid)
        if slot is None:
            return
        if not slot.ready:
            self._startup_failures += 1
        chunk = self._remove_slot(slot, Kill(wid))
        if chunk is not None and not slot.ready:
            # It died before running anything: not the fault of its inputs.
            self._requeue(chunk, chunk.done, len(chunk.args))
            chunk = None
        if self._startup_failures >= MAX_STARTUP_FAILURES:
            self._break(
                RuntimeError(
                    f"worker processes keep dying while starting (last: exit status {exitcode}); "
                    "with the 'spawn' or 'forkserver' start method the main module must be "
                    "importable and guarded by `if __name__ == '__main__':`"
                )
            )
            return
        if chunk is not None:
            running = slot.running(beacon, chunk)
            self._blame(chunk, slot, running, lambda i: WorkerCrashedError(i, exitcode, hint))
        self._dispatch(now)

    # -------------------------------------------------------------- outcomes
    def on_batch(
        self,
        wid: int,
        values: list[Any],
        errors: dict[int, BaseException] | None,
        busy: float,
        now: float,
        slices: list[Slice] | None = None,
    ) -> None:
        """Worker ``wid`` reports the next ``len(values)`` outcomes of its chunk.

        ``errors`` maps positions in ``values`` to the exception of that item;
        ``busy`` is the time the worker spent running these items, and
        ``slices`` when (``(t0, t1, count)``) where the backend knows it.
        """
        self._now = now
        slot = self.slots.get(wid)
        if slot is None or slot.chunk is None or not values:
            return
        chunk = slot.chunk
        job = chunk.job
        count = len(values)
        first = chunk.done
        slot.reported += count
        slot.clock.progressed(now)
        self._tasks[wid] += count
        chunk.done += count
        job.running -= count
        if chunk.done >= len(chunk.args):
            # Free the worker first: if these outcomes stop the job, this
            # worker has nothing left to kill. It runs its queued chunk next.
            slot.chunk = slot.next_queued()
            self._chunk_finished(slot)
        job.stats.batch(wid, chunk.start + first, count, errors, busy, slices, now)
        if not job.closed:
            # A failed position may yet be retried: it counts when it is final.
            job.stats.succeeded += count - (len(errors) if errors else 0)
            self._learn_time(job, busy / count)
            if not errors:
                job._emit(chunk.start + first, values, None)
            else:
                self._emit_with_errors(job, chunk, first, values, errors)
        used_up = self._max_tasks is not None and self._tasks.get(wid, 0) >= self._max_tasks
        if used_up and slot.chunk is None and wid in self.slots:
            self._remove_slot(slot, Retire(wid))
        self._dispatch(now)

    def _learn_time(self, job: Job, estimate: float) -> None:
        # The map's item time sizes its chunks; the pool remembers it for a
        # later map of the same function.
        job.item_time = estimate if job.item_time is None else 0.5 * job.item_time + 0.5 * estimate
        times = self._item_times
        if job.fn_key not in times and len(times) >= ITEM_TIMES_KEPT:
            del times[next(iter(times))]
        times[job.fn_key] = job.item_time

    def _emit_with_errors(
        self,
        job: Job,
        chunk: Chunk,
        first: int,
        values: list[Any],
        errors: dict[int, BaseException],
    ) -> None:
        base = chunk.start + first
        seg_from = 0
        seg_errors: dict[int, BaseException] = {}
        for pos in sorted(errors):
            index = base + pos
            error = mark_index(errors[pos], index)
            if self._should_retry(job, chunk.attempt, error, task_raised=True):
                job.stats.retried += 1
                job._emit(base + seg_from, values[seg_from:pos], seg_errors or None)
                seg_from, seg_errors = pos + 1, {}
                job.pending.appendleft(
                    Run(index, [chunk.args[first + pos]], chunk.attempt + 1, True)
                )
                continue
            job.failures += 1
            job.stats.failure(error)
            if job.config.on_error == "raise":
                job._emit(base + seg_from, values[seg_from:pos], seg_errors or None)
                self._abort(job, error)
                return
            values[pos] = None
            seg_errors[index] = error
        job._emit(base + seg_from, values[seg_from:], seg_errors or None)

    def on_undecodable(self, wid: int, error: BaseException, now: float) -> None:
        """Worker ``wid`` could not unpickle its chunk; it ran none of it.

        A lone input fails with the reason; a longer chunk is sent again one
        input at a time, so that only the inputs at fault fail.
        """
        self._now = now
        slot = self.slots.get(wid)
        if slot is None or slot.chunk is None:
            return
        chunk = slot.chunk
        slot.chunk = slot.next_queued()  # the worker goes on with its queue
        job = chunk.job
        job.running -= len(chunk.args) - chunk.done
        slot.sent_jobs.pop(job.id, None)  # send its function again, to be sure
        remaining = len(chunk.args) - chunk.done
        if remaining == 1:
            index = chunk.start + chunk.done
            failure = PicklingError(
                f"input {index} could not be unpickled in the worker "
                f"({type(error).__name__}: {error})"
            )
            failure.__cause__ = error
            self._fail(
                job, index, chunk.attempt, chunk.args[chunk.done], failure, task_raised=False
            )
        else:
            self._requeue(chunk, chunk.done, len(chunk.args), solo=True)
        self._dispatch(now)

    # --------------------------------------------------------------- closing
    def close(self) -> None:
        """Stop every worker: idle ones gracefully, busy ones by force."""
        self.closing = True
        for job in list(self.jobs):
            self._abort(job, job.error or RuntimeError("the pool was closed while this map ran"))
        self.jobs.clear()
        for slot in list(self.slots.values()):
            # A worker still starting cannot read "stop" yet: kill it too.
            idle = slot.chunk is None and (slot.ready or not self._ready_first)
            self._remove_slot(slot, Retire(slot.wid) if idle else Kill(slot.wid))

    def charge(self, seconds: float) -> None:
        """The parent spent ``seconds`` of its own on the running maps (MapStats)."""
        for job in self.jobs:
            job.stats.parent += seconds
