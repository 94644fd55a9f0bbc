"""One map on the pool (``Job``), its inputs waiting (``Run``) and sent (``Chunk``).

A job emits its outcomes as *segments* ``(start, values, errors)`` covering
contiguous input indexes, each index in exactly one segment; an ordered job
holds a segment back until every earlier index has been emitted.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from .._options import MapConfig
from .._stats import Recorder

Segment = tuple[int, list[Any], dict[int, BaseException] | None]


@dataclass(slots=True)
class Run:
    """Contiguous inputs waiting for a worker: ``args[offset:]`` start at ``start``."""

    start: int
    args: list[Any]
    attempt: int = 0
    solo: bool = False
    offset: int = 0

    def __len__(self) -> int:
        return len(self.args) - self.offset


@dataclass(slots=True)
class Chunk:
    """What a worker was sent: inputs ``start .. start+len(args)-1`` of ``job``."""

    job: Job
    start: int
    args: list[Any]
    attempt: int
    done: int = 0


class Job:
    """The state of one map on the pool."""

    def __init__(
        self,
        jid: int,
        config: MapConfig,
        *,
        fn_payload: object,
        star: bool,
        ordered: bool,
        total: int | None = None,
        fn_key: object = None,
    ) -> None:
        self.id = jid
        self.config = config
        self.fn_payload = fn_payload
        self.fn_key = fn_key
        self.star = star
        self.ordered = ordered
        self.total = total
        self.pending: deque[Run] = deque()
        self.pulled = 0
        self.exhausted = False
        self.running = 0
        self.consumed = 0
        self.completed = 0
        self.failures = 0
        self.ready: deque[Segment] = deque()
        self._held: dict[int, Segment] = {}
        self._next_emit = 0
        self.error: BaseException | None = None
        self.closed = False
        self.item_time: float | None = None
        self.item_bytes: float | None = None
        # Whether the engine reported what a chunk of this map weighs (even
        # if that is nothing it can tell), and whether a chunk sent before
        # that is still out: chunks sized by weight wait for it.
        self.weighed = False
        self.weighing = False
        # A checkpoint (see _resume) sets ``journal`` to receive every segment
        # as it is produced, before ordering holds any back, and ``alarm`` to
        # the time its driver must wake up (``next_deadline`` includes it).
        self.journal: deque[Segment] | None = None
        self.alarm: float | None = None
        self.resumed = 0
        # Pools with a memory limit: the most a chunk of this map has added
        # to its worker's memory, per item (bytes), once measured.
        self.mem_growth: float | None = None
        self.stats = Recorder()

    @property
    def finished(self) -> bool:
        """No more outcomes will be produced (the ready queue may still hold some)."""
        return self.closed or (self.exhausted and not self.pending and self.running == 0)

    @property
    def done(self) -> bool:
        """Finished, and the consumer has taken everything."""
        return self.finished and not self.ready

    def take(self) -> Segment | None:
        """Hand the next segment of outcomes to the consumer."""
        if not self.ready:
            return None
        seg = self.ready.popleft()
        self.consumed += len(seg[1])
        return seg

    def _emit(
        self,
        start: int,
        values: list[Any],
        errors: dict[int, BaseException] | None,
        *,
        record: bool = True,
    ) -> None:
        n = len(values)
        if not n:
            return
        self.completed += n
        seg: Segment = (start, values, errors)
        if record and self.journal is not None:
            self.journal.append(seg)
        if not self.ordered:
            self.ready.append(seg)
            return
        if start != self._next_emit:
            self._held[start] = seg
            return
        self.ready.append(seg)
        self._next_emit += n
        while self._next_emit in self._held:
            seg = self._held.pop(self._next_emit)
            self.ready.append(seg)
            self._next_emit += len(seg[1])

    def _emit_error(self, index: int, error: BaseException) -> None:
        self.failures += 1
        self.stats.failure(error)
        self._emit(index, [None], {index: error})
