"""Deadlines, and blaming the item a worker was running when it was lost.

A map's ``timeout`` is per item. Each slot's ``Clock`` holds the earliest
time its running item's deadline can be; when it passes (``next_deadline``),
the engine reads the beacons ``beacons_wanted`` names and reports a ``Tick``:
``on_time`` then finds the item running (``Slot.running``) and either moves
the deadline to that item's start or kills the worker and fails the item
with ``TaskTimeoutError``. Deadlines are never early, and at most a few
milliseconds late. ``_blame`` names the item a lost worker (a crash, a memory
kill) was running, from the beacon read when it was lost.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

from .._events import BeaconReading, Kill
from .._results import TaskTimeoutError
from .._stats import TIMED_OUT, failure_kind
from .dispatch import Dispatch
from .jobs import Chunk
from .slots import Running, Slot
from .tuning import START_TIMEOUT


class Deadlines(Dispatch):
    """What time passing does to a pool."""

    def next_deadline(self) -> float | None:
        """When ``on_time`` must be called next (a deadline, a memory reading, a job's
        alarm), or ``None``."""
        best: float | None = None
        for job in self.jobs:
            if job.alarm is not None and (best is None or job.alarm < best):
                best = job.alarm
        for slot in self.slots.values():
            if self._ready_first and not slot.ready and slot.spawned_at is not None:
                deadline = slot.spawned_at + START_TIMEOUT
                if best is None or deadline < best:
                    best = deadline
            chunk = slot.chunk
            if chunk is not None and slot.mem_at < (best if best is not None else math.inf):
                best = slot.mem_at
            if chunk is not None and chunk.job.config.timeout is not None:
                deadline = slot.clock.deadline(chunk.job.config.timeout)
                if best is None or deadline < best:
                    best = deadline
        return best

    def beacons_wanted(self, now: float) -> list[int]:
        """Workers whose beacon ``on_time(now)`` reads (the engine reads them for it)."""
        wanted = []
        for wid, slot in self.slots.items():
            chunk = slot.chunk
            timeout = None if chunk is None else chunk.job.config.timeout
            if timeout is not None and slot.clock.looks(timeout, now):
                wanted.append(wid)
        return wanted

    def on_time(self, now: float, beacons: Mapping[int, BeaconReading] | None = None) -> None:
        """Check deadlines: kill workers whose current item ran out of time.

        ``beacons`` holds the readings of ``beacons_wanted(now)``, taken at ``now``.
        """
        beacons = {} if beacons is None else beacons
        self._now = now
        for slot in list(self.slots.values()):
            if slot.wid not in self.slots:
                continue
            if (
                self._ready_first
                and not slot.ready
                and slot.spawned_at is not None
                and now - slot.spawned_at >= START_TIMEOUT
            ):
                self._break(
                    RuntimeError(
                        f"a worker did not finish starting within {START_TIMEOUT:g} s (its "
                        "initializer has not returned, or the process is stuck importing); "
                        "the pool is unusable"
                    )
                )
                return
            chunk = slot.chunk
            timeout = None if chunk is None else chunk.job.config.timeout
            if chunk is not None and timeout is not None and slot.clock.looks(timeout, now):
                self._check_item(slot, chunk, timeout, beacons.get(slot.wid), now)
        self._dispatch(now)

    def _check_item(
        self, slot: Slot, chunk: Chunk, timeout: float, reading: BeaconReading, now: float
    ) -> None:
        """Kill ``slot``'s worker if the item ``reading`` says it runs is out of time."""
        clock = slot.clock
        due = clock.due(timeout, now)
        clock.polled(now, again=len(chunk.args) - chunk.done > 1)
        running = slot.running(reading, chunk)
        # (A worker not ready yet is starting up, which has a bound of its own.)
        idle = reading is not None and running.since is None
        if due and slot.ready and idle and clock.stalled(timeout, now):
            # No item runs, and none has for a whole timeout: the worker
            # is stuck unpickling, pickling or stopped.
            self._time_out_between_items(slot, chunk, running.started, timeout)
            return
        if running.since is None:
            # A torn read, or no item running right now (the worker is
            # starting, or sending results): look again shortly.
            if due:
                clock.recheck(timeout, now)
            return
        started_by = clock.started_by(running, now)
        if started_by + timeout > now:
            clock.since = started_by  # the item's own deadline is later
            return
        if running.pos is None:
            clock.recheck(timeout, now)
            return
        if self._remove_slot(slot, Kill(slot.wid)) is chunk:
            self._time_out(slot, chunk, running.pos, timeout, started_by, now)

    def _time_out(
        self, slot: Slot, chunk: Chunk, pos: int, timeout: float, since: float, now: float
    ) -> None:
        """Item ``pos`` of ``chunk`` (its worker killed) failed its deadline."""
        index = chunk.start + pos
        self._requeue(chunk, pos + 1, len(chunk.args))
        chunk.job.stats.lost(slot.wid, index, since, now, TIMED_OUT)
        self._fail(
            chunk.job,
            index,
            chunk.attempt,
            chunk.args[pos],
            TaskTimeoutError(index, timeout, self.can_kill),
            task_raised=False,
        )
        # The items before it finished, but their outcomes died with the worker.
        self._requeue(chunk, chunk.done, pos)

    def _time_out_between_items(
        self, slot: Slot, chunk: Chunk, started: int, timeout: float
    ) -> None:
        """Kill a worker that made no progress for a timeout outside any item.

        The items it finished but did not report (their results are being
        pickled), or, if none, the item it has not begun (its arguments are
        being unpickled): when that is one item, it fails with
        ``TaskTimeoutError``; with several, each runs again alone, so that
        the next stall names its culprit.
        """
        if self._remove_slot(slot, Kill(slot.wid)) is None:
            return
        unreported = max(0, started - slot.reported)
        remaining = len(chunk.args) - chunk.done
        suspects = unreported if unreported else remaining
        if suspects != 1:
            self._requeue(chunk, chunk.done, len(chunk.args), solo=True)
            return
        self._time_out(slot, chunk, chunk.done, timeout, slot.clock.progress_at, self._now)

    def _blame(
        self,
        chunk: Chunk,
        slot: Slot,
        running: Running,
        make: Callable[[int], BaseException],
    ) -> None:
        """Fail the item of ``chunk`` that was ``running`` when the worker was lost."""
        pos = running.pos
        if pos is None:
            if len(chunk.args) - chunk.done != 1:
                # We cannot tell which item killed it: send each one alone, so
                # that the next death names its culprit.
                self._requeue(chunk, chunk.done, len(chunk.args), solo=True)
                return
            pos = chunk.done
        self._requeue(chunk, pos + 1, len(chunk.args))
        index = chunk.start + pos
        error = make(index)
        since = running.since
        if since is None or since == math.inf:
            since = slot.clock.since
        chunk.job.stats.lost(slot.wid, index, since, self._now, failure_kind(error))
        self._fail(chunk.job, index, chunk.attempt, chunk.args[pos], error, task_raised=False)
        # Items before the culprit finished but their outcomes died with the
        # worker: run them again.
        self._requeue(chunk, chunk.done, pos)
