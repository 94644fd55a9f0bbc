"""The I/O-free core of a pool: who runs what, deadlines, retries, ordering.

Theory of operation
-------------------
A ``Scheduler`` owns the state of one pool: its worker slots and the jobs
(maps) running on it. It never touches a pipe, a process or a clock. Drivers
call its event methods with the current monotonic time, and then carry out the
commands it queued (``Spawn``, ``Send``, ``Kill``, ``Retire``):

=====================  ==================================================
event                  what the scheduler does
=====================  ==================================================
``add_job`` / ``feed`` inputs join the job's pending runs; idle workers
                       are sent chunks.
``skip``               inputs a checkpoint already has take their indexes
                       and are emitted at once, unrun.
``on_ready``           a worker finished starting (its initializer ran).
``on_batch``           outcomes of the worker's current chunk, in order;
                       failures are retried or recorded; a finished chunk
                       frees the worker for the next one.
``on_exit``            a worker died: the item it was running fails with
                       ``WorkerCrashedError``; the rest of its chunk is
                       pending again; a replacement is spawned.
``on_time``            deadlines passed: the worker is killed, the item
                       fails with ``TaskTimeoutError``, the rest of its
                       chunk is pending again; a replacement is spawned.
``cancel``             the consumer went away: the job's workers are
                       killed and replaced; its pending inputs dropped.
``on_memory``          resident memory readings (pools with
                       ``max_memory_per_worker``): a busy worker over the
                       limit is killed, its item fails with
                       ``WorkerMemoryError``; an idle one over 75% of it is
                       retired and replaced.
=====================  ==================================================

Work moves in *runs* (contiguous inputs) and *chunks* (the slice of a run sent
to one worker), not item by item, so that a map of millions of tiny items costs
the parent a few list slices per chunk rather than objects per item. A worker
runs one chunk at a time and sends outcomes back in order, batched over a few
milliseconds. Which item inside a chunk is running, and since when, comes from
the worker's *beacon* (a few shared numbers the driver reads for us): that is
what keeps deadlines per item (never early, at most a few milliseconds late)
and crash blame exact even though outcomes are batched.

A pool with a memory limit reads its workers' memory in the parent, by
deadlines it asks for like any other (``memory_due`` names the workers to
read), so no thread samples anything. A worker that runs out of work is
measured before it gets more; and it is sent only as many items, in its chunk
and in one queued behind it, as the map's worst measured growth per item
(memory after a run of chunks minus before, per item) lets it run from its
latest reading before it would pass ``RECYCLE_FRACTION`` of the limit: one
item at a time for a map that leaks, full chunks sent ahead for one that
does not.

Outcomes leave as *segments* ``(start, values, errors)`` covering contiguous
input indexes; each input index is covered by exactly one segment.
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pickle import PicklingError
from typing import Any

from ._events import (
    Batch,
    BeaconReading,
    ChunkMessage,
    Command,
    Drained,
    Event,
    Exited,
    InitFailed,
    Kill,
    Measured,
    Ready,
    Retire,
    Send,
    Spawn,
    SpawnFailed,
    Started,
    Tick,
)
from ._options import MapConfig
from ._results import (
    TaskTimeoutError,
    WorkerCrashedError,
    WorkerMemoryError,
    add_note,
    mark_index,
)
from ._stats import TIMED_OUT, Recorder, Slice, failure_kind
from ._wire import Encoded

#: Aim for chunks that keep a worker busy this long: long enough to make the
#: round trip negligible, short enough to keep the tail of a map balanced.
TARGET_CHUNK_SECONDS = 0.02
#: Cap on what one chunk's pickled arguments may weigh.
MAX_CHUNK_BYTES = 4 << 20
MAX_CHUNK_ITEMS = 16_384
#: Cap on the inputs a map without ``buffer`` holds at once (pulled, not yet
#: consumed): a map of millions of tiny items must not buffer hundreds of
#: thousands of them. Chunks shrink so that every worker still gets two.
MAX_WINDOW_ITEMS = 65_536
#: Chunks per worker a map without ``buffer`` pulls ahead (within the cap):
#: one running, one queued behind it (prefetch), and one waiting in the
#: parent, so that a worker's queue is refilled as soon as its outcomes
#: arrive, not only once the consumer has taken them.
WINDOW_CHUNKS = 3
#: Consecutive workers that may die before reporting ready before the pool
#: is declared broken (rather than respawning forever).
MAX_STARTUP_FAILURES = 3
#: How many maps' functions a worker keeps (the scheduler mirrors its cache).
FUNCTION_CACHE = 64
#: How many functions' item times a pool remembers (for a later map's first
#: chunk size); beyond that the oldest is forgotten.
ITEM_TIMES_KEPT = 256
#: Exception types too broad to say "retry timeouts" or "retry crashes":
#: ``TaskTimeoutError`` is an ``OSError`` and ``WorkerCrashedError`` a
#: ``RuntimeError``, but ``retry_on=(OSError,)`` means the I/O errors a task
#: raises, not an item that hung (see ``Scheduler._should_retry``).
GENERIC_ERRORS: tuple[type[BaseException], ...] = (BaseException, Exception, OSError, RuntimeError)
#: A worker may be sent its next chunk while it runs the current one (so it
#: never waits for the parent between chunks) when the map has no timeout
#: (a queued chunk would wait behind an item that hangs until its deadline)
#: and its items take less than this: the tail of a map is then at most one
#: chunk of such items out of balance.
PREFETCH_ITEM_SECONDS = 0.001
FIRST_CHUNK_ITEMS = 1024
#: Once a map's input is all known, a chunk with automatic size takes at most
#: ``1 / (TAIL_SHARES * workers)`` of what is left to send.
TAIL_SHARES = 2
#: ... but it keeps at least this much estimated work.
TAIL_FLOOR_SECONDS = 0.0001
#: When a deadline passes but the beacon shows no item running, look again
#: after this long.
RECHECK_SECONDS = 0.02
#: How long a worker may take to start and run its initializer before the
#: pool is declared broken (``PARMAP_START_TIMEOUT`` overrides it).
START_TIMEOUT = float(os.environ.get("PARMAP_START_TIMEOUT", "120"))
#: While a worker runs a timed chunk of several items, read its beacon at
#: least this often: when the beacon cannot give an item's start time, the
#: first time we saw it running bounds it instead.
POLL_SECONDS = 0.02
#: How often a busy worker's resident memory is read in a pool with
#: ``max_memory_per_worker``: a worker over it is killed this long after
#: crossing it at most (plus the time to act on a reading).
MEMORY_POLL_SECONDS = 0.02
#: An idle worker above this share of the memory limit is retired: its next
#: item would likely take it over.
RECYCLE_FRACTION = 0.75

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


@dataclass(slots=True)
class Slot:
    """The scheduler's view of one worker."""

    wid: int
    ready: bool = False
    chunk: Chunk | None = None
    # The chunk sent after ``chunk``, which the worker runs next (prefetch).
    queued: Chunk | None = None
    queued_at: float = 0.0  # when it was sent: the earliest it can start
    reported: int = 0  # items this worker reported since it started
    # The running item's deadline is ``since + timeout`` at the earliest:
    # ``on_time`` then reads the beacon and moves it to the item's start.
    since: float = 0.0
    poll_at: float = math.inf  # when to read the beacon again (POLL_SECONDS)
    # The running item as we last saw it: its count, and when we first saw it.
    seen: int = -1
    seen_at: float = 0.0
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
    # The last time the running chunk showed progress (it was sent, outcomes
    # arrived): a worker that shows none for a whole timeout while no item
    # runs is stuck outside the task (unpickling its arguments, pickling a
    # result, stopped) and is timed out too.
    progress_at: float = 0.0
    # When the process started, once the backend says (``on_spawned``).
    spawned_at: float | None = None


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


