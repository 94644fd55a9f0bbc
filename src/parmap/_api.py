"""The module-level maps: ``pmap``, ``imap``, ``apmap``, ``aimap``.

Each makes a pool for the call (see ``_pool``) and closes it when the map is
over. This layer only handles options and arguments; the work happens in the
engine (``_engine``) and the drivers (``_driver``).
"""

from __future__ import annotations

from collections.abc import (
    AsyncIterable,
    Callable,
    Iterable,
)
from typing import Any, TypeVar

from typing_extensions import Unpack

from ._call import map_only
from ._iterators import AsyncMapIterator, MapIterator
from ._options import Defaults, MapOptions, Options
from ._pool import Pool
from ._results import MapResult

T = TypeVar("T")


def _temporary(fn: Callable[..., Any], options: Options) -> tuple[Pool, MapOptions]:
    defaults = Defaults.build(**options)
    return Pool._for_function(defaults, fn), map_only(options)


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
