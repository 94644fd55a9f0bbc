"""Sync and async drivers: feed a job's input, pump the engine, hand out outcomes.

Both drivers follow the same loop: take ready outcomes; if the job is
finished, stop; otherwise pull as much input as the job's buffer allows and
wait for the next event. They differ only in how they wait: the sync driver
pumps the engine itself, the async one awaits an event that the engine's loop
callbacks set. Leaving early (break, exception, cancellation, Ctrl-C) cancels
the job, which kills the workers still running it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Iterable, Iterator
from contextlib import suppress
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
    job: Job | None = None
    completed = False
    try:
        if resume is not None:
            resume.open()  # before any worker starts: a bad file fails the map at once
        with engine.turn():
            engine.check_open()
            started = cpu()
            job = new_job()
            if resume is not None:
                resume.attach(job)
            engine.execute()  # starting workers is the parent's own time too
            job.stats.parent += cpu() - started
        while True:
            segment = job.take()
            if segment is not None:
                progress.update(job)
                if resume is not None:
                    resume.before_yield()
                yield segment
                continue
            if job.finished:
                break
            with engine.turn():
                started = cpu()
                _feed(engine, job, source, resume)
                if not (job.ready or job.finished):
                    engine.pump()
                job.stats.parent += cpu() - started
            if resume is not None:
                resume.tick(time.monotonic())
            progress.update(job)
        job.stats.ended = time.monotonic()
        progress.update(job)
        _raise_error(job)
        completed = True
    finally:
        try:
            if job is not None:
                with engine.turn():
                    engine.finish(job, cancel=not completed, settle=True)
        finally:
            try:
                if resume is not None:
                    resume.close(completed=completed)
            finally:
                engine.end_sync()
                progress.close()


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
                await engine.changed(job)
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
        engine.notify(job)


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
    completed = False
    job: Job | None = None
    feeder: asyncio.Task[None] | None = None
    changed: asyncio.Future[None] | None = None
    try:
        started = cpu()
        job = new_job()
        if resume is not None:
            resume.attach(job)
        engine.execute()  # starting workers is the parent's own time too
        job.stats.parent += cpu() - started
        if isinstance(source, AsyncIterator):
            feeder = loop.create_task(_feed_async(engine, job, source, resume))
        while True:
            segment = job.take()
            if segment is not None:
                engine.notify(job)  # room in the buffer: wake the feeder
                progress.update(job)
                if resume is not None:
                    resume.before_yield()
                yield segment
                continue
            if job.finished:
                break
            if feeder is None:
                started = cpu()
                _feed(engine, job, source, resume)  # type: ignore[arg-type]
                job.stats.parent += cpu() - started
                if job.ready or job.finished:
                    continue
            if resume is None:
                await engine.changed(job)
                continue
            # Outcomes are journaled by loop callbacks that need not wake
            # us (ordered maps hold them back): wake up to commit in time.
            if changed is None or changed.done():
                changed = engine.changed(job)
            await asyncio.wait((changed,), timeout=resume.wait_timeout(time.monotonic()))
            resume.tick(time.monotonic())
        job.stats.ended = time.monotonic()
        progress.update(job)
        _raise_error(job)
        completed = True
    finally:
        try:
            if feeder is not None and not feeder.done():
                feeder.cancel()
                with suppress(asyncio.CancelledError):
                    await feeder
            if job is not None:
                engine.finish(job, cancel=not completed)
        finally:
            try:
                if resume is not None:
                    resume.close(completed=completed)
            finally:
                engine.detach()
                progress.close()


def outcomes(segments: Iterable[Segment]) -> Iterator[Outcome[Any]]:
    """Expand segments into one ``Outcome`` per input."""
    for start, values, errors in segments:
        if errors is None:
            # No Python loop per item: map builds them.
            yield from map(outcome, range(start, start + len(values)), values)
        else:
            for index, value in enumerate(values, start):
                error = errors.get(index)
                yield outcome(index, None, error) if error is not None else outcome(index, value)


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
