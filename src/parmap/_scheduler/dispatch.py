"""Inputs in, chunks out: what a map pulls, and which worker gets which chunk.

Idle workers get a chunk first, then (backends whose workers read their
chunks in order) busy ones chunks queued behind the running one: one, or up
to ``MAX_QUEUED`` when chunks are so short that one would run dry before
the parent, sharing the cores with its workers, gets to send the next.
``Send`` carries a chunk unencoded: the engine has the backend encode it and
reports back, in order, before it carries out anything the report causes:
``Encoded``, with what its arguments weigh, which sizes later chunks (a map
whose weight is unknown sends its next chunk only then); or
``Unpicklable``, and then the chunk never left: its inputs that cannot be
pickled fail, and the others go one per chunk.
"""

from __future__ import annotations

from pickle import PicklingError
from typing import Any

from .._events import FUNCTION_CACHE, ChunkMessage, Kill, Send
from .jobs import Chunk, Job, Run
from .sizing import (
    chunk_size,
    may_prefetch,
    memory_room,
    prefetch_size,
    queue_depth,
    tail_size,
)
from .slots import Slot
from .state import State
from .tuning import MAX_WINDOW_ITEMS, MEMORY_POLL_SECONDS, WINDOW_CHUNKS


class Dispatch(State):
    """A pool's inputs and the chunks it sends."""

    # ---------------------------------------------------------------- inputs
    def want(self, job: Job) -> int:
        """How many more inputs ``job`` should pull now (bounded by its buffer)."""
        if job.closed or job.exhausted:
            return 0
        window = job.config.buffer
        if window is None:
            size = chunk_size(job, self.workers, item_beacon=self._item_beacon, cap_by_total=False)
            chunks = WINDOW_CHUNKS - 1 + (self._depth(job) if self._prefetch else 1)
            window = max(4, min(chunks * self.workers * size, MAX_WINDOW_ITEMS))
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

    # -------------------------------------------------------------- dispatch
    def _next_job(self) -> Job | None:
        # The job whose turn it is: it keeps the turn until it sends a chunk.
        jobs = self.jobs
        n = len(jobs)
        for i in range(n):
            job = jobs[(self._rr + i) % n]
            if job.pending and not job.closed:
                return job
        return None

    def _dispatch(self, now: float) -> None:
        """Send chunks to idle workers, then ahead to busy ones."""
        if len(self.slots) < self.workers and any(
            job.pending and not job.closed for job in self.jobs
        ):
            self._fill()
        for slot in self.slots.values():
            # A chunk that fails to encode leaves the worker idle again: the
            # engine's report of it dispatches anew (``on_unpicklable``).
            if slot.chunk is not None or slot.mem_check:
                continue
            job = self._next_job()
            if job is None or job.weighing:
                return  # (a map waiting for its weight goes on when it comes)
            if self._ready_first and not slot.ready and job.config.timeout is not None:
                # A timed chunk's clock starts when it is sent: never
                # while its worker is still starting (or stopped there).
                continue
            self._send_chunk(slot, job, now)
        if self._prefetch and self._max_tasks is None:
            self._send_ahead(now)

    def _send_ahead(self, now: float) -> None:
        for slot in self.slots.values():
            while self._may_queue(slot):
                job = self._next_job()
                if job is None or job.weighing:
                    return
                if len(slot.queue) >= self._depth(job) or not (
                    may_prefetch(job)
                    and not job.pending[0].solo
                    and (
                        self.memory_limit is None
                        or memory_room(slot, job, self.memory_limit, queue=True)
                    )
                ):
                    break
                self._send_chunk(slot, job, now, queue=True)

    def _may_queue(self, slot: Slot) -> bool:
        # Whether a chunk may go behind what ``slot``'s worker runs.
        chunk = slot.chunk
        return (
            chunk is not None
            and may_prefetch(chunk.job)
            and not self._backlogged(slot.wid)
            and not slot.sending_fn
        )

    def _depth(self, job: Job) -> int:
        # A pool with a memory limit queues one chunk: its room is measured
        # against the running chunk alone.
        if self.memory_limit is not None:
            return 1
        return queue_depth(job, chunk_size(job, self.workers, item_beacon=self._item_beacon))

    def _size(self, slot: Slot, job: Job, run: Run, *, queue: bool) -> int:
        size = 1 if run.solo else chunk_size(job, self.workers, item_beacon=self._item_beacon)
        if self.memory_limit is not None:
            size = min(size, memory_room(slot, job, self.memory_limit, queue=queue))
        if self._max_tasks is not None:
            size = min(size, max(1, self._max_tasks - self._tasks[slot.wid]))
        elif self._prefetch and may_prefetch(job):
            size = prefetch_size(job, size, self.workers, queue=queue)
        if size > 1 and job.exhausted and job.config.chunksize is None:
            size = tail_size(job, size, self.workers)
        return min(size, len(run))

    def _send_chunk(self, slot: Slot, job: Job, now: float, *, queue: bool = False) -> None:
        """Give ``slot``'s worker the next chunk of ``job`` (``queue``: behind its own)."""
        run = job.pending[0]
        size = self._size(slot, job, run, queue=queue)
        args = run.args[run.offset : run.offset + size]
        chunk = Chunk(job, run.start + run.offset, args, run.attempt)
        run.offset += size
        if not len(run):
            job.pending.popleft()
        self._rr = (self.jobs.index(job) + 1) % len(self.jobs)
        first = job.id not in slot.sent_jobs
        if first:
            if len(slot.sent_jobs) >= FUNCTION_CACHE:
                del slot.sent_jobs[next(iter(slot.sent_jobs))]
            slot.sent_jobs[job.id] = None
        timed = job.config.timeout is not None
        if queue:
            slot.clock.queued(now, first=not slot.queue)
            slot.queue.append(chunk)
            if slot.sent_job is not job:
                slot.sent_job = None  # two maps' growth cannot be told apart
            slot.sent_len += size
        else:
            slot.chunk = chunk
            slot.clock.started(now, poll=timed and size > 1)
            if self.memory_limit is not None:
                slot.mem_at = now + MEMORY_POLL_SECONDS
                slot.sent_job, slot.sent_len, slot.sent_rss = job, size, slot.rss
        job.running += size
        if not job.weighed and job.config.chunksize is None:
            job.weighing = True
        slot.sending_fn |= first
        self._unsent.append((slot, chunk, first))
        fn = job.fn_payload if first else None
        threshold = job.config.shared_memory_threshold
        message = ChunkMessage(job.id, fn, job.star, args, timed=timed, threshold=threshold)
        self._commands.append(Send(slot.wid, message))

    # ------------------------------------------------------- encoding reports
    def _reported(self) -> tuple[Slot, Chunk, bool, bool]:
        # The report of the oldest unsent chunk came: whether to dispatch
        # again (a map waited for its weight, a worker for its function).
        slot, chunk, first = self._unsent.popleft()
        job = chunk.job
        waited = job.weighing or first
        job.weighing = False
        if first:
            slot.sending_fn = False
        return slot, chunk, first, waited

    def on_encoded(self, items: int, weight: int | None) -> None:
        """The oldest chunk sent was encoded; its arguments weigh ``weight`` bytes."""
        slot, chunk, _first, waited = self._reported()
        job = chunk.job
        if job.closed and slot.chunk is chunk and slot.wid in self.slots:
            # The map stopped while this chunk was on its way (an earlier
            # chunk's inputs did not pickle): stop the worker running it.
            self._remove_slot(slot, Kill(slot.wid))
        job.weighed = True
        if weight is not None:
            per_item = weight / items
            job.item_bytes = per_item if job.item_bytes is None else max(job.item_bytes, per_item)
        if waited:
            self._dispatch(self._now)

    def on_unpicklable(self, errors: dict[int, Exception]) -> None:
        """The oldest chunk sent could not be encoded, so it never left: take it back.

        ``errors`` names its inputs that cannot be pickled: they fail; the
        others are sent again one per chunk.
        """
        slot, chunk, first, _waited = self._reported()
        if self._take_back(slot, chunk, first):
            job = chunk.job
            good: list[Run] = []
            for pos, arg in enumerate(chunk.args):
                index, exc = chunk.start + pos, errors.get(pos)
                if exc is None:
                    good.append(Run(index, [arg], chunk.attempt, solo=True))
                    continue
                error = PicklingError(
                    f"cannot send input {index} to a worker: its arguments "
                    f"could not be pickled ({type(exc).__name__}: {exc})"
                )
                error.__cause__ = exc
                self._fail(job, index, chunk.attempt, arg, error, task_raised=False)
            if not job.closed:  # a raise-mode failure above may have stopped the job
                job.pending.extendleft(reversed(good))
        self._dispatch(self._now)

    def _take_back(self, slot: Slot, chunk: Chunk, first: bool) -> bool:
        # Undo ``_send_chunk``; False if the chunk went back already (its worker is gone).
        if slot.wid not in self.slots:
            return False
        if slot.chunk is chunk:
            # What was sent behind it becomes what the worker runs first.
            slot.chunk = slot.next_queued()
        elif chunk in slot.queue:
            slot.queue.remove(chunk)
            slot.sent_len -= len(chunk.args)
        else:
            return False
        chunk.job.running -= len(chunk.args)
        if first:
            slot.sent_jobs.pop(chunk.job.id, None)  # the worker never got the function
        return True
