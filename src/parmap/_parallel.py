"""``@parallel``: a function that keeps its signature and gains parallel maps."""

from __future__ import annotations

import functools
import sys
import threading
from collections.abc import (
    AsyncIterable,
    Callable,
    Iterable,
)
from dataclasses import replace
from typing import Any, Generic, ParamSpec, TypeVar, overload

from typing_extensions import Unpack

from ._call import MapCall, map_only
from ._callables import callable_name
from ._iterators import AsyncMapIterator, MapIterator
from ._options import Defaults, Options
from ._pickling import main_has_no_file
from ._pool import Pool
from ._results import MapResult

P = ParamSpec("P")
T = TypeVar("T")


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
    ) -> tuple[MapCall, Pool, bool]:
        pool, _defaults, temporary = self._pool_for(options)
        try:
            call = pool._call(self, iterables, map_only(options), pool_options=True, **kwargs)
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
