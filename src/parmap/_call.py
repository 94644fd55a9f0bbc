"""One map call: its options, arguments and job, run to a result or streamed.

Shared by every entry point (``pmap`` and friends, ``Pool``, ``@parallel``):
the arguments are checked once here, and the work handed to the drivers.
"""

from __future__ import annotations

import os
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Callable,
    Generator,
    Iterable,
    Iterator,
)
from typing import TYPE_CHECKING, Any, TypeVar

from ._callables import function_key
from ._driver import aiterate, collect, iterate, outcomes
from ._engine import Engine
from ._iterators import AsyncMapIterator, MapIterator
from ._options import MapConfig, MapOptions, Options
from ._pickling import dump_function
from ._progress import Progress
from ._results import MapResult, Outcome
from ._resume import Resume
from ._scheduler import Job, Segment
from ._stats import MapStats

if TYPE_CHECKING:
    from ._pool import Pool

T = TypeVar("T")

_ANY_ITERABLE = (Iterable, AsyncIterable)


def check_call(fn: object, iterables: tuple[object, ...], *, allow_async: bool) -> None:
    """Raise ``TypeError`` unless ``fn`` is callable and every input is iterable."""
    if not callable(fn):
        raise TypeError(f"the function to map must be callable, got {fn!r}")
    if not iterables:
        raise TypeError("at least one iterable of inputs is required")
    kinds = _ANY_ITERABLE if allow_async else (Iterable,)
    for position, iterable in enumerate(iterables, 1):
        if not isinstance(iterable, kinds):
            kind = "an iterable or async iterable" if allow_async else "an iterable"
            raise TypeError(f"input {position} must be {kind}, got {type(iterable).__name__}")


def _length(iterables: tuple[object, ...]) -> int | None:
    try:
        return min(len(it) for it in iterables)  # type: ignore[arg-type]
    except TypeError:
        return None


def _source(iterables: tuple[Any, ...]) -> Iterator[Any]:
    if len(iterables) == 1:
        return iter(iterables[0])
    return zip(*iterables, strict=False)


async def _azip(iterables: tuple[Any, ...]) -> AsyncIterator[Any]:
    iterators = [
        aiter(it) if isinstance(it, AsyncIterable) else _as_async(iter(it)) for it in iterables
    ]
    while True:
        try:
            items = [await anext(it) for it in iterators]
        except StopAsyncIteration:
            return
        yield items[0] if len(items) == 1 else tuple(items)


async def _as_async(iterator: Iterator[Any]) -> AsyncIterator[Any]:
    for item in iterator:
        yield item


def _async_source(iterables: tuple[Any, ...]) -> Iterator[Any] | AsyncIterator[Any]:
    if any(isinstance(it, AsyncIterable) for it in iterables):
        return _azip(iterables)
    return _source(iterables)


