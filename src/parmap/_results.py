"""What a map hands back: per-item outcomes, the ordered result, the errors.

Exceptions raised in a worker travel back as data (see ``_codec.encode_error``)
and are rebuilt here: the original type where it can be unpickled, with the
remote traceback attached as ``__cause__`` (as ``concurrent.futures`` does) and
the input index added as a note.
"""

from __future__ import annotations

import contextlib
import pickle
import signal
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, overload

from ._memory import format_size
from ._stats import MapStats

T = TypeVar("T")

__all__ = [
    "MapResult",
    "Outcome",
    "RemoteError",
    "TaskTimeoutError",
    "WorkerCrashedError",
    "WorkerMemoryError",
]


class TaskTimeoutError(TimeoutError):
    """An item ran longer than ``timeout`` seconds.

    With worker processes its worker was killed (``stopped`` is true); the
    thread, executor and dask backends cannot stop it and abandon it instead.
    """

    def __init__(self, index: int, timeout: float, stopped: bool = True) -> None:
        what = "its worker was killed" if stopped else "it was abandoned, not stopped"
        super().__init__(f"item {index} did not finish within {timeout:g} s; {what}")
        self.index = index
        self.timeout = timeout
        self.stopped = stopped

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.index, self.timeout, self.stopped))


class WorkerCrashedError(RuntimeError):
    """The worker running an item died (segfault, ``os._exit``, killed by the OS).

    ``exitcode`` follows ``multiprocessing``: a negative number is the signal
    that killed the process, also available as ``signal``. ``hint`` says
    what parmap knows of the cause, when it knows more than the exit code.
    """

    def __init__(self, index: int, exitcode: int | None, hint: str | None = None) -> None:
        self.index = index
        self.exitcode = exitcode
        #: Why it probably died, when parmap can tell (e.g. the OOM killer).
        self.hint = hint
        message = f"the worker running item {index} died ({describe_exit(exitcode)})"
        super().__init__(f"{message}; {hint}" if hint else message)

    @property
    def signal(self) -> signal.Signals | None:
        """The signal that killed the worker, or ``None`` if it exited."""
        if self.exitcode is not None and self.exitcode < 0:
            try:
                return signal.Signals(-self.exitcode)
            except ValueError:
                return None
        return None

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.index, self.exitcode, self.hint))


class WorkerMemoryError(WorkerCrashedError):
    """An item's worker went over ``max_memory_per_worker`` and was killed.

    ``limit`` is the option in bytes, ``rss`` the resident memory read when
    the worker was found over it. The worker was replaced; other items go on.
    """

    def __init__(self, index: int, limit: int, rss: int) -> None:
        super().__init__(index, -signal.SIGKILL)
        self.limit = limit
        self.rss = rss
        self.args = (
            f"the worker running item {index} used {format_size(rss)} of resident memory, "
            f"over max_memory_per_worker ({format_size(limit)}); it was killed and replaced",
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.index, self.limit, self.rss))


class RemoteError(Exception):
    """An exception from a worker that could not be rebuilt in the parent.

    Used when the exception cannot be pickled or unpickled, and for
    ``BaseException`` subclasses such as ``SystemExit`` or
    ``KeyboardInterrupt`` raised by a task, which must not stop the parent.
    """

    def __init__(self, type_name: str, message: str, traceback: str) -> None:
        super().__init__(f"{type_name}: {message}" if message else type_name)
        self.type_name = type_name
        self.message = message
        self.traceback = traceback

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.type_name, self.message, self.traceback))


