"""The executor's pump thread at its edges: a map whose function cannot be
sent, a map whose input is cut by shutdown, Ctrl-C with tasks queued."""

from __future__ import annotations

import functools
import threading
import time
from concurrent.futures import Future

import pytest

from parmap import Executor


def _sq(x: int) -> int:
    return x * x


def _with(lock: object, x: int) -> int:
    return x


def _nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def test_a_map_of_a_function_that_cannot_be_pickled_fails_when_iterated() -> None:
    with Executor(workers=1) as ex:
        # Not even cloudpickle sends a lock.
        it = ex.map(functools.partial(_with, threading.Lock()), range(3))
        with pytest.raises(TypeError, match="lock"):
            list(it)
        assert ex.submit(_sq, 5).result() == 25


def test_ctrl_c_cancels_queued_tasks_and_kills_the_running_one() -> None:
    futures: list[Future[float]] = []
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt), Executor(workers=1) as ex:  # noqa: PT012
        futures.append(ex.submit(_nap, 30))
        futures.extend(ex.submit(_nap, 30) for _ in range(3))
        while not futures[0].running():
            time.sleep(0.01)
        raise KeyboardInterrupt
    assert time.monotonic() - started < 25  # not the 30 s of the running task
    assert all(f.done() for f in futures)
    assert all(f.cancelled() for f in futures[1:])


def test_a_buffered_map_cut_by_shutdown_fails_the_inputs_it_did_not_read() -> None:
    ex = Executor(workers=1, backend="thread")
    it = ex.map(_sq, range(10), buffersize=2)
    first = next(it)
    ex.shutdown(wait=False)
    rest: list[object] = []
    with pytest.raises(RuntimeError, match="after shutdown"):
        rest.extend(it)  # keeps what came before the error
    assert first == 0
    assert len(rest) < 9
    ex.shutdown()
