"""The executor's pump thread: the one thread that touches its ``Engine``.

Other threads reach it only through the executor's ``_Link``: they append
tasks to its ``queue`` and requests to its ``inbox`` and wake it. Each turn
(``_Pump._step``) handles the requests, resolves the futures of the outcomes
that arrived, turns queued tasks into scheduler jobs while the pool has room,
carries out the scheduler's commands and waits: in ``Engine.pump`` while jobs
are live, on the link's ``cv`` while none is.
"""

from __future__ import annotations

import time
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Any

from ._checkpoint import CheckpointError
from ._engine import Engine
from ._executor_functions import _function_key, _Functions
from ._executor_runs import _Batch, _MapRun, _Owner, _Request, _resolve, _Task, _TaskFuture
from ._options import MapConfig
from ._scheduler import Job

if TYPE_CHECKING:
    from ._executor_link import _Link

#: Submit jobs the scheduler holds per worker: one running and one it may
#: queue behind it (prefetch); the rest wait in the executor's own queue.
LIVE_PER_WORKER = 2


class _Pump:
    """The pump thread's own state: the live jobs and their owners, and its functions."""

    def __init__(self, link: _Link, engine: Engine) -> None:
        self._link = link
        self._engine = engine
        self._config = link.config
        self._task_config = link.task_config
        self._timeout = link.timeout
        self._functions = _Functions(engine.backend)
        self._live: dict[Job, _Owner] = {}
        self._live_jobs = 0
        # Map runs whose checkpoint is open.
        self._checkpointed: set[_MapRun] = set()

    def run(self) -> None:
        """Turn until the executor is shut down and idle, or terminated; close the engine."""
        try:
            while self._step():
                pass
        except BaseException as exc:
            # A bug must fail the futures, not leave them waiting forever.
            self._end_all(RuntimeError(f"parmap.Executor stopped on an internal error: {exc!r}"))
            raise
        finally:
            self._engine.close()

    def _step(self) -> bool:
        """One turn of the pump thread; False when it is done."""
        link, engine = self._link, self._engine
        with link.cv:
            requests = list(link.inbox)
            link.inbox.clear()
            stop = link.stop
        for request in requests:
            self._handle(request)
        if stop == "terminate":
            self._cancel_everything()
            return False
        self._settle()  # what the last pump brought
        if self._checkpointed:
            self._tick()
        if self._live_jobs < self._capacity():
            self._admit()
        engine.execute()
        with link.cv:
            if link.inbox or link.stop != stop:
                return True
            if link.queue and self._live_jobs < self._capacity() and link.broken is None:
                return True
            if not self._live:
                if link.stop is not None and not link.queue:
                    return False
                link.phase = "idle"
                link.cv.wait()
                return True
            link.phase = "pumping"
        try:
            engine.sync.pump()
        finally:
            with link.cv:
                link.phase = "busy"
        return True

    def _capacity(self) -> int:
        return LIVE_PER_WORKER * self._config.resolved_workers

    # ------------------------------------------------------------ requests
    def _handle(self, request: _Request) -> None:
        kind = request[0]
        if kind == "cancel":
            self._cancel_task(request[1])
        elif kind == "map":
            run: _MapRun = request[1]
            try:
                self._start_map(run, *request[2])
            finally:
                run.fed.set()
        elif kind == "feed":
            self._feed(request[1], *request[2])
        elif kind == "drain":
            # Lazy maps take no more input after shutdown, as the standard
            # map's next submit() would raise: what was read still runs.
            for job, owner in self._live.items():
                if isinstance(owner, _MapRun):
                    self._engine.end_input(job)
        elif kind == "stop map":
            self._stop_map(request[1])
        elif kind == "cancel unstarted":
            self._cancel_unstarted()

    def _stop_map(self, run: _MapRun) -> None:
        """The consumer left ``run``'s loop early: stop its work, cancel its futures."""
        stopped = run.job
        if stopped is not None and self._live.pop(stopped, None) is not None:
            self._engine.finish(stopped, cancel=True)  # kills the workers running it
        for future in run.futures():
            future.cancel()
        run.pending.clear()
        self._release(run, completed=False)

    def _cancel_unstarted(self) -> None:
        """``shutdown(cancel_futures=True)``: cancel the submit jobs no worker runs."""
        for job, owner in list(self._live.items()):
            if isinstance(owner, _Batch) and job.running == 0 and not job.finished:
                self._drop(job)
                for future in owner.futures():
                    future.cancel()

    def _cancel_task(self, future: _TaskFuture[Any]) -> None:
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
        self._drop(job)
        rest = [t for t in owner.tasks if not t.future.done()]
        for task in rest:
            task.future._handed = False
            task.future._job = None
        with self._link.cv:
            self._link.queue.extendleft(reversed(rest))

    def _drop(self, job: Job) -> None:
        """Stop a submit job (killing its worker if it runs) and forget it."""
        del self._live[job]
        self._live_jobs -= 1
        self._engine.finish(job, cancel=True)

    # ---------------------------------------------------------------- maps
    def _start_map(self, run: _MapRun, args: list[Any], exhausted: bool) -> None:
        payload = self._functions.payload(run.fn)
        if isinstance(payload, BaseException):
            run.end(payload)
            self._release(run, completed=False)
            return
        run.job = self._engine.new_job(
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
        self._feed(run, args, exhausted)

    def _feed(self, run: _MapRun, args: list[Any], exhausted: bool) -> None:
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
        engine = self._engine
        resume = run.resume
        if resume is None:
            engine.feed(job, args, time.monotonic())
        else:
            try:
                resume.feed(engine, job, args, time.monotonic())
            except CheckpointError as exc:
                self._fail_map(run, exc)
                return
            run.resumed = job.resumed
        if exhausted:
            engine.end_input(job)

    def _tick(self) -> None:
        """Commit the checkpoints whose records are due."""
        now = time.monotonic()
        for run in list(self._checkpointed):
            assert run.resume is not None
            try:
                run.resume.tick(now)
            except CheckpointError as exc:
                self._fail_map(run, exc)

    def _fail_map(self, run: _MapRun, error: BaseException) -> None:
        """Stop a map whose checkpoint failed: its waiting futures get ``error``."""
        job = run.job
        if job is not None and self._live.pop(job, None) is not None:
            self._engine.finish(job, cancel=True)
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

    def _release_all(self) -> None:
        """Close every open checkpoint (the pump thread is about to end)."""
        for run in list(self._checkpointed):
            self._release(run, completed=False)

    # ------------------------------------------------------------- submits
    def _admit(self) -> None:
        """Turn queued tasks into jobs while the pool has room for them."""
        batches = self._take_batches(self._capacity() - self._live_jobs)
        now = time.monotonic()
        for batch in batches:
            tasks = [t for t in batch if not t.future.cancelled()]
            if tasks:
                self._start_batch(tasks, now)

    def _take_batches(self, room: int) -> list[list[_Task]]:
        """Up to ``room`` batches from the queue: runs of tiny tasks of one function."""
        batches: list[list[_Task]] = []
        with self._link.cv:
            if self._link.broken is not None:
                return batches
            queue = self._link.queue
            while queue and len(batches) < room:
                task = queue.popleft()
                if task.future.cancelled():
                    continue  # its cancel() told the waiters already
                batch = [task]
                size = self._functions.batch_size(task.fn)
                while len(batch) < size and queue and queue[0].fn is task.fn:
                    batch.append(queue.popleft())
                batches.append(batch)
        return batches

    def _start_batch(self, tasks: list[_Task], now: float) -> None:
        """Give ``tasks`` (of one function) to the scheduler as one job."""
        fn = tasks[0].fn
        payload = self._functions.call_payload(fn)
        if isinstance(payload, BaseException):
            for task in tasks:
                task.end(payload)
            return
        engine = self._engine
        job = engine.new_job(
            self._task_config,
            fn_payload=payload,
            star=True,
            ordered=False,
            total=len(tasks),
            fn_key=_function_key(fn),
        )
        engine.feed(job, [(t.args, t.kwargs) for t in tasks], now)
        engine.end_input(job)
        for task in tasks:
            task.future._handed = True
            task.future._job = job
        self._live[job] = _Batch(tasks)
        self._live_jobs += 1

    # ------------------------------------------------------------ outcomes
    def _settle(self) -> None:
        """Resolve the futures of outcomes that arrived; forget finished jobs."""
        broken = self._engine.broken
        if broken is not None and self._link.broken is None:
            self._break(broken)
        for job, owner in list(self._live.items()):
            while (segment := job.take()) is not None:
                owner.deliver(segment)
            if job.finished:
                self._finished(job, owner, broken)

    def _finished(self, job: Job, owner: _Owner, broken: BaseException | None) -> None:
        """Forget ``job``, which is over, and fail the futures it left unresolved."""
        del self._live[job]
        if isinstance(owner, _Batch):
            self._live_jobs -= 1
            if job.item_time is not None:
                self._functions.remember(job.fn_key, job.item_time)
        error = job.error
        if error is not None and error is broken:
            error = self._link.broken
        if isinstance(owner, _MapRun):
            self._release(owner, completed=error is None)
        owner.end(error or RuntimeError("parmap.Executor: the task ended without outcome"))
        self._engine.finish(job, cancel=False)

    def _break(self, cause: BaseException) -> None:
        broken = BrokenProcessPool(
            "no worker of this parmap.Executor can start "
            f"({type(cause).__name__}: {cause}); it cannot run tasks"
        )
        broken.__cause__ = cause
        with self._link.cv:
            self._link.broken = broken
        for task in self._link.take_queued():
            task.end(broken)

    def _cancel_everything(self) -> None:
        for task in self._link.take_queued():
            task.future.cancel()
        for owner in self._live.values():
            for future in owner.futures():
                future.cancel()
        self._live.clear()
        self._live_jobs = 0
        self._release_all()

    def _end_all(self, error: BaseException) -> None:
        for task in self._link.take_queued(shutdown=True):
            task.end(error)
        for owner in self._live.values():
            owner.end(error)
        self._live.clear()
        self._release_all()
