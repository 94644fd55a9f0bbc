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
the worker, a crash fails only its job, and ``cancel`` is
``engine.finish(job, cancel=True)``, which kills the worker running it. Only
tasks of a function whose calls are known to take under a millisecond share a
job (a *batch*, sent as one chunk), because for them one message per task is
what would cost the most. A ``map`` is one job, chunked as asked, with
per-item deadlines. Outcomes come back as segments of input indexes, which
resolve the futures by index.

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

Layout: this module holds the public class and the consumer's side of
``map``; ``_executor_link`` what the callers and the pump thread share (and
the exit hook); ``_executor_pump`` the pump thread; ``_executor_runs`` the
futures, tasks, batches and map runs it resolves; ``_executor_functions`` the
payloads workers get and how tasks are batched.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent import futures as cf
from concurrent.futures import Future
from multiprocessing.context import BaseContext
from typing import Any, ParamSpec, Self, TypeVar

from ._executor_functions import MAX_BATCH
from ._executor_link import _Link
from ._executor_runs import ExecutorMapIterator as ExecutorMapIterator
from ._executor_runs import _MapRun, _resolve, _Task, _TaskFuture
from ._options import MapConfig, PoolConfig, StartMethod, _check_checkpoint
from ._resume import Resume

P = ParamSpec("P")
T = TypeVar("T")

_END: Any = object()
"""What ``next`` returns for a map's exhausted input (an input may be ``None``)."""


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


def _alias(name: str, value: int | None, std_name: str, std_value: int | None) -> int | None:
    """``value``, or the standard library's name for the option, which must agree with it."""
    if std_value is None:
        return value
    if value is not None and value != std_value:
        raise TypeError(f"{name} and {std_name} disagree; give one of them")
    return std_value


