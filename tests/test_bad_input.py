"""Bad input: each odd thing gets a clear error for its item or for the call, never a hang.

Promise 3 of DESIGN.md, pushed further than the examples: odd functions and
iterables, input iterators that raise at different points, arguments and
results that cannot cross the process boundary either way, huge results,
exceptions that cannot be pickled or unpickled, and ``BaseException``
subclasses raised by a task. Every test has a timeout, and the autouse
fixture fails any test that leaves a process behind.
"""

from __future__ import annotations

import asyncio
import pickle
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from parmap import Pool, RemoteError, WorkerCrashedError, apmap, imap, parallel, pmap
from parmap._options import StartMethod

from . import jobs
from .checks import run_limited

pytestmark = pytest.mark.timeout(60)


class InputBrokeError(Exception):
    """What the test's input iterators raise."""


def breaking(items: list[Any], at: int, error: BaseException) -> Iterator[Any]:
    """Yield ``items[:at]``, then raise ``error`` (``at == len(items)``: after the last one)."""
    yield from items[:at]
    raise error


# ------------------------------------------------------------- call errors
@pytest.mark.parametrize(
    "call",
    [
        lambda: pmap(None, [1]),  # type: ignore[arg-type]
        lambda: list(imap(None, [1])),  # type: ignore[arg-type]
        lambda: asyncio.run(apmap(None, [1])),  # type: ignore[arg-type]
        lambda: Pool(workers=1).pmap(None, [1]),  # type: ignore[arg-type]
        lambda: parallel(workers=1)(None),  # type: ignore[arg-type]
    ],
    ids=["pmap", "imap", "apmap", "Pool.pmap", "parallel"],
)
def test_none_as_the_function_is_a_type_error(call: Callable[[], object]) -> None:
    with pytest.raises(TypeError, match="callable"):
        call()


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((5,), "input 1 must be an iterable"),
        ((None,), "input 1 must be an iterable"),
        (([1, 2], 3.5), "input 2 must be an iterable"),
        ((), "at least one iterable"),
    ],
)
def test_non_iterable_input_is_a_type_error(args: tuple[Any, ...], match: str) -> None:
    with pytest.raises(TypeError, match=match):
        pmap(jobs.square, *args, workers=1)
    with Pool(workers=1) as pool, pytest.raises(TypeError, match=match):
        pool.pmap(jobs.square, *args)
    with pytest.raises(TypeError, match=match.replace("an iterable", "an iterable or async")):
        asyncio.run(apmap(jobs.square, *args, workers=1))


def test_an_iterable_whose_iter_raises_propagates() -> None:
    class NoIter:
        def __iter__(self) -> Iterator[int]:
            raise InputBrokeError("no iterator today")

    with pytest.raises(InputBrokeError, match="no iterator today"):
        pmap(jobs.square, NoIter(), workers=1)


def test_empty_inputs_give_empty_results() -> None:
    assert pmap(jobs.square, [], workers=2).values == []
    assert list(imap(jobs.square, iter(()), workers=2)) == []
    assert asyncio.run(apmap(jobs.square, [], workers=2)).values == []
    assert pmap(jobs.add, [1, 2, 3], [], workers=1).values == []


def test_a_function_that_cannot_be_sent_is_a_clear_type_error() -> None:
    """Under spawn the function must be pickled; a refusal (even with cloudpickle) says so."""

    class Unsendable:
        def __call__(self, x: int) -> int:
            return x

        def __reduce__(self) -> Any:
            raise RuntimeError("this callable refuses to be pickled")

    with Pool(workers=1, start_method="spawn") as pool, pytest.raises(TypeError) as info:
        pool.pmap(Unsendable(), [1])
    assert "cannot send function" in str(info.value)
    assert "refuses to be pickled" in str(info.value)


# ------------------------------------------------------ input that raises
@pytest.mark.parametrize("on_error", ["raise", "collect"])
@pytest.mark.parametrize("at", [0, 1, 37, 100], ids=["first", "second", "middle", "after-last"])
def test_an_input_iterator_that_raises_propagates_its_exception(on_error: str, at: int) -> None:
    error = InputBrokeError(f"broke at {at}")
    with pytest.raises(InputBrokeError) as info:
        pmap(
            jobs.square,
            breaking(list(range(100)), at, error),
            workers=2,
            buffer=8,
            on_error=on_error,  # type: ignore[arg-type]
        )
    assert info.value is error


