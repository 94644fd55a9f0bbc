"""End-to-end tests of the process engine: the promises of DESIGN.md, with real workers."""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from parmap import (
    Pool,
    RemoteError,
    TaskTimeoutError,
    WorkerCrashedError,
    imap,
    parallel,
    pmap,
)
from parmap._options import StartMethod

from . import jobs
from .checks import seed_expectations
from .procs import pid_running, running, running_children


def test_seed_scenario_decorated() -> None:
    task = parallel(workers=3, on_error="collect")(jobs.fail_every_third)
    try:
        seed_expectations(task.pmap(range(10)))
        seed_expectations(task.pmap(range(10)))  # the pool is reused
        assert task(4) == 4  # a plain call runs inline
    finally:
        task.close()


def test_raise_mode_raises_the_first_failure_with_its_remote_traceback() -> None:
    with pytest.raises(RuntimeError, match=r"task \d failed") as info:
        pmap(jobs.fail_every_third, range(10), workers=3)
    assert "Traceback" in str(info.value.__cause__)
    assert "fail_every_third" in str(info.value.__cause__)


def test_raise_mode_kills_in_flight_work_promptly() -> None:
    start = time.monotonic()
    with Pool(workers=3) as pool:
        with pytest.raises(ValueError, match="first"):
            pool.pmap(jobs.fail_fast_or_sleep, range(3), chunksize=1)
        # The pool is still usable afterwards: killed workers were replaced.
        assert pool.pmap(jobs.square, range(4)).values == [0, 1, 4, 9]
    assert time.monotonic() - start < 30  # not the 60 s of the sleeping items


def test_timed_out_item_stops_running_and_its_worker_is_replaced(tmp_path: Path) -> None:
    with Pool(workers=2) as pool:
        res = pool.pmap(
            jobs.write_pid_then_hang,
            range(8),
            [3] * 8,
            [str(tmp_path)] * 8,
            timeout=1,
            on_error="collect",
            chunksize=4,  # items after the hung one share its chunk: re-sent, not failed
        )
        assert res.values == [0, 1, 2, None, 4, 5, 6, 7]
        error = res.errors[3]
        assert isinstance(error, TaskTimeoutError) and isinstance(error, TimeoutError)
        assert error.index == 3 and error.timeout == 1
        hung_pid = int((tmp_path / "3.pid").read_text())
        assert not pid_running(hung_pid)
        # Still two live workers, neither of them the killed one.
        workers = psutil.Process().children()
        assert hung_pid not in {p.pid for p in workers}


def test_timeout_holds_per_item_inside_a_chunk() -> None:
    # Four items of 0.6 s in one chunk: each is within a 1 s timeout even
    # though the chunk as a whole takes 2.4 s.
    res = pmap(jobs.sleep_return, [0.6] * 4, range(4), workers=1, chunksize=4, timeout=1)
    assert res.values == [0, 1, 2, 3]


def _hang_among_fast_items(how: str, marker_dir: Path) -> tuple[Any, ...]:
    """Arguments of ``jobs.hang_at`` for 3,000 tiny items, item 1500 hanging.

    Sent as one chunk, they run in slices of up to a thousand items with one
    clock read per slice, so item 1500 is not the first of its slice and its
    start must be dated another way.
    """
    return (
        range(HANG_ITEMS),
        [1500] * HANG_ITEMS,
        [how] * HANG_ITEMS,
        [str(marker_dir)] * HANG_ITEMS,
    )


HANG_ITEMS = 3000
HANG_OPTIONS: dict[str, Any] = {"chunksize": HANG_ITEMS, "timeout": 1, "on_error": "collect"}


@pytest.mark.parametrize("how", ["sleep", "hold_gil"])
def test_an_item_hanging_among_fast_ones_times_out_on_time(how: str, tmp_path: Path) -> None:
    # "sleep": the worker's watch thread dates the item. "hold_gil": that
    # thread cannot run, and the parent, which looks often while a timed
    # chunk of several items runs, dates it by when it first saw it.
    res = pmap(jobs.hang_at, *_hang_among_fast_items(how, tmp_path), workers=1, **HANG_OPTIONS)
    ended = time.monotonic()
    began = float((tmp_path / "hang.start").read_text())
    assert list(res.errors) == [1500]
    assert isinstance(res.errors[1500], TaskTimeoutError)
    assert res.values[:3] == [0, 1, 2] and res.values[1501:] == list(range(1501, 3000))
    # Never before its deadline; and not hours late (the bound is generous
    # because the other 1,499 items still run after it on a loaded machine).
    assert 1.0 <= ended - began < 5.0


