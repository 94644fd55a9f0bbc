"""What a map spent its time on: the recorder the scheduler feeds, and ``MapStats``.

Collection is always on, so it must cost next to nothing per item. Workers
read the clock once per *slice* (a run of items taking about a millisecond,
see ``process_worker``) and send ``(t0, t1, count)`` per slice with each
batch of outcomes; the parent keeps one record per slice, never one per item.
Per-item times derive from them: exact for a slice of one item (which every
item of a millisecond or more gets), the slice's mean for tiny items.
``min``, ``max``, ``total`` and ``slowest`` are kept exactly as slices
arrive; ``median`` and ``p95`` come from a histogram of 1%-wide buckets; the
bars kept for the timeline are merged when they grow too many (``MAX_BARS``),
so that memory stays bounded on an endless ``imap``.

Worker and parent times are comparable: ``time.monotonic`` is system-wide.
"""

from __future__ import annotations

import heapq
import math
import os
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

#: A private switch for the benchmark that prices collection (``benchmarks/run.py``).
ENABLED = True
#: Bars a map keeps at most: beyond, neighbours finer than a quarter of the
#: timeline's pixel are merged, so that an endless ``imap`` stays in bounds.
MAX_BARS = 100_000
#: The timeline's width in pixels, which compaction must stay finer than.
PIXELS = 960
#: Candidates kept for ``slowest`` (more than five: retries repeat an index).
TOP = 16
#: Buckets per unit of log(seconds): quantiles are within 1%.
BUCKETS = 100
ZERO = -(1 << 62)  # the bucket of items that took no measurable time

OK, RAISED, TIMED_OUT, CRASHED, MEMORY = "succeeded", "raised", "timed_out", "crashed", "memory"

Slice = tuple[float, float, int]
"""A worker's ``(t0, t1, count)``: ``count`` consecutive items ran from t0 to t1."""

Bar = tuple[int, float, float, int, int, str]
"""One drawn run of items: ``(lane, t0, t1, first_index, count, outcome)``."""

Mark = tuple[int, float, str]
"""An event on a lane: ``(lane, time, "kill" | "spawn")``."""


def cpu() -> float:
    """The calling thread's CPU time (0 while collection is off, see ``ENABLED``)."""
    return time.thread_time() if ENABLED else 0.0


def failure_kind(error: BaseException) -> str:
    """Classify a final failure: raised, timed out, crashed, or out of memory."""
    from ._results import TaskTimeoutError, WorkerCrashedError

    if isinstance(error, TaskTimeoutError):
        return TIMED_OUT
    if isinstance(error, WorkerCrashedError):
        # WorkerMemoryError (a WorkerCrashedError) is recognised by name, so
        # that this module needs no import of it.
        if any(cls.__name__ == "WorkerMemoryError" for cls in type(error).__mro__):
            return MEMORY
        return CRASHED
    return RAISED


