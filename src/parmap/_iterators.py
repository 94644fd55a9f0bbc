"""The iterators ``imap`` and ``aimap`` return: generators that also carry ``.stats``."""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncGenerator, Callable, Generator, Iterator
from itertools import chain
from types import TracebackType
from typing import Any, TypeVar

from ._driver import WithErrors, segment_outcomes, segment_values
from ._results import Outcome
from ._scheduler import Segment
from ._stats import MapStats

T = TypeVar("T")


class _Progress:
    """Where a ``MapIterator`` stands: what it handed over and its figures.

    Apart from the iterator, so that nothing it owns refers back to it: an
    iterator left in a ``for`` loop (by ``break`` or an exception) must be
    freed at once, which stops its map and releases its checkpoint.
    """

    __slots__ = ("current", "source", "stats", "taken")

    def __init__(self, source: Callable[[], MapStats | None]) -> None:
        self.source: Callable[[], MapStats | None] | None = source
        self.stats: MapStats | None = None
        self.current: Iterator[Any] = _EMPTY
        self.taken = False

    def outcomes_of(self, segment: Segment) -> Iterator[Outcome[Any]]:
        self.taken = True
        self.current = outcomes = segment_outcomes(segment)
        return outcomes

    def values_of(self, segment: Segment) -> Iterator[Any]:
        self.current = values = segment_values(segment)
        return values

    def finish(self) -> None:
        if self.source is not None:
            self.stats = self.source()
            self.source = None  # it holds the map's inputs

    def stop(self) -> None:
        # What was already taken from the map is not given once it ended.
        current, self.current = self.current, _EMPTY
        if isinstance(current, WithErrors):
            current.stop()
        else:
            deque(current, maxlen=0)  # a list's iterator, at C speed


def _watch(
    inner: Generator[Segment, None, None], progress: _Progress
) -> Generator[Segment, None, None]:
    """``inner``'s segments; the figures are taken when it ends, or raises."""
    try:
        yield from inner
    except GeneratorExit:  # left early: no figures
        raise
    except BaseException:
        progress.finish()
        raise
    progress.finish()


class MapIterator(Generator[Outcome[T], None, None]):
    """``imap``'s generator of outcomes; ``stats`` is the map's ``MapStats``
    once the iterator is exhausted, or ended by the map's error (``None``
    before, and after leaving it early). ``values()`` gives plain values."""

    __slots__ = ("_inner", "_next", "_progress")

    def __init__(
        self,
        inner: Generator[Segment, None, None],
        source: Callable[[], MapStats | None],
    ) -> None:
        self._progress = progress = _Progress(source)
        self._inner = _watch(inner, progress)
        # The map yields segments of outcomes; a C-level chain flattens them,
        # so no generator frame is resumed per item.
        self._next: Callable[[], Any] = chain.from_iterable(
            map(progress.outcomes_of, self._inner)
        ).__next__

    @property
    def stats(self) -> MapStats | None:
        """The map's figures once every outcome was taken, else ``None``."""
        return self._progress.stats

    def values(self) -> Iterator[T]:
        """The values alone, in the order the outcomes would come.

        Faster than taking ``outcome.value``: no ``Outcome`` is built. An
        item's error is raised where its value would be (as ``unwrap()``
        would), and the iteration may go on after it. Call it before taking
        any outcome; ``close()`` on this iterator still stops the map.
        """
        progress = self._progress
        if progress.taken:
            raise RuntimeError("values() must be called before any outcome is taken")
        progress.taken = True
        self._next = _taken_over
        return chain.from_iterable(map(progress.values_of, self._inner))

    def __next__(self) -> Outcome[T]:
        """The next outcome (one call per item: not through ``send``)."""
        return self._next()  # type: ignore[no-any-return]

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
        self._progress.source = None  # ended from outside: no figures
        self._inner.throw(_exception(typ, val))
        # The map caught it and went on: its next outcome.
        return self.__next__()  # pragma: no cover - parmap's maps never do

    def close(self) -> None:
        """Stop the map early; its unfinished work is cancelled."""
        self._end()
        self._inner.close()

    def _end(self) -> None:
        self._next = _EMPTY.__next__
        self._progress.stop()


def _taken_over() -> Any:
    raise RuntimeError("this map's values() took its outcomes")


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
