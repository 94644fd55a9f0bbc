"""The public entry points: ``parallel``, ``pmap``, ``imap``, ``apmap``, ``aimap``, ``Pool``.

This module only handles options and arguments; the work happens in the
engine (``_engine``) and the drivers (``_driver``).
"""

from __future__ import annotations

import functools
import os
import sys
import threading
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Callable,
    Generator,
    Iterable,
    Iterator,
)
from dataclasses import replace
from typing import Any, Generic, ParamSpec, Self, TypeVar, overload

from typing_extensions import Unpack

from ._callables import callable_name, function_key
from ._driver import aiterate, collect, iterate, outcomes
from ._engine import Engine
from ._iterators import AsyncMapIterator, MapIterator
from ._notebook import watch_kernel_shutdown
from ._options import Defaults, MapConfig, MapOptions, Options
from ._pickling import dump_function, main_has_no_file
from ._progress import Progress
from ._results import MapResult, Outcome
from ._resume import Resume
from ._scheduler import Job
from ._stats import MapStats

P = ParamSpec("P")
T = TypeVar("T")

_ANY_ITERABLE = (Iterable, AsyncIterable)


def _check_call(fn: object, iterables: tuple[object, ...], *, allow_async: bool) -> None:
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


class _Call:
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

    def run(self) -> MapResult[Any]:
        values: list[Any] = []
        errors: dict[int, BaseException] = {}
        resume = self.resume(stream=False)
        collect(
            iterate(self.engine, self.new_job, _source(self.iterables), self.progress(), resume),
            values,
            errors,
        )
        resumed = 0 if resume is None else resume.resumed
        return MapResult(values, dict(sorted(errors.items())), self.stats(), resumed=resumed)

    def stream(self) -> Generator[Outcome[Any], None, None]:
        segments = iterate(
            self.engine,
            self.new_job,
            _source(self.iterables),
            self.progress(),
            self.resume(stream=True),
        )
        try:
            yield from outcomes(segments)
        finally:
            segments.close()

    async def arun(self) -> MapResult[Any]:
        values: list[Any] = []
        errors: dict[int, BaseException] = {}
        resume = self.resume(stream=False)
        segments = aiterate(
            self.engine, self.new_job, _async_source(self.iterables), self.progress(), resume
        )
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
        segments = aiterate(
            self.engine,
            self.new_job,
            _async_source(self.iterables),
            self.progress(),
            self.resume(stream=True),
        )
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


