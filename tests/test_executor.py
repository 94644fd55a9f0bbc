"""parmap.Executor: the concurrent.futures contract, with timeouts that kill and crashes
that fail only their own future.

Every test runs real worker processes; the autouse fixture in conftest fails a
test that leaves one behind, and the timeout, crash and cancel tests also check
that the very worker that ran the task is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter
from concurrent.futures import (
    FIRST_EXCEPTION,
    BrokenExecutor,
    CancelledError,
    Future,
    as_completed,
    wait,
)
from concurrent.futures import Executor as StdExecutor
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

from parmap import Executor, RemoteError, TaskTimeoutError, WorkerCrashedError

from . import jobs
from .checks import has_traceback
from .procs import processes, running, wait_ended

SCRIPT = Path(__file__).resolve().parent / "scripts" / "executor_parent.py"
GONE_BOUND = 10.0  # seconds a killed worker may take to disappear (loaded CI box)
INTERRUPT_BOUND = 5.0


def marker_pids(marker_dir: Path, count: int, timeout: float = 60.0) -> list[int]:
    """Wait until ``count`` tasks wrote their worker's pid; return the pids."""
    deadline = time.monotonic() + timeout
    while True:
        pids = [int(p.read_text()) for p in sorted(marker_dir.glob("*.pid"))]
        if len(pids) >= count:
            return pids
        assert time.monotonic() < deadline, f"only {len(pids)} of {count} tasks started"
        time.sleep(0.01)


def assert_gone(pid: int) -> None:
    assert not wait_ended(processes([pid]), GONE_BOUND), f"worker {pid} is still running"


# ------------------------------------------------------------------ the basics


def test_is_a_concurrent_futures_executor_and_submit_returns_futures() -> None:
    with Executor(workers=2) as ex:
        assert isinstance(ex, StdExecutor)
        future = ex.submit(jobs.add, 2, y=3)
        assert isinstance(future, Future)
        assert future.result(timeout=60) == 5
        assert not future.running() and future.done()


def test_real_data_round_trips() -> None:
    records = [{"id": i, "name": f"user {i}", "tags": ["a", "b"][: i % 3]} for i in range(50)]
    lines = [json.dumps(r) for r in records]
    blob = os.urandom(1 << 16)
    matrix = np.arange(10_000, dtype=np.float64).reshape(100, 100)
    with Executor(workers=2) as ex:
        parsed = [ex.submit(json.loads, line) for line in lines]
        packed = ex.submit(zlib.compress, blob, 9)
        total = ex.submit(np.sum, matrix, axis=0)
        words = ex.submit(jobs.executor_kwargs, "a,b,c", sep=",", upper=True)
        assert [f.result() for f in parsed] == records
        assert zlib.decompress(packed.result()) == blob
        np.testing.assert_array_equal(total.result(), matrix.sum(axis=0))
        assert words.result() == ["A", "B", "C"]


def test_standard_names_are_accepted_and_checked() -> None:
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with Executor(max_workers=1, mp_context=ctx, max_tasks_per_child=2) as ex:
        pids = {ex.submit(jobs.getpid).result() for _ in range(4)}
    assert len(pids) >= 2, "max_tasks_per_child must replace the worker"
    with pytest.raises(TypeError, match="workers and max_workers"):
        Executor(workers=2, max_workers=3)
    with pytest.raises(TypeError, match="mp_context"):
        Executor(start_method="fork", mp_context=ctx)
    with pytest.raises(ValueError, match="workers must be >= 1, got 0"):
        Executor(max_workers=0)
    with pytest.raises(ValueError, match="timeout must be > 0"):
        Executor(timeout=-1)


def test_an_unused_executor_starts_nothing() -> None:
    ex = Executor(workers=2)
    ex.shutdown()
    assert ex._thread is None
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(jobs.square, 1)


# ----------------------------------------------------- timeouts, crashes, cancel


def test_a_hung_task_is_killed_at_its_timeout_and_only_its_future_fails(tmp_path: Path) -> None:
    with Executor(workers=2, timeout=1) as ex:
        hung = ex.submit(jobs.executor_marked, str(tmp_path), 0, 3600)
        others = [ex.submit(jobs.sleep_return, 0.05, i) for i in range(6)]
        (pid,) = marker_pids(tmp_path, 1)
        error = hung.exception(timeout=60)
        assert isinstance(error, TaskTimeoutError) and isinstance(error, TimeoutError)
        assert error.stopped
        assert [f.result() for f in others] == list(range(6))
        assert_gone(pid)
        assert ex.submit(jobs.square, 7).result() == 49  # usable, worker replaced


