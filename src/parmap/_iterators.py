"""The iterators ``imap`` and ``aimap`` return: generators that also carry ``.stats``."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Generator, Iterator
from itertools import chain
from types import TracebackType
from typing import Any, TypeVar

from ._results import Outcome
from ._stats import MapStats

T = TypeVar("T")


class MapIterator(Generator[Outcome[T], None, None]):
    """``imap``'s generator of outcomes; ``stats`` is the map's ``MapStats``
    once the iterator is exhausted, or ended by the map's error (``None``
    before, and after leaving it early)."""

    __slots__ = ("_inner", "_next", "_source", "_stats")

    def __init__(
        self,
        inner: Generator[Iterator[Outcome[T]], None, None],
        source: Callable[[], MapStats | None],
    ) -> None:
        # The map yields an iterator of outcomes per segment; a C-level chain
        # flattens them, so no generator frame is resumed per item.
        self._inner = inner
        self._next: Callable[[], Outcome[T]] = chain.from_iterable(inner).__next__
        self._source: Callable[[], MapStats | None] | None = source
        self._stats: MapStats | None = None

    @property
    def stats(self) -> MapStats | None:
        """The map's figures once every outcome was taken, else ``None``."""
        return self._stats

    def _finish(self) -> None:
        if self._source is not None:
            self._stats = self._source()
            self._source = None  # it holds the map's inputs

    def _end(self) -> None:
        # The outcomes already taken from the map are not given once it ended.
        self._next = _EMPTY.__next__

    def __next__(self) -> Outcome[T]:
        """The next outcome (one call per item: not through ``send``)."""
        try:
            return self._next()
        except BaseException:
            self._finish()
            raise

    def send(self, value: None) -> Outcome[T]:
        """Resume the map; the next outcome."""
        return self.__next__()

    def throw(
        self,
        typ: type[BaseException] | BaseException,
        val: Any = None,
        tb: TracebackType | None = None,
    ) -> Outcome[T]:
        """Raise inside the map (it stops and cancels its work)."""
        self._end()
        self._inner.throw(_exception(typ, val))
        # The map caught it and went on: its next outcome.
        return self.__next__()  # pragma: no cover - parmap's maps never do

    def close(self) -> None:
        """Stop the map early; its unfinished work is cancelled."""
        self._end()
        self._inner.close()


_EMPTY: Iterator[Any] = iter(())


class AsyncMapIterator(AsyncGenerator[Outcome[T], None]):
    """``aimap``'s async generator of outcomes; ``stats`` as for ``MapIterator``."""

    __slots__ = ("_inner", "_source", "_stats")

    def __init__(
        self, inner: AsyncGenerator[Outcome[T], None], source: Callable[[], MapStats | None]
    ) -> None:
        self._inner = inner
        self._source: Callable[[], MapStats | None] | None = source
        self._stats: MapStats | None = None

    @property
    def stats(self) -> MapStats | None:
        """The map's figures once every outcome was taken, else ``None``."""
        return self._stats

    async def asend(self, value: None) -> Outcome[T]:
        """Resume the map; the next outcome."""
        try:
            return await self._inner.asend(value)
        except BaseException:
            # Stopped or raised: either way the map is over.
            if self._source is not None:
                self._stats = self._source()
                self._source = None
            raise

    async def athrow(
        self,
        typ: type[BaseException] | BaseException,
        val: Any = None,
        tb: TracebackType | None = None,
    ) -> Outcome[T]:
        """Raise inside the map (it stops and cancels its work)."""
        return await self._inner.athrow(_exception(typ, val))

    async def aclose(self) -> None:
        """Stop the map early; its unfinished work is cancelled."""
        await self._inner.aclose()


def _exception(typ: type[BaseException] | BaseException, val: Any) -> BaseException:
    """The exception that ``throw``'s legacy (type, value) signature means."""
    if isinstance(typ, BaseException):
        return typ
    if isinstance(val, BaseException):
        return val
    return typ() if val is None else typ(val)