class Pool:
    """A pool of workers reused by many maps.

    Takes every option as a default (see the options table); the options of
    the pool itself (``workers``, ``initializer``, ``start_method``, ...) are
    fixed here, while each map may override the per-map ones (``timeout``,
    ``on_error``, ``retries``, ...). Workers start on first use and stop at
    ``close()``, at the end of a ``with`` block, or at interpreter exit.

    Several maps may run on one pool at once: from several threads (they take
    turns driving the pool and share its workers), or as several ``apmap``/
    ``aimap`` calls on one event loop (they share the workers fairly). One
    pool cannot serve an event loop and blocking callers at the same time;
    that raises ``RuntimeError``.
    """

    def __init__(self, **options: Unpack[Options]) -> None:
        self._defaults = Defaults.build(**options)
        self._preload: Callable[..., Any] | None = None
        self._engine: Engine | None = None
        self._closed = False
        self._lock = threading.Lock()

    @classmethod
    def _for_function(cls, defaults: Defaults, fn: Callable[..., Any]) -> Pool:
        # A pool that serves one known function can hand it to forked workers
        # directly, so even a lambda needs no pickling under fork.
        pool = cls.__new__(cls)
        pool._defaults = defaults
        pool._preload = fn
        pool._engine = None
        pool._closed = False
        pool._lock = threading.Lock()
        return pool

    def _get_engine(self) -> Engine:
        with self._lock:
            if self._closed:
                raise RuntimeError("this Pool is closed")
            engine = self._engine
            if engine is None or engine.pid != os.getpid() or engine.closed:
                engine = self._engine = Engine(self._defaults.pool, preload=self._preload)
                watch_kernel_shutdown()  # a notebook's kernel stops the workers first
            return engine

    def _call(
        self,
        fn: Callable[..., Any],
        iterables: tuple[Any, ...],
        options: MapOptions,
        *,
        ordered: bool = False,
        allow_async: bool = False,
        pool_options: bool = False,
    ) -> _Call:
        config = self._defaults.merged(options, pool_options=pool_options).map
        _check_call(fn, iterables, allow_async=allow_async)
        if not isinstance(ordered, bool):
            raise TypeError(f"ordered must be a bool, got {ordered!r}")
        return _Call(self._get_engine(), fn, iterables, config, ordered=ordered)

    def pmap(
        self, fn: Callable[..., T], /, *iterables: Iterable[Any], **options: Unpack[MapOptions]
    ) -> MapResult[T]:
        """Map ``fn`` over the zipped ``iterables``; block until every item is done.

        Returns a ``MapResult`` in input order. With ``on_error="raise"`` (the
        default) the first failure stops the map and is raised.
        """
        return self._call(fn, iterables, options).run()

    def imap(
        self,
        fn: Callable[..., T],
        /,
        *iterables: Iterable[Any],
        ordered: bool = False,
        **options: Unpack[MapOptions],
    ) -> MapIterator[T]:
        """Yield an ``Outcome`` per input as each completes (``ordered=True``: in input order).

        Input is read lazily, at most ``buffer`` items ahead of the consumer,
        so an endless generator works. Leaving the loop early stops the work.
        """
        return self._call(fn, iterables, options, ordered=ordered).iterator()

    async def apmap(
        self,
        fn: Callable[..., T],
        /,
        *iterables: Iterable[Any] | AsyncIterable[Any],
        **options: Unpack[MapOptions],
    ) -> MapResult[T]:
        """Like ``pmap``, awaited on the running event loop without blocking it.

        Cancelling the awaiting task kills the work this map started.
        """
        return await self._call(fn, iterables, options, allow_async=True).arun()

    def aimap(
        self,
        fn: Callable[..., T],
        /,
        *iterables: Iterable[Any] | AsyncIterable[Any],
        ordered: bool = False,
        **options: Unpack[MapOptions],
    ) -> AsyncMapIterator[T]:
        """Like ``imap``, as an async iterator; inputs may be async iterables."""
        return self._call(fn, iterables, options, ordered=ordered, allow_async=True).aiterator()

    def close(self) -> None:
        """Stop the workers. Maps still running fail; the pool cannot be reused."""
        with self._lock:
            self._closed = True
            engine = self._engine
        if engine is not None:
            # Forgotten only once closed: a Ctrl-C inside leaves the engine
            # here, for the next close() to finish.
            engine.close()
            with self._lock:
                if self._engine is engine:
                    self._engine = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<parmap.Pool workers={self._defaults.pool.resolved_workers} {state}>"


