"""Pools with ``max_memory_per_worker``: what the workers' memory readings do.

The parent reads its workers' resident memory when the scheduler asks for it
(``memory_due``), as a deadline like any other, so no thread samples
anything. A busy worker over the limit is killed, its item failing with
``WorkerMemoryError``; an idle one above ``RECYCLE_FRACTION`` of it is
retired and replaced, so that no item fails. A worker that runs out of work
is measured before it gets more, which teaches the map's worst growth per
item (``Job.mem_growth``), from which ``sizing.memory_room`` sizes its chunks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import partial

from .._events import BeaconReading, Kill, Retire
from .._results import WorkerMemoryError
from .deadlines import Deadlines
from .slots import Slot
from .tuning import MEMORY_POLL_SECONDS, RECYCLE_FRACTION


class Memory(Deadlines):
    """What memory readings do to a pool."""

    def memory_due(self, now: float) -> list[int]:
        """Workers whose resident memory ``on_memory`` wants now.

        Busy workers whose reading is due, and idle ones that just finished an
        item; empty for a pool without ``max_memory_per_worker``.
        """
        if self.memory_limit is None:
            return []
        return [
            slot.wid
            for slot in self.slots.values()
            if (slot.mem_at <= now if slot.chunk is not None else slot.mem_check)
        ]

    def _chunk_finished(self, slot: Slot) -> None:
        # The worker has nothing left to run: measure it before its next chunk.
        if self.memory_limit is not None and slot.chunk is None:
            slot.mem_check, slot.mem_at = True, math.inf

    @staticmethod
    def _measured(slot: Slot, rss: int | None) -> None:
        """A reading between chunks: learn what the last chunk added per item."""
        job, before = slot.sent_job, slot.sent_rss
        slot.rss, slot.sent_job, slot.measured_count = rss, None, slot.reported
        if rss is None or job is None or before is None or slot.sent_len <= 0:
            return
        growth = max(0, rss - before) / slot.sent_len
        job.mem_growth = growth if job.mem_growth is None else max(job.mem_growth, growth)

    def on_memory(
        self,
        readings: Mapping[int, int | None],
        now: float,
        beacons: Mapping[int, BeaconReading] | None = None,
    ) -> None:
        """Resident memory of workers, in bytes (``None``: could not be read),
        and their beacons read at the same time."""
        self._now = now
        limit = self.memory_limit
        if limit is None:
            return
        for wid, rss in readings.items():
            slot = self.slots.get(wid)
            if slot is None:
                continue
            if slot.chunk is None:
                if slot.mem_check:
                    self._idle_reading(slot, rss, limit)
                continue
            slot.mem_at = now + MEMORY_POLL_SECONDS
            if rss is not None:
                slot.rss = rss
            if rss is not None and rss > limit and slot.ready:
                self._over_limit(slot, rss, limit, None if beacons is None else beacons.get(wid))
        self._dispatch(now)

    def _idle_reading(self, slot: Slot, rss: int | None, limit: int) -> None:
        slot.mem_check = False
        self._measured(slot, rss)
        if rss is not None and rss > RECYCLE_FRACTION * limit:
            self.recycled += 1
            self._remove_slot(slot, Retire(slot.wid))

    def _over_limit(self, slot: Slot, rss: int, limit: int, reading: BeaconReading) -> None:
        """Busy ``slot``'s worker is over the limit: kill it, blame its item."""
        # The Kill is only queued: the beacon still says which item ran.
        chunk = self._remove_slot(slot, Kill(slot.wid))
        if chunk is None:
            return
        running = slot.running(reading, chunk)
        if running.started > slot.measured_count + 1:
            # Not the first item since the worker was last measured: the
            # items before it may have left the memory. Each runs again
            # alone, on a measured worker, so that only a real culprit fails.
            self._requeue(chunk, chunk.done, len(chunk.args), solo=True)
            return
        self._blame(chunk, slot, running, partial(WorkerMemoryError, limit=limit, rss=rss))