class MapCall:
    """Everything one map needs, prepared once the options are validated."""

    def __init__(
        self,
        engine: Engine,
        fn: Callable[..., Any],
        iterables: tuple[Any, ...],
        config: MapConfig,
        *,
        ordered: bool,
    ) -> None:
        self.engine = engine
        self.fn = fn
        self.config = config
        self.iterables = iterables
        self.total = _length(iterables)
        self.star = len(iterables) > 1
        self.ordered = ordered
        self.payload: object
        if engine.preload is fn:
            self.payload = None
        elif engine.backend.capabilities.in_process:
            # Threads and the caller run the function object itself: nothing
            # to pickle, and a closure sees the caller's own state.
            self.payload = fn
        else:
            start_method = engine.backend.capabilities.start_method
            # Only worker processes of our own take buffers out of band.
            threshold = config.shared_memory_threshold if start_method is not None else None
            self.payload = dump_function(fn, start_method, threshold)
        # Item times are remembered under a small key naming the code, never
        # under the function itself (see ``_callables``).
        self.key: object = function_key(fn)
        self.job: Job | None = None

    def new_job(self) -> Job:
        self.job = self.engine.new_job(
            self.config,
            fn_payload=self.payload,
            star=self.star,
            ordered=self.ordered,
            total=self.total,
            fn_key=self.key,
        )
        return self.job

    def stats(self) -> MapStats | None:
        """The map's figures (once it ran), see ``MapStats``."""
        if self.job is None:
            return None
        return self.job.stats.snapshot(workers=self.engine.workers, resumed=self.job.resumed)

    def iterator(self, pool: Pool | None = None) -> MapIterator[Any]:
        """``stream()`` with ``.stats``; closes ``pool`` (a temporary one) at the end."""
        stream = self.stream() if pool is None else _closing(self.stream(), pool)
        return MapIterator(stream, self.stats)

    def aiterator(self, pool: Pool | None = None) -> AsyncMapIterator[Any]:
        """``astream()`` with ``.stats``; closes ``pool`` (a temporary one) at the end."""
        return AsyncMapIterator(_aclosing(self.astream(), pool), self.stats)

    def progress(self) -> Progress:
        return Progress(self.config.progress, self.total)

    def resume(self, *, stream: bool) -> Resume | None:
        """The map's use of its checkpoint file, if it has one (opened by the driver)."""
        path = self.config.checkpoint
        return None if path is None else Resume(os.fspath(path), self.fn, eager=stream)

    def segments(self, resume: Resume | None) -> Generator[Segment, None, None]:
        """The map's outcomes as they complete, driven by blocking waits."""
        return iterate(self.engine, self.new_job, _source(self.iterables), self.progress(), resume)

    def asegments(self, resume: Resume | None) -> AsyncGenerator[Segment, None]:
        """The same, driven by the running event loop."""
        source = _async_source(self.iterables)
        return aiterate(self.engine, self.new_job, source, self.progress(), resume)

    def run(self) -> MapResult[Any]:
        values: list[Any] = []
        errors: dict[int, BaseException] = {}
        resume = self.resume(stream=False)
        collect(self.segments(resume), values, errors)
        resumed = 0 if resume is None else resume.resumed
        return MapResult(values, dict(sorted(errors.items())), self.stats(), resumed=resumed)

    def stream(self) -> Generator[Segment, None, None]:
        """The outcomes, a segment at a time (``MapIterator`` flattens them)."""
        segments = self.segments(self.resume(stream=True))
        try:
            yield from segments
        finally:
            segments.close()

    async def arun(self) -> MapResult[Any]:
        values: list[Any] = []
        errors: dict[int, BaseException] = {}
        resume = self.resume(stream=False)
        segments = self.asegments(resume)
        try:
            async for segment in segments:
                collect((segment,), values, errors)
        finally:
            # Unless this coroutine is being closed while it awaits the
            # generator (its task destroyed with a closed loop): the generator
            # is still running then, and cannot be closed from here.
            if not getattr(segments, "ag_running", False):
                await segments.aclose()
        resumed = 0 if resume is None else resume.resumed
        return MapResult(values, dict(sorted(errors.items())), self.stats(), resumed=resumed)

    async def astream(self) -> AsyncGenerator[Outcome[Any], None]:
        segments = self.asegments(self.resume(stream=True))
        try:
            async for segment in segments:
                for outcome in outcomes((segment,)):
                    yield outcome
        finally:
            # Unless this coroutine is being closed while it awaits the
            # generator (its task destroyed with a closed loop): the generator
            # is still running then, and cannot be closed from here.
            if not getattr(segments, "ag_running", False):
                await segments.aclose()


def map_only(options: Options) -> MapOptions:
    from ._options import MAP_OPTIONS

    return {k: v for k, v in options.items() if k in MAP_OPTIONS}  # type: ignore[return-value]


def _closing(
    stream: Generator[Segment, None, None], pool: Pool | None
) -> Generator[Segment, None, None]:
    try:
        yield from stream
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()
        if pool is not None:
            pool.close()


async def _aclosing(
    stream: AsyncGenerator[Outcome[Any], None], pool: Pool | None
) -> AsyncGenerator[Outcome[Any], None]:
    try:
        async for outcome in stream:
            yield outcome
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()
        if pool is not None:
            pool.close()