class Scheduler:
    """The state of a pool's workers and maps, driven by events.

    ``workers`` is the pool size; ``encode`` turns a chunk message into bytes
    (bytes for a pipe, or the message itself for an in-process backend; it
    may raise for unpicklable arguments). What workers are running comes
    with the events (see ``BeaconReading``). ``item_beacon=False`` says the
    beacon cannot tell which item of a chunk is running (an executor's or
    dask's future runs a whole chunk): maps with a timeout then get one item
    per chunk, unless they set ``chunksize``, so that timeouts stay per item.
    """

    def __init__(
        self,
        workers: int,
        *,
        encode: Callable[[ChunkMessage], object],
        max_tasks_per_worker: int | None = None,
        item_beacon: bool = True,
        can_kill: bool = True,
        prefetch: bool = False,
        backlogged: Callable[[int], bool] = lambda wid: False,
        memory_limit: int | None = None,
    ) -> None:
        self.workers = workers
        self._encode = encode
        self._item_beacon = item_beacon
        self.can_kill = can_kill  # False: a timed-out item is abandoned, not stopped
        self._max_tasks = max_tasks_per_worker
        self.slots: dict[int, Slot] = {}
        self._tasks: dict[int, int] = {}  # wid -> items run, for max_tasks_per_worker
        self.jobs: list[Job] = []
        self._commands: list[Command] = []
        self._next_wid = 0
        self._next_jid = 0
        self._rr = 0
        self._startup_failures = 0
        self._item_times: dict[object, float] = {}
        self.closing = False
        self.broken: BaseException | None = None
        self._now = 0.0  # the latest time an event carried
        # Whether a worker may hold a second chunk: the backend says so (its
        # workers read their chunks in order from their own pipe). Such
        # workers are also sent nothing before they report ready, so that a
        # chunk's clock never runs while its worker is still starting.
        self._prefetch = prefetch
        self._ready_first = prefetch
        # Whether a worker still has so much to read that it should not be
        # sent a chunk ahead of time (the backend's write flow control).
        self._backlogged = backlogged
        # max_memory_per_worker in bytes; workers retired for memory so far.
        self.memory_limit = memory_limit
        self.recycled = 0

    # ----------------------------------------------------------------- helpers
    def take_commands(self) -> list[Command]:
        """Return and forget the commands queued since the last call."""
        commands, self._commands = self._commands, []
        return commands

    def new_job(self, config: MapConfig, **kwargs: Any) -> Job:
        """Create a job and schedule it."""
        job = Job(self._next_jid, config, **kwargs)
        self._next_jid += 1
        if self.broken is not None:
            job.error = self.broken
            job.closed = True
            return job
        job.item_time = self._item_times.get(job.fn_key)
        for wid in self.slots:
            job.stats.lane(wid)  # a warm pool's workers keep their order
        self.jobs.append(job)
        self._fill()
        return job

    def _fill(self) -> None:
        while len(self.slots) < self.workers and not self.closing and self.broken is None:
            wid = self._next_wid
            self._next_wid += 1
            self.slots[wid] = Slot(wid)
            self._tasks[wid] = 0
            self._commands.append(Spawn(wid))
            for job in self.jobs:
                job.stats.spawned(wid, replacement=wid >= self.workers)

    def _remove_slot(self, slot: Slot, command: Command) -> Chunk | None:
        del self.slots[slot.wid]
        for job in self.jobs:
            job.stats.gone(slot.wid, killed=isinstance(command, Kill))
        self._tasks.pop(slot.wid, None)
        self._commands.append(command)
        chunk, slot.chunk = slot.chunk, None
        if chunk is not None:
            chunk.job.running -= len(chunk.args) - chunk.done
        queued, slot.queued = slot.queued, None
        if queued is not None:
            # The worker never started it: it ran ``chunk`` until now.
            queued.job.running -= len(queued.args)
            self._requeue(queued, 0, len(queued.args))
        # No replacement here: ``_dispatch`` starts one when there is work
        # for it, so a map being torn down (Ctrl-C) starts no new workers.
        return chunk

    def _requeue(self, chunk: Chunk, start: int, stop: int, *, solo: bool = False) -> None:
        """Put ``chunk.args[start:stop]`` back at the front of its job's queue."""
        job = chunk.job
        if start >= stop or job.closed:
            return
        job.pending.appendleft(
            Run(
                chunk.start + start,
                chunk.args[start:stop],
                chunk.attempt,
                solo or chunk.attempt > 0,
            )
        )

    def _should_retry(
        self, job: Job, attempt: int, error: BaseException, *, task_raised: bool
    ) -> bool:
        config = job.config
        if attempt >= config.retries:
            return False
        if task_raised:
            return isinstance(error, config.retry_on)
        # A failure parmap reports itself (a timeout, a crash) is retried only
        # when retry_on names its class or a base of it that is no catch-all:
        # TaskTimeoutError or TimeoutError; WorkerCrashedError.
        return any(isinstance(error, t) and t not in GENERIC_ERRORS for t in config.retry_on)

    def _fail(
        self,
        job: Job,
        index: int,
        attempt: int,
        args: Any,
        error: BaseException,
        *,
        task_raised: bool,
    ) -> None:
        """Record that input ``index`` failed, retrying it when allowed."""
        mark_index(error, index)
        if job.closed:
            return
        if self._should_retry(job, attempt, error, task_raised=task_raised):
            job.stats.retried += 1
            job.pending.appendleft(Run(index, [args], attempt + 1, solo=True))
            return
        if job.config.on_error == "raise":
            job.failures += 1
            job.stats.failure(error)
            self._abort(job, error)
        else:
            job._emit_error(index, error)

    def _abort(self, job: Job, error: BaseException | None) -> None:
        """Stop a job: drop what is pending and kill the workers running it."""
        if job.closed:
            return
        job.error = error
        job.closed = True
        job.pending.clear()
        job._held.clear()
        for slot in list(self.slots.values()):
            if slot.chunk is not None and slot.chunk.job is job:
                self._remove_slot(slot, Kill(slot.wid))

    # ------------------------------------------------------------------ inputs
    def want(self, job: Job) -> int:
        """How many more inputs ``job`` should pull now (bounded by its buffer)."""
        if job.closed or job.exhausted:
            return 0
        window = job.config.buffer
        if window is None:
            chunks = WINDOW_CHUNKS * self.workers * self._chunksize(job, cap_by_total=False)
            window = max(4, min(chunks, MAX_WINDOW_ITEMS))
        return max(0, window - (job.pulled - job.consumed))

    def feed(self, job: Job, args: list[Any], now: float) -> None:
        """Add inputs (in order) to ``job``."""
        self._now = now
        if job.closed or not args:
            return
        last = job.pending[-1] if job.pending else None
        if (
            last is not None
            and not last.attempt
            and not last.solo
            and last.start + len(last.args) == job.pulled
        ):
            # Inputs fed one by one (an async source) still leave in chunks.
            if last.offset:
                # Drop what was sent already: a run that keeps being fed
                # before it drains would otherwise hold every input of the map.
                del last.args[: last.offset]
                last.start += last.offset
                last.offset = 0
            last.args.extend(args)
        else:
            job.pending.append(Run(job.pulled, args))
        job.pulled += len(args)
        self._dispatch(now)

    def skip(self, job: Job, values: list[Any], now: float) -> None:
        """The next inputs of ``job`` already have ``values`` (resumed): emit them unrun.

        They take their indexes like fed inputs, count as completed, and are
        not journaled (their record exists).
        """
        self._now = now
        if job.closed or not values:
            return
        start = job.pulled
        job.pulled += len(values)
        job.resumed += len(values)
        job._emit(start, values, None, record=False)

    def end_input(self, job: Job) -> None:
        """The job's input is exhausted."""
        job.exhausted = True

    def input_failed(self, job: Job, error: BaseException, now: float | None = None) -> None:
        """Reading the job's input raised: the job stops with that error."""
        self._abort(job, error)
        self._dispatch(self._now if now is None else now)

    def cancel(self, job: Job, now: float | None = None) -> None:
        """The consumer is gone: kill the job's work and forget it.

        The workers it frees (or their replacements) go to the other jobs.
        """
        self._abort(job, job.error)
        self.remove(job)
        self._dispatch(self._now if now is None else now)

    def remove(self, job: Job) -> None:
        """Forget a finished job."""
        if job in self.jobs:
            self.jobs.remove(job)

    # ---------------------------------------------------------------- dispatch
    def _chunksize(self, job: Job, *, cap_by_total: bool = True) -> int:
        if job.config.chunksize is not None:
            if job.config.buffer is not None:
                return job.config.chunksize
            # Without ``buffer`` the read-ahead window (two chunks per worker)
            # stays within MAX_WINDOW_ITEMS also for an explicit chunksize:
            # a larger one is cut down, never the window let grow with it.
            return max(1, min(job.config.chunksize, MAX_WINDOW_ITEMS // (2 * self.workers)))
        if job.config.timeout is not None and not self._item_beacon:
            return 1
        if job.item_time is None:
            return 1
        size = TARGET_CHUNK_SECONDS / max(job.item_time, 1e-9)
        if job.item_bytes:
            size = min(size, MAX_CHUNK_BYTES / job.item_bytes)
        if job.config.buffer is None:
            size = min(size, MAX_WINDOW_ITEMS // (2 * self.workers))
        if cap_by_total and job.total is not None:
            # Fast items: one round per worker is best; never more than an
            # even share, so that no worker idles while another has a backlog.
            size = min(size, math.ceil(job.total / self.workers))
        return max(1, min(int(size), MAX_CHUNK_ITEMS))

    def _next_job(self) -> Job | None:
        jobs = self.jobs
        for i in range(len(jobs)):
            job = jobs[(self._rr + i) % len(jobs)]
            if job.pending and not job.closed:
                self._rr = (self._rr + i + 1) % len(jobs)
                return job
        return None

    def _dispatch(self, now: float) -> None:
        if len(self.slots) < self.workers and any(
            job.pending and not job.closed for job in self.jobs
        ):
            self._fill()
        for slot in list(self.slots.values()):
            # A chunk that fails to pickle leaves the worker idle: try again
            # (in a loop, not by recursion: thousands may fail in a row).
            while slot.chunk is None and not slot.mem_check and slot.wid in self.slots:
                job = self._next_job()
                if job is None:
                    return
                if self._ready_first and not slot.ready and job.config.timeout is not None:
                    # A timed chunk's clock starts when it is sent: never
                    # while its worker is still starting (or stopped there).
                    break
                self._send_chunk(slot, job, now)
        if not self._prefetch or self._max_tasks is not None:
            return
        for slot in list(self.slots.values()):
            chunk = slot.chunk
            if chunk is None or slot.queued is not None or not self._may_prefetch(chunk.job):
                continue
            if self._backlogged(slot.wid):
                continue
            job = self._next_job()
            if job is None:
                return
            if (
                self._may_prefetch(job)
                and not job.pending[0].solo
                and (self.memory_limit is None or self._memory_room(slot, job, queue=True))
            ):
                self._send_chunk(slot, job, now, queue=True)

    @staticmethod
    def _may_prefetch(job: Job) -> bool:
        return (
            job.config.timeout is None
            and job.item_time is not None
            and job.item_time < PREFETCH_ITEM_SECONDS
            and not job.closed
        )

    def _send_chunk(self, slot: Slot, job: Job, now: float, *, queue: bool = False) -> None:
        run = job.pending[0]
        size = 1 if run.solo else self._chunksize(job)
        if self.memory_limit is not None:
            size = min(size, self._memory_room(slot, job, queue=queue))
        if self._max_tasks is not None:
            size = min(size, max(1, self._max_tasks - self._tasks[slot.wid]))
        elif self._prefetch and size > FIRST_CHUNK_ITEMS and self._may_prefetch(job):
            if not queue:
                # An idle worker starts at once on a small chunk; the full
                # one queued behind it travels while it runs.
                size = FIRST_CHUNK_ITEMS
            elif job.exhausted:
                # The tail of the map: smaller chunks, so that no worker
                # still has a queue when the others run dry.
                left = sum(len(r) for r in job.pending)
                size = min(size, max(FIRST_CHUNK_ITEMS, left // (2 * self.workers)))
        if size > 1 and job.exhausted and job.config.chunksize is None:
            # The tail of the map (all its input is known): never more than
            # a share of what is left (guided scheduling), so that a chunk
            # that turns out slow, its items costing more than the estimate
            # made from earlier ones, leaves no other worker idle for long.
            # (Not below about a round trip's worth of work: that would cost
            # more than the balance can save.)
            left = sum(len(r) for r in job.pending)
            floor = TAIL_FLOOR_SECONDS / max(job.item_time or 0.0, 1e-9)
            share = -(-left // (TAIL_SHARES * self.workers))
            size = min(size, max(share, math.ceil(floor)))
        size = min(size, len(run))
        args = run.args[run.offset : run.offset + size]
        start = run.start + run.offset
        run.offset += size
        if not len(run):
            job.pending.popleft()
        first = job.id not in slot.sent_jobs
        fn = job.fn_payload if first else None
        message = ChunkMessage(
            job.id,
            fn,
            job.star,
            args,
            timed=job.config.timeout is not None,
            threshold=job.config.shared_memory_threshold,
        )
        try:
            payload = self._encode(message)
        except Exception:
            self._isolate_unpicklable(job, start, args, run.attempt)
            return
        # The arguments' weight alone: the function a first chunk carries
        # says nothing about the size of its items.
        weight = payload.nbytes if isinstance(payload, Encoded) else None
        if isinstance(payload, bytes):
            weight = len(payload)
        if weight is not None:
            per_item = weight / size
            job.item_bytes = per_item if job.item_bytes is None else max(job.item_bytes, per_item)
        if first:
            if len(slot.sent_jobs) >= FUNCTION_CACHE:
                del slot.sent_jobs[next(iter(slot.sent_jobs))]
            slot.sent_jobs[job.id] = None
        if queue:
            slot.queued = Chunk(job, start, args, run.attempt)
            slot.queued_at = now
            if slot.sent_job is not job:
                slot.sent_job = None  # two maps' growth cannot be told apart
            slot.sent_len += size
        else:
            slot.chunk = Chunk(job, start, args, run.attempt)
            slot.since = slot.progress_at = now
            slot.poll_at = now + POLL_SECONDS if message.timed and size > 1 else math.inf
            if self.memory_limit is not None:
                slot.mem_at = now + MEMORY_POLL_SECONDS
                slot.sent_job, slot.sent_len, slot.sent_rss = job, size, slot.rss
        job.running += size
        self._commands.append(Send(slot.wid, payload))

    def _isolate_unpicklable(self, job: Job, start: int, args: list[Any], attempt: int) -> None:
        """A chunk failed to pickle: fail the items that cannot, requeue the rest."""
        good: list[Run] = []
        for offset, arg in enumerate(args):
            try:
                self._encode(ChunkMessage(job.id, None, job.star, [arg]))
            except Exception as exc:
                error = PicklingError(
                    f"cannot send input {start + offset} to a worker: its arguments "
                    f"could not be pickled ({type(exc).__name__}: {exc})"
                )
                error.__cause__ = exc
                self._fail(job, start + offset, attempt, arg, error, task_raised=False)
            else:
                good.append(Run(start + offset, [arg], attempt, solo=True))
        if not job.closed:  # a raise-mode failure above may have stopped the job
            job.pending.extendleft(reversed(good))

    # ------------------------------------------------------------------ events
    def handle(self, event: Event) -> None:
        """Take one event from the engine (see ``_events``)."""
        if isinstance(event, Batch):
            self.on_batch(
                event.wid, event.values, event.errors, event.busy, event.now, event.slices
            )
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
        elif isinstance(event, SpawnFailed):
            self.on_spawn_failed(event.wid, event.error)
        elif isinstance(event, InitFailed):
            self.on_init_failed(event.wid, event.error)
        else:
            self.on_undecodable(event.wid, event.error, event.now)

    def resume(self, now: float) -> None:
        """A worker's backlog cleared: it may be sent work ahead of time again."""
        self._dispatch(now)

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

    def _break(self, error: BaseException) -> None:
        self.broken = error
        for job in list(self.jobs):
            self._abort(job, error)
        for slot in list(self.slots.values()):
            self._remove_slot(slot, Kill(slot.wid))

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
        slot.progress_at = now
        self._tasks[wid] += count
        chunk.done += count
        job.running -= count
        # ``slot.since`` stays: it is still a lower bound on when the running
        # item started, and on_time moves it forward from the beacon. Setting
        # it to ``now`` would push the deadline of an item already running
        # later by however late its predecessors' outcomes arrived.
        if chunk.done >= len(chunk.args):
            # Free the worker first: if these outcomes stop the job, this
            # worker has nothing left to kill. It runs its queued chunk next.
            slot.chunk, slot.queued = slot.queued, None
            # The worker went on to it as soon as it finished this one, maybe
            # well before now: only its sending time bounds its start.
            slot.since = slot.queued_at
            if self.memory_limit is not None and slot.chunk is None:
                slot.mem_check, slot.mem_at = True, math.inf
        job.stats.batch(wid, chunk.start + first, count, errors, busy, slices, now)
        if not job.closed:
            # A failed position may yet be retried: it counts when it is final.
            job.stats.succeeded += count - (len(errors) if errors else 0)
            estimate = busy / count
            job.item_time = (
                estimate if job.item_time is None else 0.5 * job.item_time + 0.5 * estimate
            )
            times = self._item_times
            if job.fn_key not in times and len(times) >= ITEM_TIMES_KEPT:
                del times[next(iter(times))]
            times[job.fn_key] = job.item_time
            base = chunk.start + first
            if not errors:
                job._emit(base, values, None)
            else:
                self._emit_with_errors(job, chunk, first, values, errors)
        used_up = self._max_tasks is not None and self._tasks.get(wid, 0) >= self._max_tasks
        if used_up and slot.chunk is None and wid in self.slots:
            self._remove_slot(slot, Retire(wid))
        self._dispatch(now)

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
        slot.chunk, slot.queued = slot.queued, None  # the worker goes on with it
        slot.since = slot.queued_at
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
            self._blame(
                chunk, slot, beacon, lambda index: WorkerCrashedError(index, exitcode, hint)
            )
        self._dispatch(now)

    def _blame(
        self,
        chunk: Chunk,
        slot: Slot,
        reading: BeaconReading,
        make: Callable[[int], BaseException],
    ) -> None:
        """Fail the item of ``chunk`` that was running when the worker died."""
        started = reading[0] if reading is not None else slot.reported
        running = reading is not None and reading[1] is not None
        # Items of the chunk the worker started but had not reported yet.
        unreported = started - slot.reported
        pos = chunk.done + unreported - 1 if running else None
        if pos is None or not chunk.done <= pos < len(chunk.args):
            if len(chunk.args) - chunk.done == 1:
                pos = chunk.done
            else:
                # We cannot tell which item killed it: send each one alone, so
                # that the next death names its culprit.
                self._requeue(chunk, chunk.done, len(chunk.args), solo=True)
                return
        self._requeue(chunk, pos + 1, len(chunk.args))
        index = chunk.start + pos
        error = make(index)
        since = reading[1] if running and reading is not None else None
        chunk.job.stats.lost(
            slot.wid,
            index,
            since if since is not None and since != math.inf else slot.since,
            self._now,
            failure_kind(error),
        )
        self._fail(chunk.job, index, chunk.attempt, chunk.args[pos], error, task_raised=False)
        # Items before the culprit finished but their outcomes died with the
        # worker: run them again.
        self._requeue(chunk, chunk.done, pos)

    # ------------------------------------------------------------------ time
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
                deadline = min(slot.since + chunk.job.config.timeout, slot.poll_at)
                if best is None or deadline < best:
                    best = deadline
        return best

    def _reads_beacon(self, slot: Slot, now: float) -> bool:
        # Whether ``on_time(now)`` looks at what ``slot``'s worker runs.
        chunk = slot.chunk
        if chunk is None:
            return False
        timeout = chunk.job.config.timeout
        return timeout is not None and (slot.since + timeout <= now or slot.poll_at <= now)

    def beacons_wanted(self, now: float) -> list[int]:
        """Workers whose beacon ``on_time(now)`` reads (the engine reads them for it)."""
        return [wid for wid, slot in self.slots.items() if self._reads_beacon(slot, now)]

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
            if chunk is None:
                continue
            timeout = chunk.job.config.timeout
            if timeout is None:
                continue
            due = slot.since + timeout <= now
            if not due and slot.poll_at > now:
                continue
            slot.poll_at = now + POLL_SECONDS if len(chunk.args) - chunk.done > 1 else math.inf
            reading = beacons.get(slot.wid)
            # (A worker not ready yet is starting up, which has a bound of its own.)
            # The margin covers an item that began, unseen, after the last
            # progress: its own life must have lasted a whole timeout too.
            stalled = due and slot.ready and now - slot.progress_at >= timeout + POLL_SECONDS
            if stalled and reading is not None and reading[1] is None:
                # No item runs, and none has for a whole timeout: the worker
                # is stuck unpickling, pickling or stopped.
                self._time_out_between_items(slot, chunk, reading[0], timeout)
                continue
            if reading is None or reading[1] is None:
                # A torn read, or no item running right now (the worker is
                # starting, or sending results): look again shortly.
                if due:
                    slot.since = now - timeout + min(timeout, RECHECK_SECONDS)
                continue
            count = reading[0]
            if count != slot.seen:
                slot.seen, slot.seen_at = count, now
            # The item was running when we first saw it: that bounds its
            # start when the beacon cannot (a deadline may be late, never early).
            started_by = min(reading[1], slot.seen_at)
            if started_by + timeout > now:
                slot.since = started_by
                continue
            pos = chunk.done + (count - slot.reported) - 1
            if not chunk.done <= pos < len(chunk.args):
                slot.since = now - timeout + min(timeout, RECHECK_SECONDS)
                continue
            self._remove_slot(slot, Kill(slot.wid))
            self._time_out(slot, chunk, pos, timeout, started_by, now)
        self._dispatch(now)

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
        self._remove_slot(slot, Kill(slot.wid))
        unreported = max(0, started - slot.reported)
        remaining = len(chunk.args) - chunk.done
        suspects = unreported if unreported else remaining
        if suspects != 1:
            self._requeue(chunk, chunk.done, len(chunk.args), solo=True)
            return
        self._time_out(slot, chunk, chunk.done, timeout, slot.progress_at, self._now)

    # ---------------------------------------------------------------- memory
    def _memory_room(self, slot: Slot, job: Job, *, queue: bool = False) -> int:
        """How many items of ``job`` worker ``slot`` may run before it is measured again.

        At the map's worst growth per item, from the latest reading, the
        worker should stay below ``RECYCLE_FRACTION`` of the limit. An idle
        worker always gets one item; a chunk queued behind the running one
        (``queue``) must fit after what that one has left, or is not sent.
        """
        assert self.memory_limit is not None
        least = 0 if queue else 1
        growth = job.mem_growth
        if growth is None or slot.rss is None:
            return least  # nothing measured yet: one item, then look
        if growth <= 0:
            return MAX_CHUNK_ITEMS
        ahead = len(slot.chunk.args) - slot.chunk.done if queue and slot.chunk else 0
        room = int((RECYCLE_FRACTION * self.memory_limit - slot.rss) / growth) - ahead
        return max(least, min(MAX_CHUNK_ITEMS, room))

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
        and their beacons read at the same time.

        A busy worker over the limit is killed and its item fails with
        ``WorkerMemoryError``; an idle worker above ``RECYCLE_FRACTION`` of it
        is retired and replaced, so that no item fails.
        """
        self._now = now
        limit = self.memory_limit
        if limit is None:
            return
        for wid, rss in readings.items():
            slot = self.slots.get(wid)
            if slot is None:
                continue
            chunk = slot.chunk
            if chunk is None:
                if slot.mem_check:
                    slot.mem_check = False
                    self._measured(slot, rss)
                    if rss is not None and rss > RECYCLE_FRACTION * limit:
                        self.recycled += 1
                        self._remove_slot(slot, Retire(wid))
                continue
            slot.mem_at = now + MEMORY_POLL_SECONDS
            if rss is not None:
                slot.rss = rss
            if rss is None or rss <= limit or not slot.ready:
                continue
            # The Kill is only queued: the beacon still says which item ran.
            reading = None if beacons is None else beacons.get(wid)
            started = reading[0] if reading is not None else slot.reported
            self._remove_slot(slot, Kill(wid))
            if started > slot.measured_count + 1:
                # Not the first item since the worker was last measured: the
                # items before it may have left the memory. Each runs again
                # alone, on a measured worker, so that only a real culprit fails.
                self._requeue(chunk, chunk.done, len(chunk.args), solo=True)
                continue
            self._blame(chunk, slot, reading, partial(WorkerMemoryError, limit=limit, rss=rss))
        self._dispatch(now)

    # ---------------------------------------------------------------- closing
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
