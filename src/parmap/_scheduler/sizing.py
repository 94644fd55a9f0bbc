"""How many inputs go in a chunk: from a map's item times and weights, its tail,
and, in pools with a memory limit, the room its worker has left."""

from __future__ import annotations

import math

from .._stats import TIMED_OUT
from .jobs import Job
from .slots import Slot
from .tuning import (
    FIRST_CHUNK_ITEMS,
    MAX_CHUNK_BYTES,
    MAX_CHUNK_ITEMS,
    MAX_QUEUED,
    MAX_WINDOW_ITEMS,
    PREFETCH_ITEM_SECONDS,
    QUEUE_SECONDS,
    RECYCLE_FRACTION,
    TAIL_FLOOR_SECONDS,
    TAIL_SHARES,
    TARGET_CHUNK_SECONDS,
    TIMED_PREFETCH_AFTER,
)


def chunk_size(job: Job, workers: int, *, item_beacon: bool, cap_by_total: bool = True) -> int:
    """The size of ``job``'s next chunk, before its tail and its worker are considered.

    ``item_beacon=False``: the backend cannot tell which item of a chunk runs,
    so a map with a timeout gets one item per chunk (unless it set
    ``chunksize``), and its timeouts stay per item.
    """
    if job.config.chunksize is not None:
        if job.config.buffer is not None:
            return job.config.chunksize
        # Without ``buffer`` the read-ahead window (two chunks per worker)
        # stays within MAX_WINDOW_ITEMS also for an explicit chunksize:
        # a larger one is cut down, never the window let grow with it.
        return max(1, min(job.config.chunksize, MAX_WINDOW_ITEMS // (2 * workers)))
    if job.config.timeout is not None and not item_beacon:
        return 1
    if job.item_time is None:
        return 1
    size = TARGET_CHUNK_SECONDS / max(job.item_time, 1e-9)
    if job.item_bytes:
        size = min(size, MAX_CHUNK_BYTES / job.item_bytes)
    if job.config.buffer is None:
        size = min(size, MAX_WINDOW_ITEMS // (2 * workers))
    # Fast items: one round per worker is best; never more than an even
    # share, so that no worker idles while another has a backlog. Unless the
    # whole map is less work than a round trip: then waking a second worker
    # only adds a message each way to its latency.
    if cap_by_total and job.total is not None and job.total * job.item_time >= TAIL_FLOOR_SECONDS:
        size = min(size, math.ceil(job.total / workers))
    return max(1, min(int(size), MAX_CHUNK_ITEMS))


def may_prefetch(job: Job) -> bool:
    """Whether a chunk of ``job`` may wait in a worker behind another."""
    if job.item_time is None or job.item_time >= PREFETCH_ITEM_SECONDS or job.closed:
        return False
    if job.config.timeout is None:
        return True
    stats = job.stats
    return stats.succeeded >= TIMED_PREFETCH_AFTER and not stats.failures[TIMED_OUT]


def queue_depth(job: Job, size: int) -> int:
    """How many chunks of ``size`` items of ``job`` may wait behind a running one."""
    if job.item_time is None:
        return 1
    return max(1, min(MAX_QUEUED, math.ceil(QUEUE_SECONDS / max(size * job.item_time, 1e-9))))


def prefetch_size(job: Job, size: int, workers: int, *, queue: bool) -> int:
    """Cut ``size`` for a map whose chunks are sent ahead (``may_prefetch``)."""
    if size <= FIRST_CHUNK_ITEMS:
        return size
    if not queue:
        # An idle worker starts at once on a small chunk; the full one
        # queued behind it travels while it runs.
        return FIRST_CHUNK_ITEMS
    if job.exhausted:
        # The tail of the map: smaller chunks, so that no worker still has a
        # queue when the others run dry.
        left = sum(len(r) for r in job.pending)
        return min(size, max(FIRST_CHUNK_ITEMS, left // (2 * workers)))
    return size


def tail_size(job: Job, size: int, workers: int) -> int:
    """Cut ``size`` at the tail of a map whose input is all known (guided scheduling).

    Never more than a share of what is left, so that a chunk that turns out
    slow, its items costing more than the estimate made from earlier ones,
    leaves no other worker idle for long; not below about a round trip's
    worth of work, which would cost more than the balance can save.
    """
    left = sum(len(r) for r in job.pending)
    floor = TAIL_FLOOR_SECONDS / max(job.item_time or 0.0, 1e-9)
    share = -(-left // (TAIL_SHARES * workers))
    return min(size, max(share, math.ceil(floor)))


def memory_room(slot: Slot, job: Job, limit: int, *, queue: bool = False) -> int:
    """How many items of ``job`` worker ``slot`` may run before it is measured again.

    At the map's worst growth per item, from the latest reading, the worker
    should stay below ``RECYCLE_FRACTION`` of ``limit``. An idle worker
    always gets one item; a chunk queued behind the running one (``queue``)
    must fit after what that one has left, or is not sent.
    """
    least = 0 if queue else 1
    growth = job.mem_growth
    if growth is None or slot.rss is None:
        return least  # nothing measured yet: one item, then look
    if growth <= 0:
        return MAX_CHUNK_ITEMS
    ahead = len(slot.chunk.args) - slot.chunk.done if queue and slot.chunk else 0
    room = int((RECYCLE_FRACTION * limit - slot.rss) / growth) - ahead
    return max(least, min(MAX_CHUNK_ITEMS, room))
