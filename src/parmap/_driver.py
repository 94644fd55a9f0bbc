"""Sync and async drivers: feed a job's input, pump the engine, hand out outcomes.

Both drivers follow the same loop: take ready outcomes; if the job is
finished, stop; otherwise pull as much input as the job's buffer allows and
wait for the next event. They differ only in how they wait: the sync driver
pumps the engine itself, the async one awaits an event that the engine's loop
callbacks set. Leaving early (break, exception, cancellation, Ctrl-C) cancels
the job, which kills the workers still running it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Iterable, Iterator
from itertools import islice
from typing import Any, TypeVar

from ._engine import Engine
from ._progress import Progress
from ._results import Outcome
from ._scheduler import Job, Segment

T = TypeVar("T")


def _feed(engine: Engine, job: Job, source: Iterator[Any]) -> None:
    want = engine.sched.want(job)
    if want <= 0:
        return
    try:
        args = list(islice(source, want))
    except BaseException as exc:
        engine.sched.input_failed(job, exc)
        engine.execute()
        raise
    if len(args) < want:
        engine.sched.end_input(job)
    engine.sched.feed(job, args, time.monotonic())
    engine.execute()


def iterate(
    engine: Engine, new_job: Callable[[], Job], source: Iterator[Any], progress: Progress
) -> Generator[Segment, None, None]:
    """Run a job on ``engine`` from the calling thread, yielding segments."""
    with engine.turn():
        engine.check_open()
        job = new_job()
        engine.execute()
    completed = False
    try:
        while True:
            segment = job.take()
            if segment is not None:
                progress.update(job)
                yield segment
                continue
            if job.finished:
                break
            with engine.turn():
                _feed(engine, job, source)
                if not (job.ready or job.finished):
                    engine.pump()
            progress.update(job)
        progress.update(job)
        if job.error is not None:
            raise job.error
        completed = True
    finally:
        try:
            with engine.turn():
                engine.finish(job, cancel=not completed)
        finally:
            progress.close()


async def _afeed(engine: Engine, job: Job, source: Iterator[Any] | AsyncIterator[Any]) -> None:
    want = engine.sched.want(job)
    if want <= 0:
        return
    args: list[Any] = []
    try:
        if isinstance(source, AsyncIterator):
            try:
                for _ in range(want):
                    args.append(await anext(source))
            except StopAsyncIteration:
                engine.sched.end_input(job)
        else:
            args = list(islice(source, want))
            if len(args) < want:
                engine.sched.end_input(job)
    except Exception as exc:
        engine.sched.input_failed(job, exc)
        engine.execute()
        raise
    engine.sched.feed(job, args, time.monotonic())
    engine.execute()


async def aiterate(
    engine: Engine,
    new_job: Callable[[], Job],
    source: Iterator[Any] | AsyncIterator[Any],
    progress: Progress,
) -> AsyncGenerator[Segment, None]:
    """Run a job on ``engine`` from the running event loop, yielding segments."""
    import asyncio

    engine.check_open()
    engine.attach(asyncio.get_running_loop())
    completed = False
    job: Job | None = None
    try:
        job = new_job()
        event = engine.watch(job)
        engine.execute()
        while True:
            segment = job.take()
            if segment is not None:
                progress.update(job)
                yield segment
                continue
            if job.finished:
                break
            await _afeed(engine, job, source)
            if job.ready or job.finished or engine.sched.want(job) > 0:
                continue
            event.clear()
            await event.wait()
        progress.update(job)
        if job.error is not None:
            raise job.error
        completed = True
    finally:
        try:
            if job is not None:
                engine.unwatch(job)
                engine.finish(job, cancel=not completed)
        finally:
            engine.detach()
            progress.close()


def outcomes(segments: Iterable[Segment]) -> Iterator[Outcome[Any]]:
    """Expand segments into one ``Outcome`` per input."""
    for start, values, errors in segments:
        if errors is None:
            for index, value in enumerate(values, start):
                yield Outcome(index, value)
        else:
            for index, value in enumerate(values, start):
                error = errors.get(index)
                yield Outcome(index, None, error) if error is not None else Outcome(index, value)


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