class ParallelFunction(Generic[P, T]):
    """A function with parallel maps attached (what ``@parallel`` returns).

    Calling it runs the original function inline. ``.pmap``, ``.imap``,
    ``.apmap`` and ``.aimap`` map it over inputs on a pool kept for reuse
    across calls; ``.close()`` stops that pool (it also stops at exit).
    Options given to a call override the decorator's; if they change an
    option of the pool (``workers``, ``start_method``, ...), that call runs
    on a pool of its own.
    """

    __name__: str  # copied from the function by update_wrapper, like its __doc__

    def __init__(self, fn: Callable[P, T], defaults: Defaults) -> None:
        functools.update_wrapper(self, fn)
        self.__parmap_inline__ = fn
        self._defaults = defaults
        self._own_pool: Pool | None = None
        self._lock = threading.Lock()

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> T:
        return self.__parmap_inline__(*args, **kwargs)

    def __reduce__(self) -> str | tuple[Any, ...]:
        # Pickle by reference to this wrapper (the module attribute); the
        # worker unwraps it and runs the original function.
        qualname = self.__dict__.get("__qualname__")
        if self.__module__ == "__main__" and main_has_no_file():
            # A notebook's or `python -c`'s __main__ cannot be imported by a
            # spawned worker: travel by value instead (cloudpickle sends a
            # __main__ function by value).
            return (_rebuild_parallel, (self.__parmap_inline__, _portable(self._defaults)))
        if isinstance(qualname, str) and _lookup(self.__dict__.get("__module__"), qualname) is self:
            return qualname
        # A wrapper that no name leads to (of a partial, of a callable
        # instance, or not kept under its function's name) travels by value.
        return (_rebuild_parallel, (self.__parmap_inline__, _portable(self._defaults)))

    def __repr__(self) -> str:
        return f"<parallel function {callable_name(self.__parmap_inline__)}>"

    def _pool_for(self, options: Options) -> tuple[Pool, Defaults, bool]:
        defaults = self._defaults.merged(options)
        if defaults.pool != self._defaults.pool:
            return Pool._for_function(defaults, self), defaults, True
        with self._lock:
            if self._own_pool is None or self._own_pool._closed:
                self._own_pool = Pool._for_function(self._defaults, self)
            return self._own_pool, defaults, False

    def _call(
        self, iterables: tuple[Any, ...], options: Options, **kwargs: Any
    ) -> tuple[_Call, Pool, bool]:
        pool, _defaults, temporary = self._pool_for(options)
        try:
            call = pool._call(self, iterables, _map_only(options), pool_options=True, **kwargs)
        except BaseException:
            if temporary:
                pool.close()
            raise
        return call, pool, temporary

    def pmap(self, *iterables: Iterable[Any], **options: Unpack[Options]) -> MapResult[T]:
        """Map this function over the zipped ``iterables`` (see ``parmap.pmap``)."""
        call, pool, temporary = self._call(iterables, options)
        try:
            return call.run()
        finally:
            if temporary:
                pool.close()

    def imap(
        self, *iterables: Iterable[Any], ordered: bool = False, **options: Unpack[Options]
    ) -> MapIterator[T]:
        """Yield outcomes as items complete (see ``parmap.imap``)."""
        call, pool, temporary = self._call(iterables, options, ordered=ordered)
        return call.iterator(pool if temporary else None)

    async def apmap(
        self, *iterables: Iterable[Any] | AsyncIterable[Any], **options: Unpack[Options]
    ) -> MapResult[T]:
        """Await a map of this function (see ``parmap.apmap``)."""
        call, pool, temporary = self._call(iterables, options, allow_async=True)
        try:
            return await call.arun()
        finally:
            if temporary:
                pool.close()

    def aimap(
        self,
        *iterables: Iterable[Any] | AsyncIterable[Any],
        ordered: bool = False,
        **options: Unpack[Options],
    ) -> AsyncMapIterator[T]:
        """Async-iterate outcomes as items complete (see ``parmap.aimap``)."""
        call, pool, temporary = self._call(iterables, options, ordered=ordered, allow_async=True)
        return call.aiterator(pool if temporary else None)

    def close(self) -> None:
        """Stop this function's pool; the next map starts a new one."""
        with self._lock:
            pool = self._own_pool
        if pool is not None:
            pool.close()
            with self._lock:
                if self._own_pool is pool:
                    self._own_pool = None


def _lookup(module: object, qualname: str) -> object:
    """What ``module.qualname`` names now, or ``None``."""
    found: object = sys.modules.get(module) if isinstance(module, str) else None
    for part in qualname.split("."):
        found = getattr(found, part, None)
    return found


def _portable(defaults: Defaults) -> Defaults:
    """``defaults`` without what belongs to this process: an executor or a
    dask client as backend, a tqdm instance as progress."""
    pool, map_ = defaults.pool, defaults.map
    if not isinstance(pool.backend, str):
        pool = replace(pool, backend="process")
    if not isinstance(map_.progress, bool | dict):
        map_ = replace(map_, progress=False)
    return Defaults(pool, map_)


def _rebuild_parallel(fn: Callable[..., Any], defaults: Defaults) -> ParallelFunction[Any, Any]:
    return ParallelFunction(fn, defaults)


