"""The same behaviour on every backend (issue 4).

Each test in the first part runs once per backend: worker processes,
threads, the caller itself, a ``ThreadPoolExecutor``, a
``ProcessPoolExecutor`` and a dask ``LocalCluster``. They check what must not
depend on where items run: order, captured errors, ``on_error``, retries,
lazy input, progress, timeouts, and the async forms. Then come the
differences a backend is allowed to have (what must be picklable, whether a
timed-out item is stopped), each stated as a test.

Time bounds are one-sided and generous (other test runs share the two cores);
nothing sleeps hoping something happened.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import pickle
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from types import FrameType, SimpleNamespace
from typing import Any

import pytest
from tqdm import tqdm

from parmap import (
    MapResult,
    Pool,
    RemoteError,
    TaskTimeoutError,
    aimap,
    apmap,
    imap,
    parallel,
    pmap,
)
from parmap._options import StartMethod

from . import jobs
from .checks import eventually, has_traceback, seed_expectations
from .dask_cluster import local_client, wait_until_idle

BACKENDS = ["process", "thread", "serial", "thread-executor", "process-executor", "dask"]
#: Backends that run items in this process (nothing is pickled).
IN_PROCESS = {"thread", "serial", "thread-executor"}
#: A timed-out item's sleep, and the timeout: far enough apart for a loaded machine.
SLOW, TIMEOUT = 1.5, 0.5


@pytest.fixture(scope="module", params=BACKENDS)
def kind(request: pytest.FixtureRequest) -> Iterator[tuple[str, Any]]:
    """The backend's name, and for dask a client of a local cluster.

    Module-scoped, so the cluster starts once, before the leak fixture of the
    first test that uses it looks at this process's children, and is closed
    (with its processes) after the last.
    """
    if request.param != "dask":
        yield request.param, None
        return
    with local_client() as client:
        yield "dask", client


@pytest.fixture
def backend(kind: tuple[str, Any]) -> Iterator[Any]:
    """What to pass as ``backend=``; executors are made per test and shut down after it."""
    name, client = kind
    if name == "thread-executor":
        with ThreadPoolExecutor(3) as executor:
            yield executor
    elif name == "process-executor":
        with ProcessPoolExecutor(3) as executor:
            yield executor
    elif name == "dask":
        yield client
        wait_until_idle(client)
    else:
        yield name
    if name == "thread":
        # Abandoned items run on in their threads: let them end here rather
        # than in some later test.
        eventually(
            lambda: not any(t.name.startswith("parmap-thread-") for t in threading.enumerate()),
            within=30,
            message="abandoned threads never finished",
        )


@pytest.fixture
def name(kind: tuple[str, Any]) -> str:
    return kind[0]


# ------------------------------------------------------------ the same everywhere
def test_seed_scenario_collects_ordered_values_and_errors(backend: Any) -> None:
    res = pmap(jobs.fail_every_third, range(10), workers=3, on_error="collect", backend=backend)
    seed_expectations(res)


def test_seed_scenario_raise_stops_at_a_failure(backend: Any) -> None:
    with pytest.raises(RuntimeError, match=r"^task [0369] failed\n") as info:
        pmap(jobs.fail_every_third, range(10), workers=3, backend=backend)
    assert has_traceback(info.value)
    assert any(note.startswith("parmap: raised for input index") for note in info.value.__notes__)


def test_seed_scenario_async(backend: Any) -> None:
    async def main() -> tuple[MapResult[int], list[int]]:
        res = await apmap(
            jobs.fail_every_third, range(10), workers=3, on_error="collect", backend=backend
        )
        indexes = [
            out.index
            async for out in aimap(
                jobs.fail_every_third,
                range(10),
                workers=3,
                ordered=True,
                on_error="collect",
                backend=backend,
            )
        ]
        return res, indexes

    res, indexes = asyncio.run(main())
    seed_expectations(res)
    assert indexes == list(range(10))


def test_decorated_function_and_pool_reuse(backend: Any) -> None:
    try:
        assert jobs.decorated_square.pmap(range(6), backend=backend).values == [0, 1, 4, 9, 16, 25]
    finally:
        jobs.decorated_square.close()  # "process" is its own pool's backend: kept for reuse
    with Pool(workers=2, backend=backend) as pool:
        assert pool.pmap(jobs.square, range(30)).values == [x * x for x in range(30)]
        assert pool.pmap(jobs.add, range(5), range(5)).values == [0, 2, 4, 6, 8]
        assert [o.value for o in pool.imap(jobs.square, range(5), ordered=True)] == [0, 1, 4, 9, 16]


def test_imap_orders_outcomes_only_when_asked(backend: Any) -> None:
    seconds = [0.3] + [0.0] * 7
    ordered = list(
        imap(jobs.sleep_return, seconds, range(8), workers=2, ordered=True, backend=backend)
    )
    assert [o.index for o in ordered] == list(range(8))
    assert [o.value for o in ordered] == list(range(8))
    unordered = list(imap(jobs.sleep_return, seconds, range(8), workers=2, backend=backend))
    assert sorted(o.index for o in unordered) == list(range(8))
    assert all(o.value == o.index for o in unordered)


def test_retries_keep_order_and_retry_only_what_raised(backend: Any, tmp_path: Path) -> None:
    n = 6
    res = pmap(
        jobs.fail_first_attempt,
        range(n),
        [str(tmp_path)] * n,
        workers=3,
        retries=1,
        backend=backend,
    )
    assert res.ok and res.values == list(range(n))
    again = tmp_path / "again"
    again.mkdir()
    res = pmap(
        jobs.fail_first_attempt,
        range(n),
        [str(again)] * n,
        workers=3,
        retries=1,
        retry_on=KeyError,
        on_error="collect",
        backend=backend,
    )
    assert sorted(res.errors) == list(range(n))
    assert all(isinstance(e, ConnectionError) for e in res.errors.values())


def test_input_is_read_lazily_and_reading_stops_with_the_consumer(backend: Any) -> None:
    pulled = itertools.count()

    def endless() -> Iterator[int]:
        for i in itertools.count():
            next(pulled)
            yield i

    seen = []
    for outcome in imap(
        jobs.square, endless(), workers=2, buffer=16, ordered=True, backend=backend
    ):
        seen.append(outcome.value)
        if len(seen) == 40:
            break
    assert seen == [i * i for i in range(40)]
    assert next(pulled) <= 40 + 16 + 1


def test_progress_bar_reaches_the_total(backend: Any) -> None:
    out = io.StringIO()
    bar = tqdm(total=12, file=out, mininterval=0)
    try:
        res = pmap(
            jobs.fail_every_third,
            range(12),
            workers=3,
            on_error="collect",
            progress=bar,
            backend=backend,
        )
        assert bar.n == 12
        assert "12/12" in out.getvalue()
        assert len(res.errors) == 4
    finally:
        bar.close()


def test_timeout_is_reported_as_task_timeout_error(backend: Any, name: str) -> None:
    start = time.monotonic()
    res = pmap(
        jobs.backends_sleep_on,
        range(4),
        [2] * 4,
        [SLOW] * 4,
        workers=2,
        timeout=TIMEOUT,
        on_error="collect",
        backend=backend,
    )
    elapsed = time.monotonic() - start
    assert res.values == [0, 1, None, 3]
    error = res.errors[2]
    assert isinstance(error, TaskTimeoutError) and isinstance(error, TimeoutError)
    assert error.index == 2 and error.timeout == TIMEOUT
    if name == "serial":
        assert elapsed >= SLOW  # it ran to its end in the caller, then was reported
    else:
        assert elapsed < SLOW  # reported at its deadline, whatever became of the work


def test_timeout_under_apmap(backend: Any) -> None:
    res = asyncio.run(
        apmap(
            jobs.backends_sleep_on,
            range(3),
            [0] * 3,
            [SLOW] * 3,
            workers=2,
            timeout=TIMEOUT,
            on_error="collect",
            backend=backend,
        )
    )
    assert res.values == [None, 1, 2]
    assert isinstance(res.errors[0], TaskTimeoutError)


def test_apmap_leaves_the_loop_free_except_on_serial(backend: Any, name: str) -> None:

    async def main() -> tuple[MapResult[Any], int]:
        ticks = 0
        done = False

        async def tick() -> None:
            nonlocal ticks
            while not done:
                ticks += 1
                await asyncio.sleep(0.01)

        ticker = asyncio.create_task(tick())
        try:
            return await apmap(
                jobs.sleep_return, [0.25] * 4, range(4), workers=2, backend=backend
            ), ticks
        finally:
            done = True
            await ticker

    res, ticks = asyncio.run(main())
    assert res.values == [0, 1, 2, 3]
    if name == "serial":
        # As documented: serial runs each item in the caller, so the loop
        # only gets a turn between items (4 items: a handful of ticks).
        assert ticks <= 8
    else:
        assert ticks >= 15  # ~50 possible in 0.5 s; a blocked loop manages ~5


def test_a_task_raising_system_exit_becomes_remote_error(backend: Any) -> None:
    res = pmap(
        jobs.crash_how, range(3), ["sys_exit"] * 3, [1] * 3, on_error="collect", backend=backend
    )
    assert res.values == [0, None, 2]
    error = res.errors[1]
    assert isinstance(error, RemoteError) and error.type_name == "SystemExit"


def test_initializer_runs_where_there_are_workers_of_ours(backend: Any, name: str) -> None:
    if name in ("thread-executor", "process-executor", "dask"):
        with pytest.raises(ValueError, match="initializer is not supported"):
            pmap(jobs.recall, ["k"], initializer=jobs.remember, initargs=("k", 5), backend=backend)
        return
    res = pmap(
        jobs.recall,
        ["k"] * 4,
        workers=2,
        initializer=jobs.remember,
        initargs=("k", 5),
        backend=backend,
    )
    assert res.values == [5] * 4


def test_more_concurrent_maps_than_remembered_functions(backend: Any) -> None:
    async def main(pool: Pool) -> list[MapResult[int]]:
        maps = [pool.apmap(jobs.add, [k] * 3, range(3), on_error="collect") for k in range(70)]
        return await asyncio.gather(*maps)

    with Pool(workers=2, backend=backend) as pool:
        results = asyncio.run(main(pool))
    assert [r.values for r in results] == [[k, k + 1, k + 2] for k in range(70)]


# ----------------------------------------------------- what may differ, stated
def test_what_must_be_picklable(backend: Any, name: str) -> None:
    lock = threading.Lock()
    res = pmap(jobs.return_it, [1, lock, 3], on_error="collect", backend=backend)
    made = pmap(jobs.return_lock, range(3), on_error="collect", backend=backend)
    if name in IN_PROCESS:
        # Nothing crosses a process boundary: the very objects come back.
        assert res.ok and res.values[1] is lock
        assert made.ok and hasattr(made.values[1], "acquire")
    else:
        assert list(res.errors) == [1] and isinstance(res.errors[1], pickle.PicklingError)
        assert res.values == [1, None, 3]
        assert list(made.errors) == [1] and "could not be pickled" in str(made.errors[1])
        assert made.values == [0, None, 2]


def test_closures_work_and_in_process_ones_share_state(backend: Any, name: str) -> None:
    seen: list[int] = []
    offset = 10

    def record(x: int) -> int:
        seen.append(x)
        return x + offset

    with Pool(workers=2, backend=backend) as pool:  # no fork preloading: a real send
        assert pool.pmap(record, range(5)).values == [10, 11, 12, 13, 14]
        assert pool.pmap(lambda x: x * offset, range(3)).values == [0, 10, 20]
    if name in IN_PROCESS:
        assert sorted(seen) == [0, 1, 2, 3, 4]
    else:
        assert seen == []  # sent by value (cloudpickle): the copy's list filled up


def test_backend_object_that_is_not_an_executor_is_refused() -> None:
    fake = SimpleNamespace(submit=lambda *a: None)
    with pytest.raises(TypeError, match="backend must be 'process', 'thread', 'serial'"):
        pmap(abs, [1], backend=fake)


# ------------------------------------------------------------------- threads
def test_thread_timeout_abandons_the_work_and_replaces_the_thread(tmp_path: Path) -> None:
    start = time.monotonic()
    res = pmap(
        jobs.backends_slow_then_mark,
        [0, 1, 2],
        [0.0, SLOW, 0.0],
        [str(tmp_path)] * 3,
        workers=1,
        timeout=TIMEOUT,
        on_error="collect",
        backend="thread",
    )
    assert time.monotonic() - start < SLOW
    assert res.values == [0, None, 2] and isinstance(res.errors[1], TaskTimeoutError)
    # Not stopped: the abandoned item runs to its end in its old thread.
    eventually((tmp_path / "1.done").exists, within=30, message="the abandoned item never ended")
    assert (tmp_path / "2.done").exists()


def test_thread_items_run_in_threads_of_this_process() -> None:
    import os

    res = pmap(jobs.backends_where, range(8), workers=2, max_tasks_per_worker=2, backend="thread")
    where = [w for w in res.values if w is not None]
    assert len(where) == 8
    assert {pid for pid, _ in where} == {os.getpid()}
    names = {thread for _, thread in where}
    assert all(n.startswith("parmap-thread-") for n in names)
    assert len(names) >= 4  # a fresh thread every two items


# -------------------------------------------------------------------- serial
def test_serial_runs_in_the_calling_thread_in_input_order() -> None:
    order: list[int] = []

    def where(x: int) -> int:
        order.append(x)
        return threading.get_ident()

    res = pmap(where, range(10), workers=4, backend="serial")
    assert set(res.values) == {threading.get_ident()}
    assert order == list(range(10))


def test_serial_raise_keeps_the_real_traceback() -> None:
    with pytest.raises(RuntimeError, match="task 0 failed") as info:
        pmap(jobs.fail_every_third, range(5), backend="serial")
    frames = [tb.tb_frame.f_code.co_name for tb in _walk(info.value.__traceback__)]
    assert "fail_every_third" in frames


def _walk(tb: Any) -> Iterator[Any]:
    while tb is not None:
        yield tb
        tb = tb.tb_next


def test_serial_stops_at_the_first_failure_in_raise_mode() -> None:
    ran: list[int] = []

    def task(x: int) -> int:
        ran.append(x)
        if x == 2:
            raise ValueError("two")
        return x

    with pytest.raises(ValueError, match="two"):
        pmap(task, range(100), backend="serial", chunksize=50)
    assert ran == [0, 1, 2]


def test_serial_keyboard_interrupt_propagates() -> None:
    with pytest.raises(KeyboardInterrupt):
        pmap(jobs.backends_interrupt, range(4), backend="serial", on_error="collect")


def test_serial_timeout_is_reported_after_the_item_ran_to_its_end(tmp_path: Path) -> None:
    res = pmap(
        jobs.backends_slow_then_mark,
        [0, 1],
        [TIMEOUT * 2, 0.0],
        [str(tmp_path)] * 2,
        timeout=TIMEOUT,
        on_error="collect",
        backend="serial",
    )
    assert (tmp_path / "0.done").exists()  # it was not interrupted...
    assert isinstance(res.errors[0], TaskTimeoutError)  # ...but its value was discarded
    assert res.values == [None, 1]


# ----------------------------------------------------------------- executors
@pytest.mark.parametrize("make", [ThreadPoolExecutor, ProcessPoolExecutor])
def test_the_callers_executor_is_never_shut_down(make: Callable[[int], Executor]) -> None:
    with make(2) as executor:
        assert pmap(jobs.square, range(5), backend=executor).values == [0, 1, 4, 9, 16]
        with Pool(backend=executor) as pool:
            pool.pmap(jobs.square, range(3))
        assert executor.submit(jobs.square, 7).result(timeout=60) == 49


def test_a_broken_executor_fails_each_item_with_the_reason() -> None:
    executor = ThreadPoolExecutor(2)
    executor.shutdown()
    res = pmap(jobs.square, range(5), chunksize=5, on_error="collect", backend=executor)
    assert sorted(res.errors) == [0, 1, 2, 3, 4]
    assert all("shutdown" in str(e) for e in res.errors.values())


def test_remote_executor_sends_one_item_per_call_when_timed() -> None:
    # Longer than TIMEOUT: the executor's workers start under the deadline of
    # the first items, which a loaded machine can make slow.
    with ProcessPoolExecutor(2) as executor:
        res = pmap(
            jobs.backends_sleep_on,
            range(8),
            [5] * 8,
            [3 * SLOW] * 8,
            workers=2,
            timeout=3 * TIMEOUT,
            on_error="collect",
            backend=executor,
        )
    assert res.values == [0, 1, 2, 3, 4, None, 6, 7]
    assert list(res.errors) == [5] and isinstance(res.errors[5], TaskTimeoutError)


@parallel(backend="thread", workers=2)
def _doubled(x: int) -> int:
    return 2 * x


def test_backend_as_a_decorator_option() -> None:
    try:
        assert _doubled.pmap(range(4)).values == [0, 2, 4, 6]
        assert _doubled.pmap(range(4), backend="serial").values == [0, 2, 4, 6]
    finally:
        _doubled.close()


# --------------------------------------------------------------- cloudpickle
@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_lambdas_and_closures_reach_workers_under_every_start_method(method: StartMethod) -> None:
    # fork: the worker inherits the function; spawn and forkserver: cloudpickle.
    offset = 5
    res = pmap(lambda x: x + offset, range(4), workers=2, start_method=method)
    assert res.values == [5, 6, 7, 8]


_CLOSURE = "    scale = 3\n    def scaled(x):\n        return scale * x\n    fn = scaled\n"
_LAMBDA = "    fn = lambda x: x\n"


@pytest.mark.parametrize(
    ("definition", "name", "backend_code", "where"),
    [
        (
            _CLOSURE,
            "main.<locals>.scaled",
            "start_method='forkserver'",
            "worker processes ('forkserver' start method)",
        ),
        (_LAMBDA, "main.<locals>.<lambda>", "start_method='spawn'", "('spawn' start method)"),
        (_CLOSURE, "main.<locals>.scaled", "backend=ProcessPoolExecutor(1)", "to workers"),
    ],
    ids=["closure-forkserver", "lambda-spawn", "closure-executor"],
)
def test_without_cloudpickle_the_error_names_the_function_and_the_ways_out(
    definition: str, name: str, backend_code: str, where: str
) -> None:
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['cloudpickle'] = None\n"
        "from concurrent.futures import ProcessPoolExecutor\n"
        "import parmap\n"
        "def main():\n"
        f"{definition}"
        "    try:\n"
        f"        parmap.pmap(fn, [1], workers=1, {backend_code})\n"
        "    except TypeError as e:\n"
        "        print(e)\n"
        "if __name__ == '__main__':\n"
        "    main()\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert f"cannot send function {name}" in out.stdout, out.stderr
    assert where in out.stdout
    assert "module level" in out.stdout and "install cloudpickle" in out.stdout


def test_a_process_worker_error_pins_no_frame_of_the_parent() -> None:
    import distributed  # noqa: F401  (installs tblib's pickling of tracebacks, as for any dask user)

    res = pmap(jobs.raise_value_error, [1], on_error="collect", workers=1, backend="process")
    pinned = []
    tb = res.errors[0].__traceback__
    while tb is not None:
        frame: FrameType | None = tb.tb_frame
        while frame is not None:
            if "parmap" in frame.f_code.co_filename:
                pinned.append(frame.f_code.co_name)
            frame = frame.f_back
        tb = tb.tb_next
    # A captured error outliving its map must not keep the driver's frames
    # (and through them the job, the engine and the input) alive.
    assert pinned == []
