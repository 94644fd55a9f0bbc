"""``parmap.Executor``: a ``concurrent.futures.Executor`` on parmap's engine.

Theory of operation
-------------------
Futures must resolve while nobody iterates, so one small *pump thread* owns
the executor's ``Engine`` and is the only thread that touches it. Other
threads (``submit``, ``cancel``, ``map``'s consumer, ``shutdown``) only append
to the executor's queues under one lock and wake the pump thread: with
``Engine.wake`` while it waits in ``Engine.pump``, or through a condition
variable while it has nothing in flight (so an idle executor costs nothing).

Submitted tasks wait in the executor's queue and become scheduler jobs only
when the pool has room (``LIVE_PER_WORKER`` jobs per worker), so the
scheduler's lists stay short however many futures wait. A task gets a job of
its own, and then the per-task promises are the scheduler's: a timeout kills
the worker, a crash fails only its job, and ``cancel`` is ``sched.cancel(job)``,
which kills the worker running it. Only tasks of a function whose calls are
known to take under a millisecond share a job (a *batch*, sent as one chunk),
because for them one message per task is what would cost the most. A ``map``
is one job, chunked as asked, with per-item deadlines. Outcomes come back as
segments of input indexes, which resolve the futures by index.

Futures stay PENDING until they resolve (``set_result`` works from PENDING),
so that a running task can still be cancelled, which the standard state
machine forbids once a future is RUNNING; ``running()`` says instead whether
the task was handed to the pool.

A ``map`` with a ``checkpoint`` opens its file in the caller (so a bad file
fails the call) and hands it to the pump thread, which skips and journals
inputs through the same ``Resume`` as the other maps, commits on the
``Job.alarm`` it sets, and closes the file when the map ends; the consumer
waits for that before its loop is over, so the next map may open the file.

Workers start from the pump thread, and forking a process that has threads
can deadlock the child (Python 3.12 warns about it). So ``start_method=None``
means ``"forkserver"`` where the platform's default is ``"fork"``, as it is
by default from Python 3.14 on; an explicit ``"fork"`` is honoured.
"""

from __future__ import annotations

import atexit
import itertools
import multiprocessing
import os
import threading
import time
import warnings
import weakref
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent import futures as cf
from concurrent.futures import Future, InvalidStateError
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.context import BaseContext
from types import TracebackType
from typing import Any, Literal, ParamSpec, Self, TypeVar

from ._checkpoint import CheckpointError
from ._engine import Engine
from ._iterators import _exception
from ._options import MapConfig, PoolConfig, StartMethod, _check_checkpoint
from ._pickling import dump_function
from ._results import TaskTimeoutError, WorkerCrashedError
from ._resume import Resume
from ._scheduler import Job, Segment

P = ParamSpec("P")
T = TypeVar("T")

#: Submit jobs the scheduler holds per worker: one running and one it may
#: queue behind it (prefetch); the rest wait in the executor's own queue.
LIVE_PER_WORKER = 2
#: Tasks of a function whose items took less than this share a job (a batch)
#: of up to ``BATCH_SECONDS`` of work, at most ``MAX_BATCH`` tasks: one
#: message then carries many of them. Slower tasks get a job each.
BATCH_ITEM_SECONDS = 0.001
BATCH_SECONDS = 0.005
MAX_BATCH = 256
#: Functions whose item time the executor remembers.
KEPT_ESTIMATES = 64
#: How long interpreter exit (or a second Ctrl-C) waits for the pump thread.
STOP_JOIN_SECONDS = 10.0
#: How often a consumer waiting for the pump thread checks that it still runs.
EVENT_POLL_SECONDS = 0.1

_SUBMIT_NOTE = "parmap: raised by a task submitted to parmap.Executor"

_executors: weakref.WeakSet[Executor] = weakref.WeakSet()
_cancel_lock = threading.Lock()
_END: Any = object()
"""What ``next`` returns for a map's exhausted input (an input may be ``None``)."""