def test_a_dying_worker_fails_only_its_future(tmp_path: Path) -> None:
    with Executor(workers=2) as ex:
        doomed = ex.submit(jobs.executor_marked, str(tmp_path), 0, 0.0, 7)
        others = [ex.submit(jobs.square, i) for i in range(20)]
        error = doomed.exception(timeout=60)
        assert isinstance(error, WorkerCrashedError)
        assert error.exitcode == 7
        assert [f.result() for f in others] == [i * i for i in range(20)]
        assert_gone(marker_pids(tmp_path, 1)[0])
        # Never "broken" because of one task.
        assert ex.submit(jobs.square, 3).result() == 9


def test_a_crash_inside_a_batch_of_tiny_tasks_fails_only_that_task() -> None:
    with Executor(workers=2) as ex:
        for f in [ex.submit(jobs.square, i) for i in range(50)]:
            f.result()  # teaches the executor that these tasks are tiny
        futures = [ex.submit(jobs.exit_if, i, 123) for i in range(400)]
        outcomes = [f.exception() or f.result() for f in futures]
    assert isinstance(outcomes[123], WorkerCrashedError)
    assert outcomes[:123] + outcomes[124:] == [i for i in range(400) if i != 123]


def test_cancel_on_a_running_task_kills_its_worker_and_returns_true(tmp_path: Path) -> None:
    with Executor(workers=2) as ex:
        future = ex.submit(jobs.executor_marked, str(tmp_path), 0, 3600)
        (pid,) = marker_pids(tmp_path, 1)
        assert future.running()
        callbacks: list[Future[Any]] = []
        future.add_done_callback(callbacks.append)
        assert future.cancel() is True
        assert future.cancelled() and future.done() and not future.running()
        with pytest.raises(CancelledError):
            future.result()
        assert_gone(pid)
        assert callbacks == [future]
        assert future.cancel() is True  # again: still cancelled, callbacks not rerun
        assert callbacks == [future]
        assert ex.submit(jobs.square, 5).result() == 25


def test_cancel_on_a_queued_task_means_it_never_runs(tmp_path: Path) -> None:
    with Executor(workers=1) as ex:
        blocker = ex.submit(jobs.executor_marked, str(tmp_path), 0, 1.0)
        queued = [ex.submit(jobs.executor_marked, str(tmp_path), i, 0.0) for i in (1, 2, 3)]
        marker_pids(tmp_path, 1)
        assert queued[1].cancel() is True
        assert blocker.result(timeout=60) == 0
        assert queued[0].result() == 1 and queued[2].result() == 3
    assert not (tmp_path / "2.pid").exists()


def test_cancel_of_a_finished_future_returns_false() -> None:
    with Executor(workers=1) as ex:
        future = ex.submit(jobs.square, 3)
        assert future.result() == 9
        assert future.cancel() is False
        assert not future.cancelled()


def test_exceptions_keep_type_remote_traceback_and_a_note() -> None:
    with Executor(workers=1) as ex:
        error = ex.submit(jobs.raise_value_error, 4).exception()
        remote = ex.submit(jobs.misbehave, "sys_exit").exception()
    assert type(error) is ValueError and str(error) == "bad 4"
    assert has_traceback(error)
    assert "raise_value_error" in str(error.__cause__)
    assert "parmap: raised by a task submitted to parmap.Executor" in error.__notes__
    assert isinstance(remote, RemoteError)  # SystemExit in a task must not stop us


def test_an_unpicklable_function_fails_its_future_not_submit() -> None:
    lock = threading.Lock()
    with Executor(workers=1) as ex:
        future = ex.submit(lock.acquire)
        error = future.exception(timeout=60)
        assert isinstance(error, TypeError) and "cannot send function" in str(error)
        assert ex.submit(jobs.square, 2).result() == 4


# ------------------------------------------------------- the standard patterns


def test_as_completed_yields_every_future_once() -> None:
    with Executor(workers=3, timeout=10) as ex:
        futures = {ex.submit(jobs.fail_every_third, i): i for i in range(12)}
        seen = Counter(futures[f] for f in as_completed(futures, timeout=60))
    assert seen == Counter(range(12))
    for future, index in futures.items():
        if index % 3 == 0:
            assert isinstance(future.exception(), RuntimeError)
        else:
            assert future.result() == index


