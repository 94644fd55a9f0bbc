"""A process worker's beacon: what it runs and since when, in shared memory.

The worker writes it (``process_worker``), the parent reads it at any moment
(``ProcessBackend.beacon``) for per-item deadlines and crash blame, without
a message and without waiting for the worker.
"""

from __future__ import annotations

import math
import time
from typing import Any

from .._events import BeaconReading


class Beacon:
    """A worker's beacon: five numbers in shared memory, read by the parent.

    Reading the clock for every item would cost a map of tiny items a third
    of its speed, so the worker runs items in *slices* and reads it once per
    slice; per item it only stores a count. The slots:

    ``START``    start of the running slice (-1.0 between slices)
    ``STARTED``  items started since the worker was born (the running one included)
    ``FIRST``    the count of the slice's first item, whose start is ``START``
    ``STAMP``    a time by which item ``STAMPED`` had surely started (-1.0
                 while being written): while a timed chunk runs, the watch
                 thread stamps each item it sees running that is not the
                 first of its slice, within ``process_worker.STAMP_SECONDS``
    ``STAMPED``  the count that ``STAMP`` is about

    The running item's start time is therefore exact for the first item of a
    slice (items of a millisecond or more run one per slice), and otherwise
    known to within ``STAMP_SECONDS`` unless the item holds the GIL; the
    scheduler then falls back on when it first saw the item running. A
    deadline can be late by that much, never early.

    Each writer stores a time last (and invalidates it first), and the
    reader trusts only a reading whose two reads of that time agree.
    """

    SLOTS = 5
    START, STARTED, FIRST, STAMP, STAMPED = range(5)

    __slots__ = ("counts", "times")

    def __init__(self, shared: Any) -> None:
        raw = memoryview(shared).cast("B")
        # Times are doubles, counts int64s in the same slots (storing an int
        # through a "q" view is twice as fast as converting it into a double).
        self.times: memoryview[float] = raw.cast("d")
        self.counts: memoryview[int] = raw.cast("q")

    def reset(self) -> None:
        """Say "between items, nothing stamped" (the parent does this at spawn)."""
        self.times[self.START] = -1.0
        self.times[self.STAMP] = -1.0

    def read(self) -> BeaconReading:
        """What the worker is running, as the scheduler wants it (``BeaconReading``)."""
        times, counts = self.times, self.counts
        t1 = times[self.START]
        started = counts[self.STARTED]
        first = counts[self.FIRST]
        s1 = times[self.STAMP]
        stamped = counts[self.STAMPED]
        s2 = times[self.STAMP]
        if t1 != times[self.START]:
            return None  # a new slice began while we read
        if t1 < 0 or started < first:
            return (started, None)  # between items
        if started == first:
            return (started, t1)
        if stamped == started and s1 == s2 and s1 >= 0:
            return (started, s1)
        return (started, math.inf)

    def stamp(self, last: int) -> int:
        """Stamp the running item if it is new since ``last``; return the stamped count."""
        times, counts = self.times, self.counts
        t1 = times[self.START]
        started = counts[self.STARTED]
        first = counts[self.FIRST]
        if t1 != times[self.START] or t1 < 0 or started <= first or started == last:
            return last
        # Read after the count: the item had started by now.
        at = time.monotonic()
        times[self.STAMP] = -1.0
        counts[self.STAMPED] = started
        times[self.STAMP] = at
        return started
