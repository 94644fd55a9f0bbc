"""The executor's bookkeeping: the futures, tasks and batches of ``submit``, the runs of ``map``.

Each live scheduler job of an executor has one *owner* here: a ``_Batch`` (the
tasks of one submit job) or a ``_MapRun`` (one ``Executor.map`` call). The
pump thread hands the owner the segments of outcomes its job yields
(``deliver``) and, when the job ends without them, the error (``end``); the
owner resolves its futures by input index.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator
from concurrent.futures import Future, InvalidStateError
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from ._iterators import _exception
from ._results import TaskTimeoutError, WorkerCrashedError
from ._resume import Resume
from ._scheduler import Job, Segment

if TYPE_CHECKING:
    from ._executor_link import _Link

T = TypeVar("T")

_SUBMIT_NOTE = "parmap: raised by a task submitted to parmap.Executor"

_cancel_lock = threading.Lock()


def _resolve(future: Future[Any], value: Any = None, error: BaseException | None = None) -> None:
    """Finish ``future`` unless it was cancelled meanwhile (by another thread)."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)
    except InvalidStateError:
        pass


class _TaskFuture(Future[T]):
    """The future ``submit`` returns: ``cancel()`` also stops a running task."""

    def __init__(self, owner: _Link) -> None:
        super().__init__()
        self._owner: _Link | None = owner
        self._job: Job | None = None  # its job while live (the pump thread's)
        self._handed = False  # given to the scheduler (the pump thread sets it)
        self._cancel_seen = False

    def cancel(self) -> bool:
        """Cancel the task; if it is running, its worker is killed and replaced.

        Returns False only when the task has already finished. This is the one
        deliberate difference from ``concurrent.futures``, whose ``cancel()``
        cannot stop a running task and returns False for it.
        """
        if not super().cancel():
            return False
        with _cancel_lock:
            first, self._cancel_seen = not self._cancel_seen, True
        if first:
            # as_completed() and wait() hear of a cancellation only through
            # this call, which would otherwise come when the task's turn came.
            self.set_running_or_notify_cancel()
            owner = self._owner
            if owner is not None:
                owner.post(("cancel", self))
        return True

    def running(self) -> bool:
        """True once the task was handed to the pool, until it is done."""
        return self._handed and not self.done()


class _Task:
    """A submitted call, queued until the pool has room for it."""

    __slots__ = ("args", "fn", "future", "kwargs")

    def __init__(
        self,
        future: _TaskFuture[Any],
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        self.future = future
        self.fn = fn
        self.args = args
        self.kwargs = kwargs

    def end(self, error: BaseException) -> None:
        future = self.future
        if not future.done():
            _resolve(future, error=error)
        future._owner = future._job = None


class _Batch:
    """The tasks of one submit job, in input order (one task, or a batch of tiny ones)."""

    __slots__ = ("tasks",)

    def __init__(self, tasks: list[_Task]) -> None:
        self.tasks = tasks

    def deliver(self, segment: Segment) -> None:
        start, values, errors = segment
        tasks = self.tasks
        for index, value in enumerate(values, start):
            future = tasks[index].future
            error = errors.get(index) if errors else None
            if error is not None:
                if isinstance(error, TaskTimeoutError | WorkerCrashedError) and error.args:
                    # "item 0" names the job's input; say "the task" instead.
                    error.args = (str(error.args[0]).replace(f"item {index}", "the task", 1),)
                notes = getattr(error, "__notes__", None)
                if notes is not None and f"parmap: raised for input index {index}" in notes:
                    # The job's input index means nothing to the caller.
                    notes[notes.index(f"parmap: raised for input index {index}")] = _SUBMIT_NOTE
            _resolve(future, value, error)
            future._owner = future._job = None

    def end(self, error: BaseException) -> None:
        for task in self.tasks:
            task.end(error)

    def futures(self) -> list[Future[Any]]:
        return [task.future for task in self.tasks]


class _MapRun:
    """One ``Executor.map`` call: its job and its futures by input index.

    With a checkpoint, ``resume`` is opened by the consumer before the run is
    posted and is the pump thread's from then on, until it sets ``released``
    (after closing it); ``fed`` is set once the first inputs were handed to
    the scheduler, so ``resumed`` counts them.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        chunksize: int,
        total: int | None,
        *,
        star: bool = True,
        resume: Resume | None = None,
    ) -> None:
        self.fn = fn
        self.chunksize = chunksize
        self.total = total
        self.star = star
        self.pending: dict[int, Future[Any]] = {}
        self.count = 0
        self.job: Job | None = None
        self.cancelled = False
        self.resume = resume
        self.resumed = 0
        self.fed = threading.Event()
        self.released = threading.Event()
        self.close_error: BaseException | None = None

    def add(self, count: int) -> list[Future[Any]]:
        """Futures for the next ``count`` inputs (called by the consumer)."""
        new: list[Future[Any]] = [Future() for _ in range(count)]
        self.pending.update(zip(range(self.count, self.count + count), new, strict=True))
        self.count += count
        return new

    def deliver(self, segment: Segment) -> None:
        start, values, errors = segment
        pop = self.pending.pop
        for index, value in enumerate(values, start):
            future = pop(index, None)
            if future is None:
                continue
            error = errors.get(index) if errors else None
            _resolve(future, value, error)

    def end(self, error: BaseException) -> None:
        for future in self.futures():
            _resolve(future, error=error)
        self.pending.clear()

    def futures(self) -> list[Future[Any]]:
        return list(self.pending.values())


class ExecutorMapIterator(Generator[T, None, None]):
    """What ``Executor.map`` returns: a generator of the results in input order.

    ``resumed`` is how many of the inputs read so far came back from the
    ``checkpoint`` instead of running (always 0 without one). Without
    ``buffersize`` every input is read before ``map`` returns, so it is final
    at once; with it, it grows as inputs are read.
    """

    __slots__ = ("_inner", "_run")

    def __init__(self, inner: Generator[T, None, None], run: _MapRun) -> None:
        self._inner = inner
        self._run = run

    @property
    def resumed(self) -> int:
        """Inputs read so far whose result came from the checkpoint."""
        return self._run.resumed

    def send(self, value: None) -> T:
        """The next result (waiting for it)."""
        return self._inner.send(value)

    def throw(
        self,
        typ: type[BaseException] | BaseException,
        val: Any = None,
        tb: TracebackType | None = None,
    ) -> T:
        """Raise inside the map (it stops and cancels its work)."""
        return self._inner.throw(_exception(typ, val))

    def close(self) -> None:
        """Stop the map early; its unfinished work is cancelled."""
        self._inner.close()


_Owner = _Batch | _MapRun
_Request = tuple[Any, ...]