def _resolve(future: Future[Any], value: Any = None, error: BaseException | None = None) -> None:
    """Finish ``future`` unless it was cancelled meanwhile (by another thread)."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)
    except InvalidStateError:
        pass


def _function_key(fn: Callable[..., Any]) -> tuple[str, str]:
    """What the scheduler's item-time estimates are kept under: the code, not the object.

    Keyed by object, a loop that submits a new lambda or partial each time
    would grow the estimates forever.
    """
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return (str(getattr(fn, "__module__", None)), str(name))


class _TaskFuture(Future[T]):
    """The future ``submit`` returns: ``cancel()`` also stops a running task."""

    def __init__(self, owner: Executor) -> None:
        super().__init__()
        self._owner: Executor | None = owner
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
                owner._post(("cancel", self))
        return True

    def running(self) -> bool:
        """True once the task was handed to the pool, until it is done."""
        return self._handed and not self.done()


class _Call:
    """What a submit job runs: ``fn(*args, **kwargs)`` for each ``(args, kwargs)`` input."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __call__(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return self.fn(*args, **kwargs)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_Call, (self.fn,))


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


def _start_method(
    requested: StartMethod | None, mp_context: BaseContext | None, backend: object
) -> StartMethod | None:
    if mp_context is not None:
        method: Any = mp_context.get_start_method()
        if requested is not None and requested != method:
            raise TypeError(
                f"start_method={requested!r} and mp_context (start method {method!r}) "
                "disagree; give one of them"
            )
        return method  # type: ignore[no-any-return]
    if requested is not None or backend != "process":
        return requested
    methods = multiprocessing.get_all_start_methods()
    # The first of get_all_start_methods() is the platform's default; asking
    # get_start_method() without allow_none would fix it for the whole program.
    default = multiprocessing.get_start_method(allow_none=True) or methods[0]
    if default == "fork" and "forkserver" in methods:
        return "forkserver"
    return default  # type: ignore[return-value]