def _check_map_sizes(chunksize: int, buffersize: int | None) -> None:
    if isinstance(chunksize, bool) or not isinstance(chunksize, int):
        raise TypeError(f"chunksize must be an int, got {chunksize!r}")
    if chunksize < 1:
        raise ValueError("chunksize must be >= 1.")
    if buffersize is not None and (isinstance(buffersize, bool) or not isinstance(buffersize, int)):
        raise TypeError("buffersize must be an integer or None")
    if buffersize is not None and buffersize < 1:
        raise ValueError("buffersize must be None or > 0")


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
        workers = _alias("workers", workers, "max_workers", max_workers)
        max_tasks_per_worker = _alias(
            "max_tasks_per_worker", max_tasks_per_worker, "max_tasks_per_child", max_tasks_per_child
        )
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
        task_config = MapConfig(timeout=timeout, on_error="collect", chunksize=MAX_BATCH)
        self._link = _Link(self._config, task_config, timeout)

    @property
    def _thread(self) -> threading.Thread | None:
        """The pump thread, once started."""
        return self._link.thread

    # ----------------------------------------------------------- public API
    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """Schedule ``fn(*args, **kwargs)`` on a worker; return its future.

        Raises ``RuntimeError`` after ``shutdown``. When the executor is
        broken, the future returned has already failed with
        ``BrokenProcessPool``.
        """
        if not callable(fn):
            raise TypeError(f"the function to submit must be callable, got {fn!r}")
        link = self._link
        future: _TaskFuture[T] = _TaskFuture(link)
        with link.cv:
            link.check_open()
            broken = link.broken
            if broken is None:
                link.queue.append(_Task(future, fn, args, kwargs))
                link.poke()
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
        _check_map_sizes(chunksize, buffersize)
        path = _check_checkpoint(checkpoint)
        end_time = None if timeout is None else timeout + time.monotonic()
        # One iterable: its items are the inputs, as for pmap, so a checkpoint
        # fingerprints the same arguments and pmap's files resume here too.
        star = len(iterables) != 1
        source: Iterator[Any] = zip(*iterables, strict=False) if star else iter(iterables[0])
        resume = None if path is None else self._open_checkpoint(path, fn)
        try:
            run, waiting, exhausted = self._start_run(
                fn, source, chunksize, buffersize, star=star, resume=resume
            )
        except BaseException:
            if resume is not None:
                resume.close(completed=False)
            raise
        if resume is not None:
            try:
                self._link.wait_for(run.fed)  # so that ``resumed`` counts what was read
            except BaseException:
                self._link.post(("stop map", run))
                raise
        return ExecutorMapIterator(self._results(run, source, waiting, exhausted, end_time), run)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking tasks; with ``wait``, block until the pending ones are done.

        ``cancel_futures`` cancels the tasks that have not started. With
        ``wait=False`` nothing here blocks: the workers stop once the running
        tasks end. Safe to call more than once and from a done-callback.
        """
        link = self._link
        with link.cv:
            if os.getpid() != link.pid:
                return
            link.shutdown = True
            queued = list(link.queue) if cancel_futures else []
            thread = link.thread
            if thread is not None and link.stop is None:
                link.stop = "drain"
                link.inbox.append(("drain", None))
                link.poke()
        for task in queued:
            task.future.cancel()
        if cancel_futures and thread is not None:
            link.post(("cancel unstarted", None))
        if wait and thread is not None:
            link.join(thread)

    def __exit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> None:
        if exc_type is not None and not issubclass(exc_type, Exception):
            # KeyboardInterrupt, SystemExit: stop now rather than wait for
            # tasks that may never end.
            self._link.terminate()
            thread = self._thread
            if thread is not None:
                self._link.join(thread)
            return
        self.shutdown(wait=True)

    def __enter__(self) -> Self:
        return self

    def __repr__(self) -> str:
        link = self._link
        state = "shut down" if link.shutdown else "broken" if link.broken else "open"
        return f"<parmap.Executor workers={self._config.resolved_workers} {state}>"

    # ------------------------------------------------------------ map's side
    def _open_checkpoint(self, path: str, fn: Callable[..., Any]) -> Resume:
        """The map's checkpoint, open: in use, not ours, another function raise here."""
        with self._link.cv:
            self._link.check_open()
        # Defer: its commits run in the pump thread, the warning is the consumer's.
        resume = Resume(path, fn, eager=False, defer_warning=True)
        resume.open()  # in use, not ours, another function: raised before anything runs
        return resume

    def _start_run(
        self,
        fn: Callable[..., Any],
        source: Iterator[Any],
        chunksize: int,
        buffersize: int | None,
        *,
        star: bool,
        resume: Resume | None,
    ) -> tuple[_MapRun, deque[Future[Any]], bool]:
        """Read the first inputs (all without ``buffersize``), hand the map to the pump thread.

        Returns the map's run, the futures of the inputs read, and whether
        ``source`` is exhausted.
        """
        ahead = None if buffersize is None else buffersize * chunksize
        first = list(source if ahead is None else itertools.islice(source, ahead))
        exhausted = ahead is None or len(first) < ahead
        run = _MapRun(
            fn, chunksize, len(first) if ahead is None else None, star=star, resume=resume
        )
        waiting = deque(run.add(len(first)))
        self._link.post_open(("map", run, (first, exhausted)))
        return run, waiting, exhausted

    def _results(
        self,
        run: _MapRun,
        source: Iterator[Any],
        waiting: deque[Future[Any]],
        exhausted: bool,
        end_time: float | None,
    ) -> Generator[Any, None, None]:
        """``run``'s results in input order, feeding it the rest of ``source`` as they go."""
        resume = run.resume
        try:
            while waiting:
                if not exhausted:
                    args = next(source, _END)
                    if args is _END:
                        exhausted = True
                        self._link.post(("feed", run, ([], True)))
                    else:
                        waiting.extend(run.add(1))
                        self._link.post(("feed", run, ([args], False)))
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
                self._link.post(("stop map", run))
            if resume is not None:
                # The file is free once the map is over, for the next map.
                self._release_here(run)
                if resume.warning is not None:
                    warnings.warn(resume.warning, RuntimeWarning, stacklevel=3)
        if run.close_error is not None:
            raise run.close_error

    def _release_here(self, run: _MapRun) -> None:
        """Wait until the pump thread has closed ``run``'s checkpoint; close it if it is gone."""
        if threading.current_thread() is self._thread:
            return  # the "stop map" posted before releases it
        self._link.wait_for(run.released)
        if not run.released.is_set() and run.resume is not None:
            run.resume.close(completed=False)  # no pump thread left to race with
            run.released.set()