def _map_only(options: Options) -> MapOptions:
    from ._options import MAP_OPTIONS

    return {k: v for k, v in options.items() if k in MAP_OPTIONS}  # type: ignore[return-value]


def _closing(
    stream: Generator[Outcome[Any], None, None], pool: Pool | None
) -> Generator[Outcome[Any], None, None]:
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


@overload
def parallel(fn: Callable[P, T], /) -> ParallelFunction[P, T]: ...


@overload
def parallel(
    **options: Unpack[Options],
) -> Callable[[Callable[P, T]], ParallelFunction[P, T]]: ...


def parallel(
    fn: Callable[P, T] | None = None, /, **options: Unpack[Options]
) -> ParallelFunction[P, T] | Callable[[Callable[P, T]], ParallelFunction[P, T]]:
    """Give a function parallel maps: ``@parallel`` or ``@parallel(workers=3, ...)``.

    The decorated function still runs inline when called, and gains
    ``.pmap``, ``.imap``, ``.apmap``, ``.aimap`` and ``.close``. Options are
    validated here and become the defaults of every map.
    """
    defaults = Defaults.build(**options)
    if fn is not None:
        if not callable(fn):
            raise TypeError(f"@parallel needs a callable, got {fn!r}")
        return ParallelFunction(fn, defaults)

    def decorate(func: Callable[P, T]) -> ParallelFunction[P, T]:
        if not callable(func):
            raise TypeError(f"@parallel needs a callable, got {func!r}")
        return ParallelFunction(func, defaults)

    return decorate


def _temporary(fn: Callable[..., Any], options: Options) -> tuple[Pool, MapOptions]:
    defaults = Defaults.build(**options)
    return Pool._for_function(defaults, fn), _map_only(options)


def pmap(
    fn: Callable[..., T], /, *iterables: Iterable[Any], **options: Unpack[Options]
) -> MapResult[T]:
    """Map ``fn`` over the zipped ``iterables`` on a pool made for this call.

    Returns a ``MapResult`` (values in input order, captured exceptions).
    With ``on_error="raise"`` (the default) the first failure cancels the rest
    and is raised; with ``"collect"`` every item runs and failures are kept.
    Raises ``TypeError``/``ValueError`` for bad options or arguments.
    """
    pool, map_options = _temporary(fn, options)
    try:
        return pool._call(fn, iterables, map_options, pool_options=True).run()
    finally:
        pool.close()


def imap(
    fn: Callable[..., T],
    /,
    *iterables: Iterable[Any],
    ordered: bool = False,
    **options: Unpack[Options],
) -> MapIterator[T]:
    """Yield an ``Outcome`` per input as items complete, on a pool made for this call.

    ``ordered=True`` yields in input order. Inputs are read lazily (at most
    ``buffer`` ahead), so an endless generator works; leaving the loop early
    stops the workers.
    """
    pool, map_options = _temporary(fn, options)
    try:
        call = pool._call(fn, iterables, map_options, ordered=ordered, pool_options=True)
    except BaseException:
        pool.close()
        raise
    return call.iterator(pool)


async def apmap(
    fn: Callable[..., T],
    /,
    *iterables: Iterable[Any] | AsyncIterable[Any],
    **options: Unpack[Options],
) -> MapResult[T]:
    """Await a map of ``fn`` without blocking the event loop (see ``pmap``).

    Inputs may be async iterables. Cancelling the awaiting task kills the
    work this map started.
    """
    pool, map_options = _temporary(fn, options)
    try:
        return await pool._call(
            fn, iterables, map_options, allow_async=True, pool_options=True
        ).arun()
    finally:
        pool.close()


def aimap(
    fn: Callable[..., T],
    /,
    *iterables: Iterable[Any] | AsyncIterable[Any],
    ordered: bool = False,
    **options: Unpack[Options],
) -> AsyncMapIterator[T]:
    """Async-iterate outcomes of ``fn`` over the inputs (see ``imap``)."""
    pool, map_options = _temporary(fn, options)
    try:
        call = pool._call(
            fn, iterables, map_options, ordered=ordered, allow_async=True, pool_options=True
        )
    except BaseException:
        pool.close()
        raise
    return call.aiterator(pool)