def test_an_input_error_stops_long_running_items_promptly() -> None:
    """Items that would run for a minute are killed; the input's error arrives at once.

    The input is read lazily: the error happens when the first (short) item's
    outcome makes room in the buffer, while two long items are running.
    """
    error = InputBrokeError("broke while items ran")
    started = time.monotonic()
    with pytest.raises(InputBrokeError) as info:
        pmap(
            jobs.sleep_return,
            breaking([0.05, 60.0, 60.0], 3, error),
            workers=2,
            buffer=3,
            chunksize=1,
        )
    assert info.value is error
    assert time.monotonic() - started < 15


def test_imap_yields_what_it_has_then_raises_the_input_error() -> None:
    error = InputBrokeError("broke at 30")
    seen: list[int] = []
    with pytest.raises(InputBrokeError) as info:  # noqa: PT012
        for out in imap(jobs.square, breaking(list(range(100)), 30, error), workers=2, buffer=4):
            seen.append(out.index)
    assert info.value is error
    assert len(set(seen)) == len(seen) and set(seen) <= set(range(30))


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_apmap_input_that_raises_propagates(kind: str) -> None:
    error = InputBrokeError("async input broke")

    async def agen() -> AsyncIterator[int]:
        for i in range(5):
            yield i
        raise error

    source = agen() if kind == "async" else breaking(list(range(5)), 5, error)
    with pytest.raises(InputBrokeError) as info:
        asyncio.run(apmap(jobs.square, source, workers=2))
    assert info.value is error


def test_a_pool_keeps_working_after_an_input_error() -> None:
    with Pool(workers=2) as pool:
        for _ in range(3):
            with pytest.raises(InputBrokeError):
                pool.pmap(
                    jobs.sleep_return,
                    breaking([0.01, 30.0, 30.0], 3, InputBrokeError()),
                    buffer=3,
                    chunksize=1,
                )
            assert pool.pmap(jobs.square, range(20)).values == [x * x for x in range(20)]


# ---------------------------------------------------------------- arguments
@pytest.mark.parametrize("method", ["fork", "spawn"])
@pytest.mark.parametrize(
    "bad", [threading.Lock(), jobs.HardDumpRaises()], ids=["lock", "reduce-raises"]
)
def test_an_argument_that_cannot_be_pickled_fails_only_its_item(
    method: StartMethod, bad: Any
) -> None:
    args: list[Any] = [0, bad, 2, 3]
    with Pool(workers=2, start_method=method) as pool:
        res = pool.pmap(jobs.return_it, args, on_error="collect", chunksize=4)
    assert res.values == [0, None, 2, 3]
    assert list(res.errors) == [1]
    error = res.errors[1]
    assert isinstance(error, pickle.PicklingError)
    assert "input 1" in str(error) and "could not be pickled" in str(error)