def test_a_deadline_passed_while_the_consumer_was_busy_is_acted_on_at_once(
    tmp_path: Path,
) -> None:
    # While the consumer's loop body runs, the parent does not look at the
    # workers. The item hangs only after the consumer has taken its first
    # outcome (the item before it waits for "go"), so the parent never saw
    # it running; the worker's own dating of it still lets the parent kill
    # it the moment it looks again.
    args = _hang_among_fast_items("sleep_on_go", tmp_path)
    with Pool(workers=1) as pool:
        outcomes = pool.imap(jobs.hang_at, *args, ordered=True, **HANG_OPTIONS)
        assert next(outcomes).value == 0
        (tmp_path / "go").touch()
        time.sleep(3)
        resumed = time.monotonic()
        rest = list(outcomes)
        took = time.monotonic() - resumed
    assert resumed - float((tmp_path / "hang.start").read_text()) > 2.0
    failed = [o for o in rest if not o.ok]
    assert [o.index for o in failed] == [1500]
    assert isinstance(failed[0].error, TaskTimeoutError)
    assert len(rest) == 2999
    assert took < 0.6  # not the full second a fresh sighting would wait


@pytest.mark.parametrize(
    ("how", "error", "detail"),
    [
        ("raise", RuntimeError, None),
        ("sys_exit", RemoteError, None),
        ("os_exit", WorkerCrashedError, 7),
        ("segfault", WorkerCrashedError, -11),
        ("sigkill", WorkerCrashedError, -9),
    ],
)
@pytest.mark.parametrize("chunksize", [1, 5])
def test_a_failing_worker_fails_only_its_own_item(
    how: str, error: type[BaseException], detail: int | None, chunksize: int
) -> None:
    res = pmap(
        jobs.crash_how,
        range(10),
        [how] * 10,
        [4] * 10,
        workers=2,
        chunksize=chunksize,
        on_error="collect",
    )
    assert list(res.errors) == [4]
    assert res.values[:4] == [0, 1, 2, 3] and res.values[5:] == [5, 6, 7, 8, 9]
    assert isinstance(res.errors[4], error)
    if detail is not None:
        crash = res.errors[4]
        assert isinstance(crash, WorkerCrashedError)
        assert crash.exitcode == detail and crash.index == 4


def test_a_crash_behind_a_deep_queue_of_short_chunks_fails_only_its_item() -> None:
    # Chunks of 100 tiny items: each worker has several queued behind the
    # running one when one dies; they go back to be run, and none is lost.
    n = 30_000
    res = pmap(jobs.exit_if, range(n), [20_000] * n, workers=2, chunksize=100, on_error="collect")
    assert list(res.errors) == [20_000]
    assert isinstance(res.errors[20_000], WorkerCrashedError)
    assert res.values[:20_000] == list(range(20_000))
    assert res.values[20_001:] == list(range(20_001, n))


def test_a_hang_in_a_timed_map_of_tiny_items_fails_only_itself() -> None:
    # Tiny items get chunks queued behind the running one also with a
    # timeout; those behind the hung item go back unrun when it is killed.
    n = 20_000
    started = time.monotonic()
    res = pmap(
        jobs.hang_if,
        range(n),
        [12_345] * n,
        workers=2,
        chunksize=100,
        timeout=1,
        on_error="collect",
    )
    assert list(res.errors) == [12_345]
    assert isinstance(res.errors[12_345], TaskTimeoutError)
    assert res.values[:12_345] == list(range(12_345))
    assert res.values[12_346:] == list(range(12_346, n))
    assert time.monotonic() - started < 30  # one timeout, not one per queued chunk


def test_worker_dying_while_pickling_a_result_fails_that_item() -> None:
    res = pmap(jobs.exit_when_result_pickled, range(3), workers=1, chunksize=3, on_error="collect")
    assert res.values[0] == 0 and res.values[2] == 2
    assert isinstance(res.errors[1], WorkerCrashedError)


def test_worker_dying_while_unpickling_an_argument_fails_that_item() -> None:
    args: list[Any] = [1, jobs.ExitWhenUnpickled(), 3]
    res = pmap(jobs.return_it, args, workers=1, chunksize=3, on_error="collect")
    assert res.values[0] == 1 and res.values[2] == 3
    assert list(res.errors) == [1]
    assert isinstance(res.errors[1], WorkerCrashedError)


def test_unpicklable_result_fails_only_its_item() -> None:
    res = pmap(jobs.return_lock, range(3), workers=1, on_error="collect")
    assert res.values == [0, None, 2]
    assert "result could not be pickled" in str(res.errors[1])


def test_exception_that_cannot_be_unpickled_becomes_remote_error() -> None:
    res = pmap(jobs.raise_needs_two_args, range(4), workers=2, on_error="collect")
    assert res.values == [0, 1, None, 3]
    error = res.errors[2]
    assert isinstance(error, RemoteError)
    assert error.type_name == "tests.jobs.NeedsTwoArgs"
    assert error.message == "needs 1 and 2"
    assert "raise_needs_two_args" in error.traceback


def test_huge_result_arrives() -> None:
    res = pmap(jobs.big_result, [64, 1], workers=2)
    assert len(res[0]) == 64 << 20 and len(res[1]) == 1 << 20


def test_input_iterator_that_raises_propagates_after_stopping_workers() -> None:
    def inputs() -> Any:
        yield from range(5)
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        pmap(jobs.sleep_return, inputs(), workers=2)