class Executor(cf.Executor):
    """A ``concurrent.futures.Executor`` whose timeouts kill and whose crashes break nothing.

    Takes the pool options of ``Pool`` (``workers``, ``initializer``,
    ``initargs``, ``ignore_signals``, ``start_method``,
    ``max_tasks_per_worker``, ``backend``) and ``timeout``, the seconds one
    task may run: on expiry its worker is killed and replaced, and its future
    fails with ``TaskTimeoutError``. A worker that dies fails only the future
    of the task it ran, with ``WorkerCrashedError``. The standard names
    ``max_workers``, ``mp_context`` and ``max_tasks_per_child`` are accepted
    too, so code written for ``ProcessPoolExecutor`` runs by changing the
    import.

    Differences from ``ProcessPoolExecutor``: ``cancel()`` on a running task
    kills its worker and returns True; ``start_method=None`` never forks (it
    uses ``"forkserver"`` where the default would be ``"fork"``); at
    interpreter exit, or when ``KeyboardInterrupt`` leaves a ``with`` block,
    running tasks are stopped rather than waited for. The executor is broken
    (futures fail with ``BrokenProcessPool``, a ``BrokenExecutor``) only when
    no worker can start, e.g. when the ``initializer`` raises.
    """

    def __init__(
        self,
        workers: int | None = None,
        *,
        timeout: float | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        ignore_signals: bool = True,
        start_method: StartMethod | None = None,
        max_tasks_per_worker: int | None = None,
        max_memory_per_worker: int | str | None = None,
        backend: Any = "process",
        max_workers: int | None = None,
        mp_context: BaseContext | None = None,
        max_tasks_per_child: int | None = None,
    ) -> None:
        if max_workers is not None:
            if workers is not None and workers != max_workers:
                raise TypeError("workers and max_workers disagree; give one of them")
            workers = max_workers
        if max_tasks_per_child is not None:
            if max_tasks_per_worker is not None and max_tasks_per_worker != max_tasks_per_child:
                raise TypeError(
                    "max_tasks_per_worker and max_tasks_per_child disagree; give one of them"
                )
            max_tasks_per_worker = max_tasks_per_child
        self._config = PoolConfig(
            workers=workers,
            initializer=initializer,
            initargs=initargs,
            ignore_signals=ignore_signals,
            start_method=_start_method(start_method, mp_context, backend),
            max_tasks_per_worker=max_tasks_per_worker,
            max_memory_per_worker=max_memory_per_worker,
            backend=backend,
        )
        # A batch goes to one worker as one chunk, so its outcomes come in order.
        self._task_config = MapConfig(timeout=timeout, on_error="collect", chunksize=MAX_BATCH)
        self._timeout = timeout
        self._pid = os.getpid()
        self._cv = threading.Condition()
        # Shared with other threads, under ``_cv``:
        self._queue: deque[_Task] = deque()
        self._inbox: deque[_Request] = deque()
        self._phase: Literal["busy", "pumping", "idle"] = "busy"
        self._shutdown = False
        self._stop: Literal["drain", "terminate"] | None = None
        self._broken: BrokenProcessPool | None = None
        self._engine: Engine | None = None
        self._thread: threading.Thread | None = None
        # The pump thread's own:
        self._live: dict[Job, _Owner] = {}
        self._live_jobs = 0
        self._last_fn: Callable[..., Any] | None = None
        self._last_payload: object = None
        self._last_call: Callable[..., Any] | None = None
        self._last_call_payload: object = None
        # Seconds per item of recent functions (by code), for batching.
        self._item_seconds: dict[object, float] = {}
        # Map runs whose checkpoint is open.
        self._checkpointed: set[_MapRun] = set()
        _executors.add(self)

    # ----------------------------------------------------------- public API
    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """Schedule ``fn(*args, **kwargs)`` on a worker; return its future.

        Raises ``RuntimeError`` after ``shutdown``. When the executor is
        broken, the future returned has already failed with
        ``BrokenProcessPool``.
        """
        if not callable(fn):
            raise TypeError(f"the function to submit must be callable, got {fn!r}")
        future: _TaskFuture[T] = _TaskFuture(self)
        with self._cv:
            self._check_open()
            broken = self._broken
            if broken is None:
                self._queue.append(_Task(future, fn, args, kwargs))
                self._poke()
        if broken is not None:
            future._owner = None
            _resolve(future, error=broken)
        return future

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
        checkpoint: str | os.PathLike[str] | None = None,
    ) -> ExecutorMapIterator[T]:
        """Like ``concurrent.futures.Executor.map``, with per-item deadlines inside chunks.

        Results come in input order; the first error is raised while
        iterating; ``timeout`` limits the total wait from this call on
        (``TimeoutError``). Without ``buffersize`` the inputs are read now;
        with it (as in Python 3.14), at most ``buffersize`` chunks of inputs
        are read ahead of the consumer. Leaving the loop early stops the work.

        ``checkpoint`` is the path of a SQLite file that records each finished
        input, as for ``pmap``: running the same map again takes recorded
        successes from it instead of running them (``.resumed`` of the
        iterator returned counts them). A file in use, not a checkpoint or of
        another function raises here, before anything runs.
        """
        if isinstance(chunksize, bool) or not isinstance(chunksize, int):
            raise TypeError(f"chunksize must be an int, got {chunksize!r}")
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        if buffersize is not None and (
            isinstance(buffersize, bool) or not isinstance(buffersize, int)
        ):
            raise TypeError("buffersize must be an integer or None")
        if buffersize is not None and buffersize < 1:
            raise ValueError("buffersize must be None or > 0")
        path = _check_checkpoint(checkpoint)
        end_time = None if timeout is None else timeout + time.monotonic()
        # One iterable: its items are the inputs, as for pmap, so a checkpoint
        # fingerprints the same arguments and pmap's files resume here too.
        star = len(iterables) != 1
        source: Iterator[Any] = zip(*iterables, strict=False) if star else iter(iterables[0])
        resume: Resume | None = None
        if path is not None:
            with self._cv:
                self._check_open()
            # Defer: its commits run in the pump thread, the warning is the consumer's.
            resume = Resume(path, fn, eager=False, defer_warning=True)
            resume.open()  # in use, not ours, another function: raised before anything runs
        try:
            ahead = None if buffersize is None else buffersize * chunksize
            first = list(source if ahead is None else itertools.islice(source, ahead))
            exhausted = ahead is None or len(first) < ahead
            run = _MapRun(
                fn, chunksize, len(first) if ahead is None else None, star=star, resume=resume
            )
            waiting = deque(run.add(len(first)))
            with self._cv:
                self._check_open()
                self._inbox.append(("map", run, (first, exhausted)))
                self._poke()
        except BaseException:
            if resume is not None:
                resume.close(completed=False)
            raise
        if resume is not None:
            try:
                self._wait_for(run.fed)  # so that ``resumed`` counts what was read
            except BaseException:
                self._post(("stop map", run))
                raise

        def results() -> Generator[T, None, None]:
            nonlocal exhausted
            try:
                while waiting:
                    if not exhausted:
                        args = next(source, _END)
                        if args is _END:
                            exhausted = True
                            self._post(("feed", run, ([], True)))
                        else:
                            waiting.extend(run.add(1))
                            self._post(("feed", run, ([args], False)))
                    future = waiting.popleft()
                    left = None if end_time is None else end_time - time.monotonic()
                    try:
                        value = future.result(left)
                    finally:
                        del future  # keep no reference to a delivered result
                    yield value
            finally:
                if waiting or not exhausted:
                    # Stop what is still running for this map, as cancelling
                    # its futures would in the standard library.
                    self._post(("stop map", run))
                if resume is not None:
                    # The file is free once the map is over, for the next map.
                    self._release_here(run)
                    if resume.warning is not None:
                        warnings.warn(resume.warning, RuntimeWarning, stacklevel=3)
            if run.close_error is not None:
                raise run.close_error

        return ExecutorMapIterator(results(), run)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking tasks; with ``wait``, block until the pending ones are done.

        ``cancel_futures`` cancels the tasks that have not started. With
        ``wait=False`` nothing here blocks: the workers stop once the running
        tasks end. Safe to call more than once and from a done-callback.
        """
        with self._cv:
            if os.getpid() != self._pid:
                return
            self._shutdown = True
            queued = list(self._queue) if cancel_futures else []
            thread = self._thread
            if thread is not None and self._stop is None:
                self._stop = "drain"
                self._inbox.append(("drain", None))
                self._poke()
        for task in queued:
            task.future.cancel()
        if cancel_futures and thread is not None:
            self._post(("cancel unstarted", None))
        if wait and thread is not None:
            self._join(thread)

    def __exit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> None:
        if exc_type is not None and not issubclass(exc_type, Exception):
            # KeyboardInterrupt, SystemExit: stop now rather than wait for
            # tasks that may never end.
            self._terminate()
            thread = self._thread
            if thread is not None:
                self._join(thread)
            return
        self.shutdown(wait=True)

    def __enter__(self) -> Self:
        return self

    def __repr__(self) -> str:
        state = "shut down" if self._shutdown else "broken" if self._broken else "open"
        return f"<parmap.Executor workers={self._config.resolved_workers} {state}>"

    # ------------------------------------------------------ other threads
    def _check_open(self) -> None:
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        if os.getpid() != self._pid:
            raise RuntimeError("this Executor belongs to the process that created it")

    def _post(self, request: _Request) -> None:
        with self._cv:
            self._inbox.append(request)
            if self._thread is not None:
                self._poke()

    def _poke(self) -> None:
        """Make the pump thread look at its queues (caller holds ``_cv``)."""
        if self._thread is None:
            self._engine = Engine(self._config)
            self._thread = threading.Thread(
                target=self._pump_thread, name="parmap-executor", daemon=True
            )
            self._thread.start()
        elif self._phase == "pumping":
            assert self._engine is not None
            self._engine.sync.wake()
        elif self._phase == "idle":
            self._cv.notify()
        self._phase = "busy"

    def _terminate(self) -> None:
        """Cancel every task, kill the running ones, stop the pump thread."""
        with self._cv:
            if os.getpid() != self._pid:
                return
            self._shutdown = True
            if self._thread is not None:
                self._stop = "terminate"
                self._poke()

    def _wait_for(self, event: threading.Event) -> None:
        """Wait until the pump thread sets ``event``, or is gone.

        Never in the pump thread itself (a done-callback, or the garbage
        collector finalizing a map's iterator there): it would wait for itself.
        """
        if threading.current_thread() is self._thread:
            return
        while not event.wait(EVENT_POLL_SECONDS):
            thread = self._thread
            if thread is None or not thread.is_alive():
                return

    def _release_here(self, run: _MapRun) -> None:
        """Wait until the pump thread has closed ``run``'s checkpoint; close it if it is gone."""
        if threading.current_thread() is self._thread:
            return  # the "stop map" posted before releases it
        self._wait_for(run.released)
        if not run.released.is_set() and run.resume is not None:
            run.resume.close(completed=False)  # no pump thread left to race with
            run.released.set()

    def _join(self, thread: threading.Thread) -> None:
        if thread is threading.current_thread():
            return  # shutdown from a done-callback: the thread ends on its own
        try:
            thread.join()
        except BaseException:
            # Ctrl-C while waiting for tasks: stop them instead.
            self._terminate()
            thread.join(STOP_JOIN_SECONDS)
            raise

    # --------------------------------------------------------- pump thread
    def _pump_thread(self) -> None:
        engine = self._engine
        assert engine is not None
        try:
            while self._step(engine):
                pass
        except BaseException as exc:
            # A bug must fail the futures, not leave them waiting forever.
            self._end_all(RuntimeError(f"parmap.Executor stopped on an internal error: {exc!r}"))
            raise
        finally:
            engine.close()

    def _step(self, engine: Engine) -> bool:
        """One turn of the pump thread; False when it is done."""
        with self._cv:
            requests = list(self._inbox)
            self._inbox.clear()
            stop = self._stop
        for request in requests:
            self._handle(engine, request)
        if stop == "terminate":
            self._cancel_everything()
            return False
        self._settle(engine)  # what the last pump brought
        if self._checkpointed:
            self._tick(engine)
        if self._live_jobs < self._capacity():
            self._admit(engine)
        engine.execute()
        with self._cv:
            if self._inbox or self._stop != stop:
                return True
            if self._queue and self._live_jobs < self._capacity() and self._broken is None:
                return True
            if not self._live:
                if self._stop is not None and not self._queue:
                    return False
                self._phase = "idle"
                self._cv.wait()
                return True
            self._phase = "pumping"
        try:
            engine.sync.pump()
        finally:
            with self._cv:
                self._phase = "busy"
        return True

    def _capacity(self) -> int:
        return LIVE_PER_WORKER * self._config.resolved_workers

    def _handle(self, engine: Engine, request: _Request) -> None:
        kind = request[0]
        if kind == "cancel":
            self._cancel_task(engine, request[1])
        elif kind == "map":
            run: _MapRun = request[1]
            try:
                self._start_map(engine, run, *request[2])
            finally:
                run.fed.set()
        elif kind == "feed":
            self._feed(engine, request[1], *request[2])
        elif kind == "drain":
            # Lazy maps take no more input after shutdown, as the standard
            # map's next submit() would raise: what was read still runs.
            for job, owner in self._live.items():
                if isinstance(owner, _MapRun):
                    engine.sched.end_input(job)
        elif kind == "stop map":
            run = request[1]
            stopped = run.job
            if stopped is not None and self._live.pop(stopped, None) is not None:
                engine.finish(stopped, cancel=True)  # kills the workers running it
            for future in run.futures():
                future.cancel()
            run.pending.clear()
            self._release(run, completed=False)
        elif kind == "cancel unstarted":
            for job, owner in list(self._live.items()):
                if isinstance(owner, _Batch) and job.running == 0 and not job.finished:
                    self._drop(engine, job)
                    for future in owner.futures():
                        future.cancel()

    def _start_map(self, engine: Engine, run: _MapRun, args: list[Any], exhausted: bool) -> None:
        payload = self._payload(engine, run.fn)
        if isinstance(payload, BaseException):
            run.end(payload)
            self._release(run, completed=False)
            return
        run.job = engine.sched.new_job(
            MapConfig(timeout=self._timeout, on_error="collect", chunksize=run.chunksize),
            fn_payload=payload,
            star=run.star,
            ordered=False,
            total=run.total,
            fn_key=_function_key(run.fn),
        )
        self._live[run.job] = run
        if run.resume is not None:
            run.resume.attach(run.job)
            self._checkpointed.add(run)
        self._feed(engine, run, args, exhausted)

    def _tick(self, engine: Engine) -> None:
        """Commit the checkpoints whose records are due."""
        now = time.monotonic()
        for run in list(self._checkpointed):
            assert run.resume is not None
            try:
                run.resume.tick(now)
            except CheckpointError as exc:
                self._fail_map(engine, run, exc)

    def _fail_map(self, engine: Engine, run: _MapRun, error: BaseException) -> None:
        """Stop a map whose checkpoint failed: its waiting futures get ``error``."""
        job = run.job
        if job is not None and self._live.pop(job, None) is not None:
            engine.finish(job, cancel=True)
        run.end(error)
        self._release(run, completed=False)

    def _release(self, run: _MapRun, *, completed: bool) -> None:
        """Commit the rest of ``run``'s checkpoint and close it (once)."""
        resume = run.resume
        if resume is None or run.released.is_set():
            return
        self._checkpointed.discard(run)
        try:
            resume.close(completed=completed)
        except Exception as exc:
            run.close_error = exc  # the consumer raises it once the results are out
        finally:
            run.released.set()

    def _drop(self, engine: Engine, job: Job) -> None:
        """Stop a submit job (killing its worker if it runs) and forget it."""
        del self._live[job]
        self._live_jobs -= 1
        engine.finish(job, cancel=True)

    def _cancel_task(self, engine: Engine, future: _TaskFuture[Any]) -> None:
        job = future._job
        owner = self._live.get(job) if job is not None else None
        if job is None or not isinstance(owner, _Batch):
            return  # still queued (it is skipped there) or already over
        if job.running > 0 and len(owner.tasks) > 1:
            # A batch of tiny tasks already sent: stopping one would kill its
            # neighbours too (or, queued behind another chunk, not stop it).
            # It runs, and its outcome is dropped.
            return
        # Not sent yet, or a task of its own that a worker runs: stop the job
        # (killing that worker) and queue again, in order, the other tasks of
        # a batch that had not been sent.
        self._drop(engine, job)
        rest = [t for t in owner.tasks if not t.future.done()]
        for task in rest:
            task.future._handed = False
            task.future._job = None
        with self._cv:
            self._queue.extendleft(reversed(rest))

    def _feed(self, engine: Engine, run: _MapRun, args: list[Any], exhausted: bool) -> None:
        job = run.job
        if job is None or job not in self._live:
            return
        if job.exhausted:  # input ended by shutdown: fail what came after
            error = RuntimeError("cannot schedule new futures after shutdown")
            for index in range(job.pulled, run.count):
                future = run.pending.pop(index, None)
                if future is not None:
                    _resolve(future, error=error)
            return
        resume = run.resume
        if resume is None:
            engine.sched.feed(job, args, time.monotonic())
        else:
            try:
                resume.feed(engine, job, args, time.monotonic())
            except CheckpointError as exc:
                self._fail_map(engine, run, exc)
                return
            run.resumed = job.resumed
        if exhausted:
            engine.sched.end_input(job)

    def _payload(self, engine: Engine, fn: Callable[..., Any]) -> object:
        """The function as workers get it, or the exception saying why it cannot go."""
        if fn is self._last_fn:
            return self._last_payload
        caps = engine.backend.capabilities
        if caps.in_process:
            payload: object = fn  # threads and the caller run the object itself
        else:
            try:
                payload = dump_function(fn, caps.start_method)
            except TypeError as exc:
                return exc
        self._last_fn, self._last_payload = fn, payload
        return payload

    def _batch_size(self, fn: Callable[..., Any]) -> int:
        """How many tasks of ``fn`` may share a job: more than one only for tiny ones."""
        seconds = self._item_seconds.get(_function_key(fn))
        if seconds is None or seconds >= BATCH_ITEM_SECONDS:
            return 1
        return max(1, min(MAX_BATCH, int(BATCH_SECONDS / max(seconds, 1e-7))))

    def _admit(self, engine: Engine) -> None:
        """Turn queued tasks into jobs while the pool has room for them."""
        room = self._capacity() - self._live_jobs
        batches: list[list[_Task]] = []
        with self._cv:
            if self._broken is not None:
                return
            queue = self._queue
            while queue and len(batches) < room:
                task = queue.popleft()
                if task.future.cancelled():
                    continue  # its cancel() told the waiters already
                batch = [task]
                size = self._batch_size(task.fn)
                while len(batch) < size and queue and queue[0].fn is task.fn:
                    batch.append(queue.popleft())
                batches.append(batch)
        sched = engine.sched
        now = time.monotonic()
        for batch in batches:
            fn = batch[0].fn
            tasks = [t for t in batch if not t.future.cancelled()]
            if not tasks:
                continue
            payload = self._call_payload(engine, fn)
            if isinstance(payload, BaseException):
                for task in tasks:
                    task.end(payload)
                continue
            job = sched.new_job(
                self._task_config,
                fn_payload=payload,
                star=True,
                ordered=False,
                total=len(tasks),
                fn_key=_function_key(fn),
            )
            sched.feed(job, [(t.args, t.kwargs) for t in tasks], now)
            sched.end_input(job)
            for task in tasks:
                task.future._handed = True
                task.future._job = job
            self._live[job] = _Batch(tasks)
            self._live_jobs += 1

    def _call_payload(self, engine: Engine, fn: Callable[..., Any]) -> object:
        """The payload of a submit job running ``fn`` (the last one is kept)."""
        if fn is self._last_call:
            return self._last_call_payload
        payload = self._payload(engine, _Call(fn))
        self._last_call, self._last_call_payload = fn, payload
        return payload

    def _settle(self, engine: Engine) -> None:
        """Resolve the futures of outcomes that arrived; forget finished jobs."""
        broken = engine.sched.broken
        if broken is not None and self._broken is None:
            self._break(broken)
        for job, owner in list(self._live.items()):
            while (segment := job.take()) is not None:
                owner.deliver(segment)
            if job.finished:
                del self._live[job]
                if isinstance(owner, _Batch):
                    self._live_jobs -= 1
                    if job.item_time is not None:
                        self._remember(job.fn_key, job.item_time)
                error = job.error
                if error is not None and error is broken:
                    error = self._broken
                if isinstance(owner, _MapRun):
                    self._release(owner, completed=error is None)
                owner.end(error or RuntimeError("parmap.Executor: the task ended without outcome"))
                engine.finish(job, cancel=False)

    def _remember(self, key: object, seconds: float) -> None:
        estimates = self._item_seconds
        estimates.pop(key, None)
        if len(estimates) >= KEPT_ESTIMATES:
            del estimates[next(iter(estimates))]
        estimates[key] = seconds

    def _break(self, cause: BaseException) -> None:
        broken = BrokenProcessPool(
            "no worker of this parmap.Executor can start "
            f"({type(cause).__name__}: {cause}); it cannot run tasks"
        )
        broken.__cause__ = cause
        with self._cv:
            self._broken = broken
            queued = list(self._queue)
            self._queue.clear()
        for task in queued:
            task.end(broken)

    def _cancel_everything(self) -> None:
        with self._cv:
            queued = list(self._queue)
            self._queue.clear()
        for task in queued:
            task.future.cancel()
        for owner in self._live.values():
            for future in owner.futures():
                future.cancel()
        self._live.clear()
        self._live_jobs = 0
        self._release_all()

    def _release_all(self) -> None:
        """Close every open checkpoint (the pump thread is about to end)."""
        for run in list(self._checkpointed):
            self._release(run, completed=False)

    def _end_all(self, error: BaseException) -> None:
        with self._cv:
            self._shutdown = True
            queued = list(self._queue)
            self._queue.clear()
        for task in queued:
            task.end(error)
        for owner in self._live.values():
            owner.end(error)
        self._live.clear()
        self._release_all()


@atexit.register
def _stop_at_exit() -> None:
    # Registered after the engine's own exit hook, so it runs first: the pump
    # threads close their engines themselves, from their own thread.
    executors = list(_executors)
    for executor in executors:
        executor._terminate()
    for executor in executors:
        thread = executor._thread
        if thread is not None and executor._pid == os.getpid():
            thread.join(STOP_JOIN_SECONDS)