def test_an_input_that_fails_to_pickle_only_in_its_chunk_fails_and_does_not_loop() -> None:
    # Tried alone it pickles, in its chunk it did not: sent again and again on
    # its own, it used to keep the map busy forever.
    code = "from tests import jobs; jobs.map_an_input_that_pickles_every_other_time()"
    out = run_limited([sys.executable, "-c", code], limit=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("failed its item") == 2, out.stdout


def test_many_arguments_that_cannot_be_pickled_each_fail_alone() -> None:
    """A long run of unpicklable arguments (a large buffer) must not exhaust the stack."""
    args: list[Any] = [jobs.HardDumpRaises() for _ in range(2000)]
    res = pmap(jobs.return_it, args, workers=2, on_error="collect", buffer=2000)
    assert len(res.errors) == 2000
    assert all(isinstance(e, pickle.PicklingError) for e in res.errors.values())


def test_an_argument_that_cannot_be_unpickled_in_the_worker_fails_only_its_item(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Unpickling raises in the worker: a clear error for that item, no worker traceback."""
    args: list[Any] = [0, jobs.HardLoadRaises(), 2, 3]
    res = pmap(jobs.return_it, args, workers=1, chunksize=4, on_error="collect")
    assert res.values == [0, None, 2, 3]
    assert list(res.errors) == [1]
    error = res.errors[1]
    text = f"{error} {error.__cause__}"
    assert not isinstance(error, WorkerCrashedError), (
        f"the item failed as a crash ({error}) instead of saying its argument "
        "could not be unpickled"
    )
    assert "unpickl" in text.lower() and "cannot be rebuilt" in text
    assert "Traceback" not in capfd.readouterr().err


def test_a_100_mb_argument_and_result_cross() -> None:
    blob = b"x" * (100 << 20)
    res = pmap(len, [blob, b"y"], workers=2)
    assert res.values == [100 << 20, 1]
    big = pmap(jobs.big_result, [100], workers=1)
    assert len(big[0]) == 100 << 20


# ------------------------------------------------------------------- results
def test_a_result_that_cannot_be_pickled_fails_only_its_item() -> None:
    res = pmap(jobs.hard_return_odd, range(4), ["dump_raises"] * 4, workers=1, on_error="collect")
    assert res.values == [0, None, 2, 3]
    assert isinstance(res.errors[1], pickle.PicklingError)
    assert "result could not be pickled" in str(res.errors[1])
    assert "refuses to be pickled" in str(res.errors[1])


def test_a_result_whose_unpickling_raises_system_exit_fails_only_its_item() -> None:
    """Rebuilding a result in the parent runs its code; a SystemExit there must not stop the map."""
    with Pool(workers=1) as pool:
        res = pool.pmap(jobs.hard_return_odd, range(4), ["exit_on_load"] * 4, on_error="collect")
        assert res.values == [0, None, 2, 3]
        assert "could not be unpickled" in str(res.errors[1])
        assert pool.pmap(jobs.square, [3]).values == [9]


# -------------------------------------------------------------- exceptions
def test_an_exception_whose_pickling_raises_becomes_remote_error() -> None:
    res = pmap(jobs.hard_raise_broken_reduce, range(3), workers=1, on_error="collect")
    assert res.values == [0, None, 2]
    error = res.errors[1]
    assert isinstance(error, RemoteError)
    assert error.type_name == "tests.jobs.HardBrokenReduceError"
    assert error.message == "broken reduce at 1"
    assert "hard_raise_broken_reduce" in error.traceback
    assert "parmap: raised for input index 1" in error.__notes__


def test_an_exception_that_cannot_be_unpickled_in_the_parent_becomes_remote_error() -> None:
    """It round-trips in the worker but not in the parent."""
    res = pmap(jobs.hard_raise_worker_only, range(3), workers=1, on_error="collect")
    error = res.errors[1]
    assert isinstance(error, RemoteError)
    assert error.type_name == "tests.jobs.HardWorkerOnlyError"
    assert error.message == "worker-only error at 1"
    assert "hard_raise_worker_only" in error.traceback


@pytest.mark.parametrize(
    ("kind", "type_name", "message"),
    [
        ("SystemExit", "SystemExit", "3"),
        ("exit", "SystemExit", "task called sys.exit"),
        ("KeyboardInterrupt", "KeyboardInterrupt", "pressed inside a task"),
        ("GeneratorExit", "GeneratorExit", "odd but legal"),
        ("custom", "tests.jobs.HardBaseError", "not an Exception"),
    ],
)
def test_base_exceptions_raised_by_a_task_become_remote_errors(
    kind: str, type_name: str, message: str
) -> None:
    with Pool(workers=2) as pool:
        res = pool.pmap(jobs.hard_raise_base, [kind, "none", kind], on_error="collect")
        assert res.values == [None, None, None]
        assert sorted(res.errors) == [0, 2]
        for error in res.errors.values():
            assert isinstance(error, RemoteError)
            assert (error.type_name, error.message) == (type_name, message)
            assert "hard_raise_base" in error.traceback
        # In raise mode it is raised as RemoteError, never as itself.
        with pytest.raises(RemoteError, match=type_name):
            pool.pmap(jobs.hard_raise_base, [kind])
        # The parent and the pool are unaffected.
        assert pool.pmap(jobs.square, range(10)).values == [x * x for x in range(10)]