class _RemoteTraceback(Exception):
    """Carries the worker's traceback text; shown as the cause of the error."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f'\n"""\n{self.text}"""'


def describe_exit(exitcode: int | None) -> str:
    """Say how a process ended, e.g. ``killed by SIGSEGV`` or ``exit code 3``."""
    if exitcode is None:
        return "exit status unknown"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


ErrorPayload = tuple[bytes | None, str, str, str]
"""An exception as it crosses the pipe: pickled form or None, type, message, traceback."""


def rebuild_error(payload: ErrorPayload) -> BaseException:
    """Turn an error payload from a worker back into an exception."""
    data, type_name, message, tb_text = payload
    exc: BaseException | None = None
    if data is not None:
        try:
            loaded = pickle.loads(data)
        except (Exception, SystemExit):
            loaded = None
        if isinstance(loaded, Exception):
            exc = loaded
    if exc is None:
        exc = RemoteError(type_name, message, tb_text)
    set_dunder(exc, "__traceback__", None)  # never a frame of ours (see _codec.encode_error)
    if tb_text:
        set_dunder(exc, "__cause__", _RemoteTraceback(tb_text))
    return exc


def set_dunder(exc: BaseException, name: str, value: object) -> None:
    """Set ``exc.__traceback__``, ``__cause__`` or ``__notes__``, whatever its class says.

    The interpreter sets the first two without asking the class (``raise ...
    from``); a frozen dataclass exception, whose ``__setattr__`` refuses every
    name, must not make parmap fail where Python itself would not.
    """
    with contextlib.suppress(Exception):
        object.__setattr__(exc, name, value)


def add_note(exc: BaseException, note: str) -> None:
    """Add ``note`` to ``exc`` once, whatever ``exc.__notes__`` holds.

    ``BaseException.add_note`` refuses a ``__notes__`` that is not a list
    (a tuple, say) and goes through the class's ``__setattr__`` (refused by a
    frozen dataclass): the notes are then rebuilt as a list, keeping the old
    ones. A note that cannot be added at all is dropped: it is a courtesy,
    and the outcome says which input failed anyway.
    """
    try:
        notes = getattr(exc, "__notes__", None)
        if notes is None:
            set_dunder(exc, "__notes__", [note])
        elif type(notes) is list:
            if not any(type(n) is str and n == note for n in notes):
                notes.append(note)
        else:
            old = list(notes) if isinstance(notes, list | tuple) else [notes]
            if not any(type(n) is str and n == note for n in old):
                set_dunder(exc, "__notes__", [*old, note])
    except Exception:
        pass


def mark_index(exc: BaseException, index: int) -> BaseException:
    """Record on ``exc`` which input it came from (once)."""
    add_note(exc, f"parmap: raised for input index {index}")
    return exc


@dataclass(frozen=True, slots=True)
class Outcome(Generic[T]):
    """The outcome of one input: its ``index`` and either a ``value`` or an ``error``."""

    index: int
    value: T | None = None
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        """True when the item produced a value."""
        return self.error is None

    def unwrap(self) -> T:
        """Return the value, or raise the captured exception."""
        if self.error is not None:
            raise self.error
        return self.value  # type: ignore[return-value]


class _Building(Generic[T]):
    """An ``Outcome`` under construction: the same slots, plain assignment.

    A frozen dataclass sets each field through ``object.__setattr__``, which
    made building the outcomes most of what ``imap`` cost the parent per
    item; this sets the slots directly, then becomes the ``Outcome`` (same
    layout), frozen from then on.
    """

    __slots__ = ("error", "index", "value")

    def __init__(self, index: int, value: T | None = None, error: BaseException | None = None):
        self.index = index
        self.value = value
        self.error = error
        self.__class__ = Outcome  # type: ignore[assignment]


#: ``outcome(index, value, error=None)`` is ``Outcome(index, value, error)``, faster.
outcome: Callable[..., Outcome[Any]] = _Building  # type: ignore[assignment]


class MapResult(Sequence[T]):
    """The result of a map: one slot per input, in input order.

    ``res[i]`` returns the value of slot ``i`` or raises its captured
    exception. ``values`` has ``None`` in failed slots, ``errors`` maps input
    index to exception, ``ok`` is true when nothing failed, and ``unwrap()``
    returns every value or raises an ``ExceptionGroup`` of all failures.
    """

    __slots__ = ("_errors", "_resumed", "_stats", "_values")

    def __init__(
        self,
        values: list[T | None],
        errors: dict[int, BaseException],
        stats: MapStats | None = None,
        *,
        resumed: int = 0,
    ) -> None:
        self._values = values
        self._errors = errors
        self._stats = stats
        self._resumed = resumed

    @classmethod
    def from_outcomes(cls, outcomes: Sequence[Outcome[T]]) -> MapResult[T]:
        """Build a result from outcomes whose indexes are ``0 .. len-1``."""
        values: list[T | None] = [None] * len(outcomes)
        errors: dict[int, BaseException] = {}
        for out in outcomes:
            if out.error is None:
                values[out.index] = out.value
            else:
                errors[out.index] = out.error
        return cls(values, dict(sorted(errors.items())))

    @property
    def values(self) -> list[T | None]:
        """The values in input order, ``None`` where the item failed."""
        return list(self._values)

    @property
    def errors(self) -> dict[int, BaseException]:
        """Captured exceptions by input index, in index order."""
        return dict(self._errors)

    @property
    def stats(self) -> MapStats:
        """What the map spent its time on (all zeros for a result built by hand)."""
        return self._stats if self._stats is not None else MapStats()

    @property
    def ok(self) -> bool:
        """True when every item succeeded."""
        return not self._errors

    @property
    def resumed(self) -> int:
        """How many items came back from the ``checkpoint`` instead of running again."""
        return self._resumed

    def unwrap(self) -> list[T]:
        """Return all values, or raise an ``ExceptionGroup`` of every failure."""
        if self._errors:
            failures = [_as_exception(e) for e in self._errors.values()]
            raise ExceptionGroup(f"{len(failures)} of {len(self._values)} items failed", failures)
        return list(self._values)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self._values)

    @overload
    def __getitem__(self, index: int) -> T: ...

    @overload
    def __getitem__(self, index: slice) -> list[T]: ...

    def __getitem__(self, index: int | slice) -> T | list[T]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self._values)))]
        if index < 0:
            index += len(self._values)
        if not 0 <= index < len(self._values):
            raise IndexError("MapResult index out of range")
        error = self._errors.get(index)
        if error is not None:
            raise error
        return self._values[index]  # type: ignore[return-value]

    def __iter__(self) -> Iterator[T]:
        for i in range(len(self._values)):
            yield self[i]

    def __repr__(self) -> str:
        return f"<MapResult: {len(self._values)} items, {len(self._errors)} failed>"


def _as_exception(error: BaseException) -> Exception:
    # ExceptionGroup only holds Exception instances; workers already turn
    # other BaseExceptions into RemoteError, so this is a safety net.
    if isinstance(error, Exception):
        return error
    return RemoteError(type(error).__name__, str(error), "")