def test_retries_keep_order_and_lose_or_duplicate_nothing(tmp_path: Path) -> None:
    res = pmap(
        jobs.fail_first_attempt,
        range(30),
        [str(tmp_path)] * 30,
        workers=3,
        retries=1,
        retry_on=ConnectionError,
        chunksize=4,
    )
    assert res.values == list(range(30))


def test_retry_on_leaves_other_errors_alone(tmp_path: Path) -> None:
    res = pmap(
        jobs.fail_first_attempt,
        range(3),
        [str(tmp_path)] * 3,
        workers=1,
        retries=3,
        retry_on=KeyError,
        on_error="collect",
    )
    assert sorted(res.errors) == [0, 1, 2]


def test_imap_yields_in_completion_order_or_input_order() -> None:
    seconds = [1.5, 0.0, 0.0]
    unordered = [o.index for o in imap(jobs.sleep_return, seconds, range(3), workers=3)]
    assert unordered[-1] == 0
    ordered = [o.index for o in imap(jobs.sleep_return, seconds, range(3), workers=3, ordered=True)]
    assert ordered == [0, 1, 2]


def test_parent_memory_is_bounded_by_the_buffer() -> None:
    # A slow head item must not let outcomes pile up behind it: with ordered
    # output and buffer=32, at most 32 inputs are pulled ahead of the consumer.
    pulled = itertools.count()

    def source() -> Any:
        for i in itertools.count():
            next(pulled)
            yield 0.5 if i == 0 else 0.0

    stream = imap(jobs.sleep_return, source(), workers=2, buffer=32, ordered=True)
    first = next(stream)
    assert first.index == 0
    stream.close()
    assert next(pulled) <= 32 + 1


def test_chunksize_option_is_honoured() -> None:
    before = {p.pid for p in running_children()}
    with Pool(workers=2) as pool:
        res = pool.pmap(jobs.getpid, range(20), chunksize=10)
        workers = {p.pid for p in running_children()} - before
    assert len(workers) == 2
    # Every item ran in one of the pool's workers, and each chunk of ten in one.
    assert set(res.values) <= workers
    assert res.values[:10] == [res.values[0]] * 10
    assert res.values[10:] == [res.values[10]] * 10


def test_max_tasks_per_worker_replaces_workers() -> None:
    res = pmap(jobs.getpid, range(12), workers=1, max_tasks_per_worker=3, chunksize=1)
    pids = res.values
    assert len(set(pids)) == 4
    assert all(pids[i] == pids[i - i % 3] for i in range(12))


def test_workers_ignore_sigint_and_sigterm_then_run_the_initializer() -> None:
    import signal

    with Pool(workers=2, initializer=jobs.remember, initargs=("key", "value")) as pool:
        assert pool.pmap(jobs.recall, ["key"] * 4).values == ["value"] * 4
        handlers = pool.pmap(jobs.report_signals, range(2)).values
    assert all(h == (signal.SIG_IGN, signal.SIG_IGN) for h in handlers)
    with Pool(workers=1, ignore_signals=False) as pool:
        (handlers_of_one,) = pool.pmap(jobs.report_signals, [0]).values
    assert handlers_of_one is not None
    sigint, _ = handlers_of_one
    assert sigint is not signal.SIG_IGN


def test_initializer_failure_is_a_clear_error() -> None:
    with Pool(workers=2, initializer=jobs.initializer_fails) as pool:
        with pytest.raises(LookupError, match="no configuration") as info:
            pool.pmap(jobs.square, range(4))
        assert any("initializer" in note for note in info.value.__notes__)


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_every_start_method(method: StartMethod) -> None:
    res = pmap(jobs.fail_every_third, range(10), workers=3, start_method=method, on_error="collect")
    seed_expectations(res)
    assert jobs.decorated_square.pmap(range(5), start_method=method).values == [0, 1, 4, 9, 16]


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_decorated_function_in_a_main_script(method: str, tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(
        "from parmap import parallel\n"
        "@parallel(workers=2)\n"
        "def triple(x: int) -> int:\n"
        "    return 3 * x\n"
        "if __name__ == '__main__':\n"
        f"    print(triple.pmap(range(5), start_method={method!r}).values)\n"
    )
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[0, 3, 6, 9, 12]"


def test_closed_pool_refuses_work() -> None:
    pool = Pool(workers=1)
    pool.close()
    with pytest.raises(RuntimeError, match="closed"):
        pool.pmap(jobs.square, [1])


def test_decorated_pool_is_restarted_after_close() -> None:
    task = parallel(workers=1)(jobs.square)
    assert task.pmap([2]).values == [4]
    task.close()
    assert task.pmap([3]).values == [9]
    task.close()


def test_no_process_outlives_a_module_level_map() -> None:
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    pmap(jobs.square, range(100), workers=3)
    after = {p.pid for p in running(psutil.Process().children(recursive=True))}
    assert after - before == set()
