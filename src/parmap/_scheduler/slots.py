"""The scheduler's view of one worker (``Slot``) and of its running item's deadline.

Outcomes arrive in batches, so what a worker runs, and since when, comes from
its *beacon* (see ``_events.BeaconReading``): ``Slot.running`` reads one, and
``Clock`` keeps what the deadline of the item running now is known to be.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from .._events import BeaconReading
from .jobs import Chunk, Job
from .tuning import POLL_SECONDS, RECHECK_SECONDS


@dataclass(slots=True)
class Clock:
    """When a worker's running item started, as far as we know, and when to look again.

    The item's deadline is ``since + timeout`` at the earliest: ``on_time``
    then reads the beacon and moves ``since`` to the item's start.
    """

    since: float = 0.0
    poll_at: float = math.inf  # when to read the beacon again (POLL_SECONDS)
    # The running item as we last saw it: its count, and when we first saw it.
    seen: int = -1
    seen_at: float = 0.0
    # The last time the running chunk showed progress (it was sent, outcomes
    # arrived): a worker that shows none for a whole timeout while no item
    # runs is stuck outside the task (unpickling its arguments, pickling a
    # result, stopped) and is timed out too.
    progress_at: float = 0.0
    # When the oldest queued chunk was sent: the earliest any of them can start.
    queued_at: float = 0.0

    def started(self, now: float, *, poll: bool) -> None:
        """A chunk was sent to the idle worker at ``now`` (``poll``: timed, several items)."""
        self.since = self.progress_at = now
        self.poll_at = now + POLL_SECONDS if poll else math.inf

    def queued(self, now: float, *, first: bool) -> None:
        """A chunk was sent at ``now`` to run after the current one (``first``:
        nothing else was queued). A later one keeps the earlier time, which
        still bounds the start of every chunk queued since."""
        if first:
            self.queued_at = now

    def next_chunk(self, *, poll: bool) -> None:
        """The worker went on to its next queued chunk, maybe well before now:
        only its sending time bounds its start (``poll``: timed, several items)."""
        self.since = self.queued_at
        self.poll_at = self.queued_at + POLL_SECONDS if poll else math.inf

    def progressed(self, now: float) -> None:
        """Outcomes arrived at ``now``.

        ``since`` stays: it is still a lower bound on when the running item
        started, and ``on_time`` moves it forward from the beacon. Setting it
        to ``now`` would push the deadline of an item already running later by
        however late its predecessors' outcomes arrived.
        """
        self.progress_at = now

    def deadline(self, timeout: float) -> float:
        """When to look at the worker next: its item's deadline, or a poll."""
        return min(self.since + timeout, self.poll_at)

    def due(self, timeout: float, now: float) -> bool:
        """Whether the running item's earliest deadline has passed."""
        return self.since + timeout <= now

    def looks(self, timeout: float, now: float) -> bool:
        """Whether ``on_time(now)`` reads the worker's beacon."""
        return self.since + timeout <= now or self.poll_at <= now

    def polled(self, now: float, *, again: bool) -> None:
        """The beacon is read at ``now``; with ``again``, read it once more soon."""
        self.poll_at = now + POLL_SECONDS if again else math.inf

    def recheck(self, timeout: float, now: float) -> None:
        """No item to blame was seen: look again shortly."""
        self.since = now - timeout + min(timeout, RECHECK_SECONDS)

    def started_by(self, running: Running, now: float) -> float:
        """A time by which the item ``running`` names had started.

        The item was running when we first saw it: that bounds its start
        when the beacon cannot (a deadline may be late, never early).
        """
        if running.started != self.seen:
            self.seen, self.seen_at = running.started, now
        assert running.since is not None
        return min(running.since, self.seen_at)

    def stalled(self, timeout: float, now: float) -> bool:
        """No progress for a whole timeout. The margin covers an item that began,
        unseen, after the last progress: its own life must have lasted a timeout too."""
        return now - self.progress_at >= timeout + POLL_SECONDS


@dataclass(frozen=True, slots=True)
class Running:
    """What a beacon reading says a worker runs (see ``Slot.running``)."""

    started: int  # items the worker has started since birth
    # The beacon's bound on the running item's start (``math.inf``: it cannot
    # tell); None when no item runs or the reading was torn.
    since: float | None
    pos: int | None  # that item's position in the worker's chunk, if it is one of it


@dataclass(slots=True)
class Slot:
    """The scheduler's view of one worker."""

    wid: int
    ready: bool = False
    chunk: Chunk | None = None
    # Chunks sent after ``chunk``, which the worker runs next, in order (prefetch).
    queue: deque[Chunk] = field(default_factory=deque)
    reported: int = 0  # items this worker reported since it started
    # A chunk carrying a map's function is not reported encoded yet: nothing
    # is queued behind it (the worker would have no function if it fails).
    sending_fn: bool = False
    clock: Clock = field(default_factory=Clock)
    # Jobs whose function this worker holds, oldest first: a mirror of the
    # worker's own cache, which forgets the oldest beyond FUNCTION_CACHE.
    sent_jobs: dict[int, None] = field(default_factory=dict)
    # Pools with a memory limit: when to read a busy worker's memory next,
    # and whether an idle one waits to be measured before its next chunk.
    mem_at: float = math.inf
    mem_check: bool = False
    rss: int | None = None  # the latest reading, busy or idle
    # Items started before the latest reading between chunks (or birth).
    measured_count: int = 0
    # What was sent since that reading: its job, how many items, from what.
    sent_job: Job | None = None
    sent_len: int = 0
    sent_rss: int | None = None
    # When the process started, once the backend says (``on_spawned``).
    spawned_at: float | None = None

    def next_queued(self) -> Chunk | None:
        """The chunk the worker goes on with once its running one is over."""
        chunk = self.queue.popleft() if self.queue else None
        if chunk is not None:
            timed = chunk.job.config.timeout is not None
            self.clock.next_chunk(poll=timed and len(chunk.args) > 1)
        return chunk

    def running(self, reading: BeaconReading, chunk: Chunk) -> Running:
        """Which item of ``chunk`` (the worker's, or taken from it as it died)
        ``reading`` says is running.

        Items the worker started but has not reported yet come before it in
        the chunk; a torn reading counts only what was reported.
        """
        if reading is None:
            return Running(self.reported, None, None)
        started, since = reading
        if since is None:
            return Running(started, since, None)
        pos = chunk.done + (started - self.reported) - 1
        return Running(started, since, pos if chunk.done <= pos < len(chunk.args) else None)