def test_wait_first_exception_returns_at_the_failure_and_cancel_stops_the_rest(
    tmp_path: Path,
) -> None:
    with Executor(workers=3) as ex:
        sleepers = [ex.submit(jobs.executor_marked, str(tmp_path), i, 3600) for i in range(2)]
        pids = marker_pids(tmp_path, 2)
        failing = ex.submit(jobs.raise_value_error, 1)
        done, not_done = wait([*sleepers, failing], timeout=60, return_when=FIRST_EXCEPTION)
        assert done == {failing} and set(not_done) == set(sleepers)
        for future in not_done:
            assert future.cancel()
    for pid in pids:
        assert_gone(pid)


def test_done_callbacks_run_exactly_once_each(tmp_path: Path) -> None:
    calls: Counter[int] = Counter()
    lock = threading.Lock()

    def count(future: Future[Any]) -> None:
        with lock:
            calls[id(future)] += 1

    with Executor(workers=2, timeout=1) as ex:
        futures = [ex.submit(jobs.square, i) for i in range(200)]
        futures += [ex.submit(jobs.raise_value_error, 0), ex.submit(jobs.exit_if, 0, 0)]
        futures.append(ex.submit(jobs.hang_if, 0, 0))  # times out
        futures.append(ex.submit(jobs.executor_marked, str(tmp_path), 0, 3600))
        for future in futures:
            future.add_done_callback(count)
        marker_pids(tmp_path, 1)
        futures[-1].cancel()
        wait(futures, timeout=60)
        late = futures[0]
        late.add_done_callback(count)  # already done: runs at once
    assert calls[id(late)] == 2
    del calls[id(late)]
    assert sorted(calls.values()) == [1] * (len(futures) - 1)


def test_a_callback_may_submit_and_shut_down() -> None:
    with Executor(workers=2) as ex:
        chained: list[Future[int]] = []
        first = ex.submit(jobs.square, 3)
        first.add_done_callback(lambda f: chained.append(ex.submit(jobs.square, f.result())))
        first.result()
        deadline = time.monotonic() + 60
        while not chained:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert chained[0].result() == 81
        last = ex.submit(jobs.square, 2)
        last.add_done_callback(lambda f: ex.shutdown(wait=True))  # must not deadlock
        assert last.result() == 4
    with pytest.raises(RuntimeError):
        ex.submit(jobs.square, 1)


