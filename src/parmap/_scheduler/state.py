"""The state of a pool's workers and maps, and what every event does to it.

``State`` holds the slots, the jobs and the queued commands, and the moves
the event handlers of the layers above it share: starting and removing
workers, putting inputs back, failing (or retrying) an input, stopping a map,
breaking the pool. The layers: ``Dispatch`` (inputs in, chunks out),
``Deadlines``, ``Memory``, and ``Scheduler``, which takes the events.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from .._events import Command, Kill, Spawn
from .._options import MapConfig
from .._results import mark_index
from .jobs import Chunk, Job, Run
from .slots import Slot
from .tuning import GENERIC_ERRORS


class State:
    """A pool's slots and jobs (see ``Scheduler`` for the arguments)."""

    def __init__(
        self,
        workers: int,
        *,
        max_tasks_per_worker: int | None = None,
        item_beacon: bool = True,
        can_kill: bool = True,
        prefetch: bool = False,
        backlogged: Callable[[int], bool] = lambda wid: False,
        memory_limit: int | None = None,
    ) -> None:
        self.workers = workers
        self._item_beacon = item_beacon
        self.can_kill = can_kill  # False: a timed-out item is abandoned, not stopped
        self._max_tasks = max_tasks_per_worker
        self.slots: dict[int, Slot] = {}
        self._tasks: dict[int, int] = {}  # wid -> items run, for max_tasks_per_worker
        self.jobs: list[Job] = []
        self._commands: list[Command] = []
        self._next_wid = 0
        self._next_jid = 0
        self._rr = 0  # the job whose turn it is to send a chunk (an index in ``jobs``)
        self._startup_failures = 0
        self._item_times: dict[object, float] = {}
        self.closing = False
        self.broken: BaseException | None = None
        self._now = 0.0  # the latest time an event carried
        # The chunks of ``Send`` commands the engine has not reported encoded
        # yet, in order (with their slot, and whether they carry the map's
        # function): the reports come in the same order.
        self._unsent: deque[tuple[Slot, Chunk, bool]] = deque()
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
        """Forget ``slot``'s worker (``command`` stops it); return the chunk it ran."""
        del self.slots[slot.wid]
        for job in self.jobs:
            job.stats.gone(slot.wid, killed=isinstance(command, Kill))
        self._tasks.pop(slot.wid, None)
        self._commands.append(command)
        chunk, slot.chunk = slot.chunk, None
        if chunk is not None:
            chunk.job.running -= len(chunk.args) - chunk.done
        # The worker never started its queue: it ran ``chunk`` until now.
        # Last first, so that each job's inputs go back in their order.
        while slot.queue:
            queued = slot.queue.pop()
            queued.job.running -= len(queued.args)
            self._requeue(queued, 0, len(queued.args))
        if chunk is not None and self._is_unsent(chunk):
            # Not even handed to the backend yet: it cannot be what the worker died of.
            self._requeue(chunk, 0, len(chunk.args))
            return None
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

    @staticmethod
    def _should_retry(job: Job, attempt: int, error: BaseException, *, task_raised: bool) -> bool:
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
                if self._is_unsent(slot.chunk):
                    # The engine has not handed it over yet: its report
                    # decides (``on_encoded`` kills a worker that got it).
                    continue
                self._remove_slot(slot, Kill(slot.wid))

    def _is_unsent(self, chunk: Chunk) -> bool:
        return any(unsent is chunk for _, unsent, _ in self._unsent)

    def _break(self, error: BaseException) -> None:
        """The pool can run nothing any more: every map fails with ``error``."""
        self.broken = error
        for job in list(self.jobs):
            self._abort(job, error)
        for slot in list(self.slots.values()):
            self._remove_slot(slot, Kill(slot.wid))