class Recorder:
    """Collects one map's figures as the scheduler sees its events."""

    __slots__ = (
        "_hist",
        "_lanes",
        "_limit",
        "_live",
        "_max",
        "_min",
        "_top",
        "bars",
        "busy",
        "ended",
        "failures",
        "marks",
        "parent",
        "replaced",
        "retried",
        "started",
        "succeeded",
        "t0",
    )

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.ended: float | None = None
        self.bars: list[Bar] = []
        self.marks: list[Mark] = []
        self.busy = 0.0
        self.failures: dict[str, int] = {RAISED: 0, TIMED_OUT: 0, CRASHED: 0, MEMORY: 0}
        self.retried = 0
        self.succeeded = 0
        self.started = 0
        self.replaced = 0
        self.parent = 0.0
        # Worker id -> lane (kept after the worker is gone: its last item may
        # be recorded after it), and the lanes of live workers.
        self._lanes: dict[int, int] = {}
        self._live: set[int] = set()
        # Exact per-item figures, kept as slices arrive (bars may be merged).
        self._min = math.inf
        self._max = 0.0
        self._top: list[tuple[float, int]] = []  # a min-heap of (seconds, index)
        self._limit = MAX_BARS  # compact beyond this many bars
        # Items per 1%-wide bucket of log(seconds), for median and p95.
        self._hist: dict[int, int] = {}

    def lane(self, wid: int) -> int:
        """The lane of worker ``wid``: the lowest one no live worker holds, so a
        replacement takes its predecessor's."""
        lane = self._lanes.get(wid)
        if lane is None:
            lane = 0
            while lane in self._live:
                lane += 1
            self._lanes[wid] = lane
            self._live.add(lane)
        return lane

    def batch(
        self,
        wid: int,
        first: int,
        count: int,
        errors: Collection[int] | None,
        busy: float,
        slices: list[Slice] | None,
        now: float,
    ) -> None:
        """Outcomes ``first .. first+count-1`` came from worker ``wid``.

        ``errors`` (positions in the batch) fail their items; without
        ``slices`` (backends that report a batch as a whole) the batch is one
        slice ending now.
        """
        if not ENABLED:
            return
        lane = self.lane(wid)
        if slices is None:
            slices = [(now - busy, now, count)]
        pos = 0
        for t0, t1, n in slices:
            self.busy += t1 - t0
            self._timed((t1 - t0) / n, first + pos, n)
            if errors and any(pos <= e < pos + n for e in errors):
                self._split(lane, t0, t1, first + pos, n, [e - pos for e in errors])
            else:
                self.bars.append((lane, t0, t1, first + pos, n, OK))
            pos += n
        if len(self.bars) > self._limit:
            self._compact()

    def _timed(self, seconds: float, index: int, n: int) -> None:
        """``n`` items took ``seconds`` each, the first of them being ``index``."""
        key = math.floor(math.log(seconds) * BUCKETS) if seconds > 0 else ZERO
        self._hist[key] = self._hist.get(key, 0) + n
        if seconds < self._min:
            self._min = seconds
        if seconds > self._max:
            self._max = seconds
        top = self._top
        if len(top) < TOP:
            heapq.heappush(top, (seconds, index))
        elif seconds > top[0][0]:
            heapq.heapreplace(top, (seconds, index))

    def _compact(self) -> None:
        """Merge neighbouring bars (same lane and outcome) finer than a quarter
        pixel of the timeline, coarser each round until few enough remain.

        Merged bars keep their items' count and mean time; ``min``, ``max``,
        ``total`` and ``slowest`` are kept exactly apart from them. Bars of
        different outcomes never merge, so failures interleaved with
        successes keep theirs (memory then grows with the failures only).
        """
        bars = sorted(self.bars, key=lambda b: (b[0], b[1]))
        span = max(b[2] for b in bars) - self.t0
        resolution = max(span / (4 * PIXELS), 1e-9)
        while len(bars) > MAX_BARS // 2 and resolution <= 2 * span:
            merged: list[Bar] = []
            for bar in bars:
                if merged:
                    lane, t0, _, first, count, outcome = merged[-1]
                    if lane == bar[0] and outcome == bar[5] and bar[2] - t0 <= resolution:
                        merged[-1] = (lane, t0, bar[2], min(first, bar[3]), count + bar[4], outcome)
                        continue
                merged.append(bar)
            bars = merged
            resolution *= 2
        self.bars = bars
        # Bars that would not merge (interleaved failures) must not make
        # every batch compact again.
        self._limit = max(MAX_BARS, 2 * len(bars))

    def _split(
        self, lane: int, t0: float, t1: float, first: int, n: int, failed: list[int]
    ) -> None:
        """A slice with failures: runs of successes and a bar per failure, each
        item taking the slice's mean (a raise ends a slice, so its item is
        usually the last, alone)."""
        each = (t1 - t0) / n
        start = 0
        for pos in sorted(p for p in failed if 0 <= p < n):
            if pos > start:
                self.bars.append(
                    (lane, t0 + start * each, t0 + pos * each, first + start, pos - start, OK)
                )
            self.bars.append((lane, t0 + pos * each, t0 + (pos + 1) * each, first + pos, 1, RAISED))
            start = pos + 1
        if start < n:
            self.bars.append((lane, t0 + start * each, t1, first + start, n - start, OK))

    def lost(self, wid: int, index: int, since: float, now: float, kind: str) -> None:
        """Worker ``wid`` was killed or died running item ``index`` (started by ``since``)."""
        if not ENABLED:
            return
        known = wid in self._lanes
        lane = self.lane(wid)
        if not known:
            self._live.discard(lane)  # the worker is gone already
        self.bars.append((lane, min(since, now), now, index, 1, kind))

    def gone(self, wid: int, *, killed: bool) -> None:
        """Worker ``wid`` stopped; a killed one is marked on its lane.

        Marks are dated here: the scheduler's latest event time may be stale
        when a map is cancelled or a pool starts.
        """
        lane = self._lanes.get(wid)
        if lane is None:
            return
        self._live.discard(lane)
        if killed and ENABLED:
            self.marks.append((lane, time.monotonic(), "kill"))

    def spawned(self, wid: int, *, replacement: bool) -> None:
        """Worker ``wid`` was started while this map ran."""
        self.started += 1
        lane = self.lane(wid)
        if replacement:
            self.replaced += 1
            if ENABLED:
                self.marks.append((lane, time.monotonic(), "spawn"))

    def _quantile(self, q: float) -> float:
        """The nearest-rank quantile ``q`` of the item times (within 1%)."""
        hist = self._hist
        rank = max(1, math.ceil(q * sum(hist.values())))
        seen = 0
        for key in sorted(hist):
            seen += hist[key]
            if seen >= rank:
                if key == ZERO:
                    return 0.0
                # The bucket's middle, but never outside what was seen.
                return min(max(math.exp((key + 0.5) / BUCKETS), self._min), self._max)
        return 0.0

    def failure(self, error: BaseException) -> None:
        """An item failed for good (after its retries)."""
        self.failures[failure_kind(error)] += 1

    def snapshot(self, *, workers: int, resumed: int = 0) -> MapStats:
        """Freeze what was recorded (the map's end is now, unless recorded)."""
        end = self.ended if self.ended is not None else time.monotonic()
        wall = max(end - self.t0, 0.0)
        failed = sum(self.failures.values())
        # Five distinct items: a retried item's attempts count once, at its slowest.
        slowest: dict[int, float] = {}
        for seconds, index in sorted(self._top, reverse=True):
            if len(slowest) < 5:
                slowest.setdefault(index, seconds)
        return MapStats(
            wall=wall,
            items=self.succeeded + resumed + failed,
            succeeded=self.succeeded + resumed,
            failed=failed,
            raised=self.failures[RAISED],
            timed_out=self.failures[TIMED_OUT],
            crashed=self.failures[CRASHED],
            memory=self.failures[MEMORY],
            retried=self.retried,
            resumed=resumed,
            workers=workers,
            workers_started=self.started,
            workers_replaced=self.replaced,
            parent_seconds=self.parent,
            utilization=min(1.0, self.busy / (workers * wall)) if workers and wall > 0 else 0.0,
            min=self._min if self._hist else 0.0,
            max=self._max,
            total=self.busy,
            slowest=tuple(slowest.items()),
            median=self._quantile(0.5),
            p95=self._quantile(0.95),
            _bars=tuple(self.bars),
            _marks=tuple(self.marks),
            _t0=self.t0,
        )