def test_many_threads_submitting_at_once() -> None:
    threads, per_thread = 8, 300
    barrier = threading.Barrier(threads)
    results: dict[int, list[int]] = {}

    with Executor(workers=2) as ex:

        def client(t: int) -> None:
            barrier.wait()
            futures = [ex.submit(jobs.add, t * 1000, i) for i in range(per_thread)]
            results[t] = [f.result(timeout=120) for f in futures]

        workers = [threading.Thread(target=client, args=(t,)) for t in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(120)
    assert results == {t: [t * 1000 + i for i in range(per_thread)] for t in range(threads)}


def test_asyncio_run_in_executor_and_cancelling_it_kills_the_work(tmp_path: Path) -> None:
    async def main(ex: Executor) -> tuple[list[int], int]:
        loop = asyncio.get_running_loop()
        values = await asyncio.gather(*(loop.run_in_executor(ex, jobs.square, i) for i in range(8)))
        task = asyncio.ensure_future(
            loop.run_in_executor(ex, jobs.executor_marked, str(tmp_path), 0, 3600)
        )
        while not (tmp_path / "0.pid").exists():
            await asyncio.sleep(0.01)
        pid = int((tmp_path / "0.pid").read_text())
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return values, pid

    with Executor(workers=2) as ex:
        values, pid = asyncio.run(main(ex))
        assert values == [i * i for i in range(8)]
        assert_gone(pid)


# ------------------------------------------------------------------------ map


def test_map_keeps_order_zips_and_chunks() -> None:
    with Executor(workers=2) as ex:
        assert list(ex.map(jobs.square, range(50))) == [i * i for i in range(50)]
        assert list(ex.map(jobs.add, range(5), range(10, 20))) == [10, 12, 14, 16, 18]
        assert list(ex.map(jobs.square, range(100), chunksize=7)) == [i * i for i in range(100)]
        assert list(ex.map(jobs.square, [])) == []
        with pytest.raises(ValueError, match="chunksize"):
            ex.map(jobs.square, range(3), chunksize=0)
        with pytest.raises(ValueError, match="buffersize"):
            ex.map(jobs.square, range(3), buffersize=0)


def test_map_raises_the_first_error_while_iterating_with_per_item_deadlines() -> None:
    with Executor(workers=2, timeout=1) as ex:
        results = ex.map(jobs.hang_if, range(8), [3] * 8, chunksize=4)
        got = [next(results) for _ in range(3)]
        assert got == [0, 1, 2]
        with pytest.raises(TaskTimeoutError) as info:
            next(results)
        assert info.value.index == 3  # the map's own index, inside a chunk of 4


def test_map_timeout_is_a_total_wait_limit_and_stops_the_work(tmp_path: Path) -> None:
    with Executor(workers=2) as ex:
        results = ex.map(jobs.executor_marked, [str(tmp_path)] * 2, range(2), [3600] * 2, timeout=3)
        pids = marker_pids(tmp_path, 2)
        with pytest.raises(TimeoutError):
            next(results)
        # The generator ended with the error: what it started is killed.
        for pid in pids:
            assert_gone(pid)
        assert list(ex.map(jobs.square, range(3))) == [0, 1, 4]


def test_map_with_buffersize_reads_input_lazily() -> None:
    pulled = 0

    def endless() -> Any:
        nonlocal pulled
        while True:
            pulled += 1
            yield pulled

    with Executor(workers=2) as ex:
        results = ex.map(jobs.square, endless(), buffersize=3)
        assert pulled == 3  # read at the call, as in Python 3.14
        assert [next(results) for _ in range(10)] == [i * i for i in range(1, 11)]
        assert pulled <= 13
        results.close()  # a generator, as in the stdlib (and typed as one)


def test_other_backends_serve_the_same_contract() -> None:
    lock = threading.Lock()  # unpicklable: threads run the object itself
    with Executor(workers=2, backend="thread") as ex:
        assert ex.submit(lock.locked).result() is False
        assert list(ex.map(jobs.square, range(6), chunksize=2)) == [0, 1, 4, 9, 16, 25]
        assert isinstance(ex.submit(jobs.raise_value_error, 1).exception(), ValueError)


# ------------------------------------------------------------------ shutdown


def test_shutdown_wait_true_waits_for_pending_tasks() -> None:
    ex = Executor(workers=2)
    futures = [ex.submit(jobs.sleep_return, 0.1, i) for i in range(6)]
    ex.shutdown(wait=True)
    assert all(f.done() for f in futures)
    assert [f.result() for f in futures] == list(range(6))


def test_shutdown_wait_false_returns_at_once_and_workers_stop_after_the_tasks() -> None:
    ex = Executor(workers=1)
    pid = ex.submit(jobs.getpid).result()
    slow = ex.submit(jobs.sleep_return, 1.0, "late")
    ex.shutdown(wait=False)
    assert not slow.done(), "shutdown(wait=False) waited for the task"
    assert slow.result(timeout=60) == "late"
    assert_gone(pid)
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(jobs.square, 1)


def test_shutdown_cancel_futures_cancels_what_has_not_started(tmp_path: Path) -> None:
    ex = Executor(workers=1)
    running_one = ex.submit(jobs.executor_marked, str(tmp_path), 0, 0.5)
    queued = [ex.submit(jobs.executor_marked, str(tmp_path), i, 0.0) for i in range(1, 6)]
    marker_pids(tmp_path, 1)
    ex.shutdown(wait=True, cancel_futures=True)
    assert running_one.result() == 0
    assert all(f.cancelled() for f in queued)
    assert sorted(p.name for p in tmp_path.glob("*.pid")) == ["0.pid"]
    ex.shutdown()  # twice is fine


def test_interpreter_exit_stops_running_tasks_and_does_not_hang(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "exit", "forkserver", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("returned"), proc.stdout
    assert proc.stderr == ""
    for pid in marker_pids(tmp_path, 2):
        assert_gone(pid)


# ------------------------------------------------------------ broken executor


def test_a_failing_initializer_breaks_the_executor_pending_and_new_futures_fail() -> None:
    with Executor(workers=2, initializer=jobs.initializer_fails) as ex:
        pending = [ex.submit(jobs.square, i) for i in range(5)]
        for future in pending:
            error = future.exception(timeout=60)
            assert isinstance(error, BrokenExecutor)
            assert isinstance(error.__cause__, LookupError)
        late = ex.submit(jobs.square, 1)
        assert isinstance(late.exception(timeout=60), BrokenExecutor)
        assert "broken" in repr(ex)


def test_an_initializer_that_works_runs_in_every_worker() -> None:
    with Executor(workers=2, initializer=jobs.remember, initargs=("greeting", "hi")) as ex:
        assert {ex.submit(jobs.recall, "greeting").result() for _ in range(6)} == {"hi"}


# --------------------------------------------------- start methods and Ctrl-C


def test_the_default_start_method_never_forks() -> None:
    ex = Executor(workers=1)
    try:
        assert ex._config.start_method != "fork"
    finally:
        ex.shutdown()


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_every_start_method(method: str, tmp_path: Path) -> None:
    if method == "fork" and sys.version_info >= (3, 12):
        # The user asked for fork from a threaded parent: Python says so.
        ctx: Any = pytest.warns(DeprecationWarning, match="multi-threaded")
    else:
        ctx = contextlib.nullcontext()
    with ctx, Executor(workers=2, timeout=2, start_method=method) as ex:  # type: ignore[arg-type]
        squares = [ex.submit(jobs.square, i) for i in range(20)]
        crash = ex.submit(jobs.exit_if, 1, 1)
        hang = ex.submit(jobs.hang_if, 1, 1)
        assert [f.result(timeout=60) for f in squares] == [i * i for i in range(20)]
        assert isinstance(crash.exception(timeout=60), WorkerCrashedError)
        assert isinstance(hang.exception(timeout=60), TaskTimeoutError)
        assert list(ex.map(jobs.square, range(5), chunksize=2)) == [0, 1, 4, 9, 16]


@pytest.mark.parametrize("mode", ["with", "result"])
@pytest.mark.timeout(90)
def test_ctrl_c_raises_keyboard_interrupt_promptly_and_leaves_no_worker(
    mode: str, tmp_path: Path
) -> None:
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), mode, "forkserver", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        pids = marker_pids(tmp_path, 2)
        tree = psutil.Process(proc.pid).children(recursive=True)
        sent = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C
        out, err = proc.communicate(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
    assert proc.returncode == 0, (out, err)
    words = out.split()
    assert words[:1] == ["KeyboardInterrupt"], (out, err)
    assert float(words[1]) - sent < INTERRUPT_BOUND
    assert err == "", f"something printed on stderr (a worker's traceback?):\n{err}"
    for pid in pids:
        assert_gone(pid)
    assert not wait_ended(tree, GONE_BOUND), f"left behind: {running(tree)}"


# ------------------------------------------------------------------------ soak


def _soak(rounds: int, per_round: int) -> None:
    me = psutil.Process()
    with Executor(workers=2, timeout=30) as ex:
        samples: list[tuple[int, int]] = []
        for r in range(rounds):
            futures = [ex.submit(jobs.add, r, i) for i in range(per_round)]
            done, not_done = wait(futures, timeout=300)
            assert not not_done
            assert (
                sum(f.result() for f in futures) == r * per_round + per_round * (per_round - 1) // 2
            )
            del futures, done
            gc.collect()
            samples.append((me.num_fds(), me.memory_info().rss))
    # The first two rounds size the allocator's arenas; after them nothing may grow.
    fds = [s[0] for s in samples]
    rss = [s[1] for s in samples]
    assert max(fds[1:]) <= fds[0], f"descriptors grew: {fds}"
    assert max(rss[2:]) - rss[1] < 20 * 2**20, f"memory grew: {[r >> 20 for r in rss]} MB"


def test_soak_ten_thousand_futures_keeps_descriptors_and_memory_flat() -> None:
    _soak(rounds=5, per_round=10_000)


@pytest.mark.soak
@pytest.mark.timeout(600)
def test_soak_large() -> None:
    _soak(rounds=10, per_round=50_000)


def test_a_task_over_the_memory_limit_fails_only_its_future() -> None:
    from parmap import WorkerMemoryError

    from . import memory_cases

    with Executor(workers=1, max_memory_per_worker="200MB") as ex:
        big = ex.submit(memory_cases.touch, 400)
        small = ex.submit(memory_cases.touch, 10)
        with pytest.raises(WorkerMemoryError):
            big.result(timeout=60)
        assert small.result(timeout=60) is not None
