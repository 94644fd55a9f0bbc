"""Sync and async drivers: feed a job's input, pump the engine, hand out outcomes.

Both drivers run one loop (``Consumer.step``): take ready outcomes; if the
job is finished, stop; otherwise read as much input as the job's buffer
allows and wait for the next event. They differ only in how they wait: the
sync driver pumps the engine itself (``_pump``), the async one awaits a
future that the engine's loop callbacks resolve (``_attach``). Leaving
early (break, exception, cancellation, Ctrl-C) cancels the job, which kills
the workers still running it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Iterable, Iterator
from contextlib import suppress
from enum import Enum
from itertools import islice
from typing import Any, TypeVar

from ._engine import Engine
from ._progress import Progress
from ._results import Outcome, outcome
from ._resume import Resume
from ._scheduler import Job, Segment
from ._stats import cpu

T = TypeVar("T")


def _feed(engine: Engine, job: Job, source: Iterator[Any], resume: Resume | None = None) -> None:
    want = engine.want(job)
    if want <= 0:
        return
    started = cpu()
    try:
        args = list(islice(source, want))
        # The input's own time is not the parent's overhead (MapStats).
        job.stats.parent -= cpu() - started
    except BaseException as exc:
        engine.input_failed(job, exc, time.monotonic())
        engine.execute()
        raise
    if len(args) < want:
        engine.end_input(job)
    if resume is None:
        engine.feed(job, args, time.monotonic())
    else:
        resume.feed(engine, job, args, time.monotonic())
    engine.execute()


def _raise_error(job: Job) -> None:
    """Raise the error that stopped ``job``, if any.

    The job lets go of it first: the traceback holds the frames of this map
    (and the results collected so far), which would otherwise wait for the
    cycle collector instead of going as soon as the caller drops the error.
    """
    error, job.error = job.error, None
    if error is None:
        return
    try:
        raise error
    finally:
        del error


class Step(Enum):
    """What a consumer loop does next when no segment is ready."""

    INPUT = "input"  #: read more input (a plain iterable, read by the driver)
    WAIT = "wait"  #: wait for the next event
    DONE = "done"  #: the job is over (its error, if any, was raised)


class Consumer:
    """The loop both drivers run, without its waiting: ``step()`` gives the
    next segment, or says to read input, to wait, or that the job is done."""

    def __init__(
        self, engine: Engine, progress: Progress, resume: Resume | None, *, reads_input: bool
    ) -> None:
        self.engine = engine
        self.progress = progress
        self.resume = resume
        self.reads_input = reads_input
        self.job: Job | None = None
        self.completed = False
        self._read = False  # input was read since the last segment

    def start(self, new_job: Callable[[], Job]) -> Job:
        """Make the job (starting workers is the parent's own time too)."""
        started = cpu()
        job = self.job = new_job()
        if self.resume is not None:
            self.resume.attach(job)
        self.engine.execute()
        job.stats.parent += cpu() - started
        return job

    def step(self) -> Segment | Step:
        """The next segment, or what to do before there is one."""
        job = self.job
        assert job is not None
        segment = job.take()
        if segment is not None:
            self._read = False
            self.progress.update(job)
            if self.resume is not None:
                self.resume.before_yield()
            return segment
        if job.finished:
            job.stats.ended = time.monotonic()
            self.progress.update(job)
            _raise_error(job)
            self.completed = True
            return Step.DONE
        if self.reads_input and not self._read:
            self._read = True
            return Step.INPUT
        self._read = False
        return Step.WAIT

    def read(self, source: Iterator[Any]) -> None:
        """Read as much of ``source`` as the job takes now."""
        assert self.job is not None
        started = cpu()
        _feed(self.engine, self.job, source, self.resume)
        self.job.stats.parent += cpu() - started

    def waited(self) -> None:
        """Time passed: commit the checkpoint when due, move the bar."""
        assert self.job is not None
        if self.resume is not None:
            self.resume.tick(time.monotonic())
        self.progress.update(self.job)


def iterate(
    engine: Engine,
    new_job: Callable[[], Job],
    source: Iterator[Any],
    progress: Progress,
    resume: Resume | None = None,
) -> Generator[Segment, None, None]:
    """Run a job on ``engine`` from the calling thread, yielding segments.

    Input is read in this thread too: while a slow input iterator is producing
    its next item, outcomes wait and deadlines are checked late. Use an async
    source with ``aiterate`` when input arrives slowly. With ``resume``, the
    map skips and records inputs through its checkpoint.
    """
    engine.begin_sync()
    consumer = Consumer(engine, progress, resume, reads_input=True)
    try:
        if resume is not None:
            resume.open()  # before any worker starts: a bad file fails the map at once
        with engine.sync.turn():
            engine.check_open()
            consumer.start(new_job)
        while (step := consumer.step()) is not Step.DONE:
            if not isinstance(step, Step):
                yield step
                continue
            with engine.sync.turn():
                if step is Step.INPUT:
                    consumer.read(source)
                else:
                    started = cpu()
                    engine.sync.pump()
                    consumer.job.stats.parent += cpu() - started  # type: ignore[union-attr]
            consumer.waited()
    finally:
        _end(consumer, sync=True)


def _end(consumer: Consumer, *, sync: bool) -> None:
    # Whatever happened, the job goes (cancelled unless it completed), the
    # checkpoint closes and the pool is let go of, each even if one fails.
    engine, job = consumer.engine, consumer.job
    try:
        if job is not None:
            if sync:
                with engine.sync.turn():
                    engine.finish(job, cancel=not consumer.completed, settle=True)
            else:
                engine.finish(job, cancel=not consumer.completed)
    finally:
        try:
            if consumer.resume is not None:
                consumer.resume.close(completed=consumer.completed)
        finally:
            if sync:
                engine.end_sync()
            else:
                engine.aio.detach()
            consumer.progress.close()


async def _feed_async(
    engine: Engine, job: Job, source: AsyncIterator[Any], resume: Resume | None
) -> None:
    """Read an async source item by item, as fast as the buffer allows.

    It runs as its own task so that a source waiting for its next item never
    holds back outcomes, deadlines or the consumer.
    """
    try:
        while not job.closed:
            if engine.want(job) <= 0:
                await engine.aio.changed(job)
                continue
            try:
                item = await anext(source)
            except StopAsyncIteration:
                engine.end_input(job)
                return
            if resume is None:
                engine.feed(job, [item], time.monotonic())
            else:
                resume.feed(engine, job, [item], time.monotonic())
            engine.execute()
    except BaseException as exc:
        task = asyncio.current_task()
        if isinstance(exc, asyncio.CancelledError) and task is not None and task.cancelling():
            raise  # this feeder was cancelled: the map is being torn down
        # Anything else came from the source, a CancelledError of its own
        # included: the map stops with it, as with a sync source, instead of
        # waiting forever for input that will not come.
        engine.input_failed(job, exc, time.monotonic())
        engine.execute()
        if not isinstance(exc, Exception | asyncio.CancelledError):
            raise  # KeyboardInterrupt, SystemExit: the loop must see them too
    finally:
        engine.aio.notify(job)


async def aiterate(
    engine: Engine,
    new_job: Callable[[], Job],
    source: Iterator[Any] | AsyncIterator[Any],
    progress: Progress,
    resume: Resume | None = None,
) -> AsyncGenerator[Segment, None]:
    """Run a job on ``engine`` from the running event loop, yielding segments.

    A plain iterable is read on the loop (it must not block); an async one is
    read by a feeder task. With ``resume``, the map skips and records inputs
    through its checkpoint (its commits are short writes made on the loop).
    """
    engine.check_open()
    if resume is not None:
        resume.open()
    loop = asyncio.get_running_loop()
    try:
        engine.attach(loop)
    except BaseException:
        if resume is not None:
            resume.close(completed=False)
        raise
    reads = not isinstance(source, AsyncIterator)
    consumer = Consumer(engine, progress, resume, reads_input=reads)
    feeder: asyncio.Task[None] | None = None
    try:
        job = consumer.start(new_job)
        if isinstance(source, AsyncIterator):
            feeder = loop.create_task(_feed_async(engine, job, source, resume))
        wait = _Waiter(engine, job, resume)
        while (step := consumer.step()) is not Step.DONE:
            if not isinstance(step, Step):
                engine.aio.notify(job)  # room in the buffer: wake the feeder
                yield step
            elif step is Step.INPUT:
                consumer.read(source)  # type: ignore[arg-type]
            else:
                await wait()
    finally:
        try:
            if feeder is not None and not feeder.done():
                feeder.cancel()
                with suppress(asyncio.CancelledError):
                    await feeder
        finally:
            _end(consumer, sync=False)


class _Waiter:
    """How an async map waits: for its job to change, and, with a checkpoint,
    no longer than its next commit is due (outcomes are journaled by loop
    callbacks that need not wake us: ordered maps hold them back)."""

    def __init__(self, engine: Engine, job: Job, resume: Resume | None) -> None:
        self.engine, self.job, self.resume = engine, job, resume
        self._changed: asyncio.Future[None] | None = None

    async def __call__(self) -> None:
        resume = self.resume
        if resume is None:
            await self.engine.aio.changed(self.job)
            return
        if self._changed is None or self._changed.done():
            self._changed = self.engine.aio.changed(self.job)
        await asyncio.wait((self._changed,), timeout=resume.wait_timeout(time.monotonic()))
        resume.tick(time.monotonic())


def outcomes(segments: Iterable[Segment]) -> Iterator[Outcome[Any]]:
    """Expand segments into one ``Outcome`` per input."""
    for segment in segments:
        yield from segment_outcomes(segment)


def segment_outcomes(segment: Segment) -> Iterator[Outcome[Any]]:
    """One segment's outcomes, built lazily: each is dropped as soon as it is
    used (a list of them all would keep the collector busy)."""
    start, values, errors = segment
    if errors is None:
        # No Python frame per item: map builds them.
        return map(outcome, range(start, start + len(values)), values)
    return WithErrors(start, values, errors, outcomes=True)


def segment_values(segment: Segment) -> Iterator[Any]:
    """One segment's values; an item's error is raised in its place."""
    start, values, errors = segment
    if errors is None:
        return iter(values)
    return WithErrors(start, values, errors, outcomes=False)


class WithErrors(Iterator[Any]):
    """A segment with failed items: their outcomes, or their values with each
    error raised in its place (and the iteration able to go on after it);
    ``stop()`` ends it early."""

    __slots__ = ("_errors", "_items", "_outcomes")

    def __init__(
        self, start: int, values: list[Any], errors: dict[int, BaseException], *, outcomes: bool
    ) -> None:
        self._items: Iterator[tuple[int, Any]] = enumerate(values, start)
        self._errors = errors
        self._outcomes = outcomes

    def __next__(self) -> Any:
        index, value = next(self._items)
        error = self._errors.get(index)
        if self._outcomes:
            return outcome(index, None, error) if error is not None else outcome(index, value)
        if error is not None:
            raise error
        return value

    def stop(self) -> None:
        self._items = iter(())


def collect(
    segments: Iterable[Segment], values: list[Any], errors: dict[int, BaseException]
) -> None:
    """Place segments into input-ordered ``values`` and ``errors``."""
    for start, seg_values, seg_errors in segments:
        end = start + len(seg_values)
        if len(values) < end:
            values.extend([None] * (end - len(values)))
        values[start:end] = seg_values
        if seg_errors:
            errors.update(seg_errors)