@dataclass(frozen=True, slots=True)
class MapStats:
    """What a map spent its time on; ``MapResult.stats`` and ``.stats`` of a
    finished ``imap``/``aimap`` iterator.

    Times are seconds. ``min`` … ``total`` are item run times measured in the
    worker around the call (items that timed out or crashed have none);
    ``slowest`` holds the five slowest items as ``(index, seconds)``.
    ``utilization`` is the workers' busy time over ``workers * wall``;
    ``parent_seconds`` the parent's own CPU time pickling, unpickling and
    scheduling for this map. ``resumed`` counts the inputs a checkpoint
    gave back without running them (they count as succeeded too).
    """

    wall: float = 0.0
    items: int = 0
    succeeded: int = 0
    failed: int = 0
    raised: int = 0
    timed_out: int = 0
    crashed: int = 0
    memory: int = 0
    retried: int = 0
    resumed: int = 0
    workers: int = 0
    workers_started: int = 0
    workers_replaced: int = 0
    min: float = 0.0
    median: float = 0.0
    p95: float = 0.0
    max: float = 0.0
    total: float = 0.0
    slowest: tuple[tuple[int, float], ...] = ()
    utilization: float = 0.0
    parent_seconds: float = 0.0
    _bars: tuple[Bar, ...] = field(default=(), repr=False, compare=False)
    _marks: tuple[Mark, ...] = field(default=(), repr=False, compare=False)
    _t0: float = field(default=0.0, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The figures as plain JSON-ready values (``slowest`` as lists)."""
        out: dict[str, Any] = {}
        for name in _PUBLIC:
            value = getattr(self, name)
            out[name] = [list(pair) for pair in value] if name == "slowest" else value
        return out

    def timeline(self, path: str | os.PathLike[str]) -> None:
        """Write an SVG: one lane per worker over time, each item a bar by outcome."""
        from ._timeline import render

        svg = render(self._bars, self._marks, self._t0, self.wall)
        with open(path, "w", encoding="utf-8") as f:
            f.write(svg)

    def __str__(self) -> str:
        s = self
        rows = [
            ("wall", f"{s.wall:.3f} s"),
            (
                "items",
                f"{s.items}: {s.succeeded} succeeded, {s.failed} failed "
                f"(raised {s.raised}, timed out {s.timed_out}, crashed {s.crashed}, "
                f"memory {s.memory})",
            ),
            ("retried", f"{s.retried}   resumed {s.resumed}"),
            (
                "workers",
                f"{s.workers}: {s.workers_started} started, {s.workers_replaced} replaced",
            ),
            (
                "item time",
                f"min {_secs(s.min)}  median {_secs(s.median)}  p95 {_secs(s.p95)}  "
                f"max {_secs(s.max)}  total {_secs(s.total)}",
            ),
            ("slowest", "  ".join(f"#{i} {_secs(t)}" for i, t in s.slowest) or "-"),
            ("utilization", f"{s.utilization:.0%}"),
            ("parent", f"{_secs(s.parent_seconds)} (pickling, unpickling, scheduling)"),
        ]
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {text}" for name, text in rows)


_PUBLIC = tuple(name for name in MapStats.__dataclass_fields__ if not name.startswith("_"))


def _secs(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    if seconds >= 1e-5:
        return f"{seconds * 1e6:.0f} µs"
    return f"{seconds * 1e6:.2f} µs"
