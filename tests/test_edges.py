"""Edges that the larger tests do not reach: argument checks, reprs, rare exits, bad frames."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import pytest

from parmap import (
    MapResult,
    Outcome,
    Pool,
    RemoteError,
    WorkerCrashedError,
    aimap,
    imap,
    parallel,
    pmap,
)
from parmap._results import describe_exit
from parmap._wire import HEADER, MAX_FDS, Inbox, Outbox, ProtocolError

from . import jobs


def test_ordered_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="ordered must be a bool, got 1"):
        imap(jobs.square, range(3), ordered=1)  # type: ignore[arg-type]


def test_parallel_without_parentheses_needs_a_callable() -> None:
    with pytest.raises(TypeError, match="@parallel needs a callable, got 'text'"):
        parallel("text")  # type: ignore[call-overload]


def test_a_pool_says_whether_it_is_open() -> None:
    pool = Pool(workers=2)
    assert repr(pool) == "<parmap.Pool workers=2 open>"
    pool.close()
    assert repr(pool) == "<parmap.Pool workers=2 closed>"
    with pytest.raises(RuntimeError, match="closed"):
        pool.pmap(jobs.square, range(2))


def test_initargs_given_as_a_list_reach_the_initializer_as_arguments() -> None:
    initargs: Any = ["key", "from a list"]  # typed as a tuple; a list is taken all the same
    with Pool(workers=1, initializer=jobs.remember, initargs=initargs) as pool:
        assert pool.pmap(jobs.recall, ["key"]).values == ["from a list"]


@pytest.mark.parametrize("initargs", [3, None])
def test_initargs_that_are_not_a_sequence_are_refused(initargs: Any) -> None:
    with pytest.raises(TypeError, match="initargs must be a tuple"):
        Pool(initargs=initargs)


def test_a_backend_without_submit_is_refused() -> None:
    with pytest.raises(TypeError, match="backend must be"):
        Pool(backend=object())


def test_a_result_built_from_outcomes_in_completion_order() -> None:
    records = [json.dumps({"id": i, "name": f"row {i}"}) for i in range(4)]
    error = ValueError("row 2 is bad")
    outcomes = [
        Outcome(3, records[3]),
        Outcome(2, error=error),
        Outcome(0, records[0]),
        Outcome(1, records[1]),
    ]
    res = MapResult.from_outcomes(outcomes)
    assert res.values == [records[0], records[1], None, records[3]]
    assert res.errors == {2: error}


def test_unwrap_groups_failures_that_are_not_exceptions() -> None:
    # An ExceptionGroup holds only Exceptions; a BaseException (as an
    # in-process backend may capture) is carried as a RemoteError.
    res = MapResult([b"\x00\x01", None], {1: KeyboardInterrupt("stop")})
    with pytest.raises(ExceptionGroup) as info:
        res.unwrap()
    (failure,) = info.value.exceptions
    assert isinstance(failure, RemoteError)
    assert (failure.type_name, failure.message) == ("KeyboardInterrupt", "stop")


@pytest.mark.parametrize(
    ("exitcode", "said"),
    [
        (None, "exit status unknown"),
        (3, "exit code 3"),
        (-signal.SIGSEGV, "killed by SIGSEGV"),
        (-200, "killed by signal 200"),  # no such signal name
    ],
)
def test_how_a_process_ended_is_said_plainly(exitcode: int | None, said: str) -> None:
    assert describe_exit(exitcode) == said


def test_a_frame_cannot_carry_more_descriptors_than_the_limit() -> None:
    with pytest.raises(ValueError, match=f"at most {MAX_FDS} descriptors"):
        Outbox().put(b"body", fds=list(range(MAX_FDS + 1)))


def _receive(inbox: Inbox, data: bytes) -> None:
    inbox.buffer()[: len(data)] = data
    inbox.received(len(data))


def test_a_header_claiming_too_many_descriptors_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match=f"claims {MAX_FDS + 1} descriptors"):
        _receive(Inbox(), HEADER.pack(4, MAX_FDS + 1) + b"body")


def test_a_frame_whose_descriptors_did_not_arrive_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="claims 2 descriptors, 0 arrived"):
        _receive(Inbox(), HEADER.pack(4, 2) + b"body")


@pytest.mark.parametrize(
    "backend", ["process", ProcessPoolExecutor], ids=["process", "ProcessPoolExecutor"]
)
def test_a_function_that_cannot_be_rebuilt_in_the_worker_fails_each_item(backend: Any) -> None:
    with contextlib.ExitStack() as stack:
        if backend is ProcessPoolExecutor:
            backend = stack.enter_context(ProcessPoolExecutor(1))
        res = pmap(
            jobs.FunctionLoadRaises(),
            ["a", "b"],
            workers=1,
            start_method="spawn",
            backend=backend,
            on_error="collect",
        )
    assert sorted(res.errors) == [0, 1]
    for error in res.errors.values():
        assert isinstance(error, ValueError) and str(error) == "this function cannot be rebuilt"


def test_an_exception_without_words_still_reports_its_type() -> None:
    res = pmap(jobs.raise_silent, range(3), workers=2, on_error="collect")
    assert res.values == [0, None, 2]
    error = res.errors[1]
    assert isinstance(error, RemoteError) and error.type_name.endswith("SilentError")
    assert error.message == "<str() of the exception failed>"


def test_a_decorated_function_awaits_and_streams_on_its_own_pool_or_a_temporary_one() -> None:
    async def main() -> tuple[list[Any], list[tuple[int, Any]], list[Any]]:
        awaited = (await jobs.decorated_square.apmap(range(4))).values
        streamed = [(o.index, o.value) async for o in jobs.decorated_square.aimap(range(3))]
        # A pool option makes a pool for this call alone, closed when it ends.
        own = (await jobs.decorated_square.apmap([5, 6], workers=1)).values
        return awaited, sorted(streamed), own

    try:
        awaited, streamed, own = asyncio.run(main())
    finally:
        jobs.decorated_square.close()  # its pool is kept for reuse otherwise
    assert awaited == [0, 1, 4, 9]
    assert streamed == [(0, 0), (1, 1), (2, 4)]
    assert own == [25, 36]


def test_bad_input_to_a_call_with_its_own_pool_closes_that_pool() -> None:
    # The autouse fixture fails the test if the temporary pool left a worker.
    with pytest.raises(TypeError):
        jobs.decorated_square.pmap(5, workers=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        aimap(jobs.square, 5)  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", ["thread", "serial"])
def test_an_initializer_that_fails_in_process_is_a_clear_error(backend: str) -> None:
    with (
        Pool(workers=2, backend=backend, initializer=jobs.initializer_fails) as pool,
        pytest.raises(LookupError, match="no configuration") as info,
    ):
        pool.pmap(jobs.square, range(4))
    assert any("initializer" in note for note in info.value.__notes__)


@pytest.mark.parametrize(
    ("exitcode", "sig"), [(-signal.SIGKILL, signal.SIGKILL), (-200, None), (3, None), (None, None)]
)
def test_a_crash_names_its_signal_only_when_there_is_one(
    exitcode: int | None, sig: signal.Signals | None
) -> None:
    assert WorkerCrashedError(7, exitcode).signal == sig


def test_parallel_applied_without_options_maps_like_the_decorator() -> None:
    square = parallel(jobs.square)
    try:
        assert square(7) == 49  # inline
        assert square.pmap(range(4)).values == [0, 1, 4, 9]
    finally:
        square.close()
