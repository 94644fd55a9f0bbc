"""``Pool``: worker processes kept for many maps."""

from __future__ import annotations

import os
import threading
from collections.abc import (
    AsyncIterable,
    Callable,
    Iterable,
)
from typing import Any, Self, TypeVar

from typing_extensions import Unpack

from ._call import MapCall, check_call
from ._engine import Engine
from ._iterators import AsyncMapIterator, MapIterator
from ._notebook import watch_kernel_shutdown
from ._options import Defaults, MapOptions, Options
from ._results import MapResult

T = TypeVar("T")


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
    ) -> MapCall:
        config = self._defaults.merged(options, pool_options=pool_options).map
        check_call(fn, iterables, allow_async=allow_async)
        if not isinstance(ordered, bool):
            raise TypeError(f"ordered must be a bool, got {ordered!r}")
        return MapCall(self._get_engine(), fn, iterables, config, ordered=ordered)

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
