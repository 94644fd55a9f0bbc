"""MapResult, Outcome and the exceptions, as the contract describes them."""

from __future__ import annotations

import pickle
import signal
from collections.abc import Sequence
from dataclasses import FrozenInstanceError

import pytest

from parmap import MapResult, Outcome, RemoteError, TaskTimeoutError, WorkerCrashedError
from parmap._codec import encode_error
from parmap._results import mark_index, outcome, rebuild_error

from . import jobs
from .jobs import NeedsTwoArgs


def make_result() -> MapResult[int]:
    return MapResult([10, None, 30], {1: ValueError("bad")})


def test_map_result_is_a_sequence_with_one_slot_per_input() -> None:
    res = make_result()
    assert isinstance(res, Sequence)
    assert len(res) == 3
    assert res[0] == 10
    assert res[-1] == 30
    with pytest.raises(ValueError, match="bad"):
        res[1]
    with pytest.raises(IndexError):
        res[3]


def test_map_result_fields() -> None:
    res = make_result()
    assert res.values == [10, None, 30]
    assert list(res.errors) == [1]
    assert not res.ok
    assert MapResult([1, 2], {}).ok
    assert "3 items, 1 failed" in repr(res)


def test_unwrap_returns_values_or_raises_a_group_of_every_failure() -> None:
    assert MapResult([1, 2], {}).unwrap() == [1, 2]
    res = MapResult([None, None, 3], {0: ValueError("a"), 1: KeyError("b")})
    with pytest.raises(ExceptionGroup) as info:
        res.unwrap()
    assert [type(e) for e in info.value.exceptions] == [ValueError, KeyError]
    assert "2 of 3 items failed" in str(info.value)


def test_iterating_and_slicing_raise_at_a_failed_slot() -> None:
    res = make_result()
    assert res[2:] == [30]
    with pytest.raises(ValueError, match="bad"):
        list(res)


def test_outcome() -> None:
    good: Outcome[int] = Outcome(3, 9)
    assert good.ok and good.unwrap() == 9 and good.index == 3 and good.error is None
    bad: Outcome[int] = Outcome(4, None, KeyError("k"))
    assert not bad.ok
    with pytest.raises(KeyError):
        bad.unwrap()


def test_timeout_and_crash_errors() -> None:
    timeout = TaskTimeoutError(5, 2.5)
    assert isinstance(timeout, TimeoutError)
    assert timeout.index == 5 and timeout.timeout == 2.5
    assert "2.5 s" in str(timeout)
    crash = WorkerCrashedError(2, -signal.SIGSEGV)
    assert crash.signal == signal.SIGSEGV
    assert "SIGSEGV" in str(crash)
    exited = WorkerCrashedError(2, 3)
    assert exited.signal is None and "exit code 3" in str(exited)
    for exc in (timeout, crash, RemoteError("T", "m", "tb")):
        again = pickle.loads(pickle.dumps(exc))
        assert type(again) is type(exc) and str(again) == str(exc)


def test_an_exception_keeps_its_type_and_gains_the_remote_traceback() -> None:
    try:
        raise ValueError("original")
    except ValueError as exc:
        payload = encode_error(exc)
    rebuilt = mark_index(rebuild_error(payload), 7)
    assert type(rebuilt) is ValueError
    assert "Traceback" in str(rebuilt.__cause__) and "original" in str(rebuilt.__cause__)
    assert "parmap: raised for input index 7" in rebuilt.__notes__


def test_an_exception_that_cannot_cross_becomes_remote_error() -> None:
    try:
        raise NeedsTwoArgs(1, 2)
    except NeedsTwoArgs as exc:
        payload = encode_error(exc)
    rebuilt = rebuild_error(payload)
    assert isinstance(rebuilt, RemoteError)
    assert rebuilt.type_name.endswith("NeedsTwoArgs")
    assert rebuilt.message == "needs 1 and 2"
    assert "Traceback" in rebuilt.traceback


def test_base_exceptions_from_tasks_become_remote_error() -> None:
    for exc in (SystemExit(3), KeyboardInterrupt()):
        rebuilt = rebuild_error(encode_error(exc))
        assert isinstance(rebuilt, RemoteError)
        assert rebuilt.type_name in ("SystemExit", "KeyboardInterrupt")


# ------------------------------------------- exceptions of every shape (issue 12)
def test_the_index_note_is_added_whatever_the_class_or_its_notes() -> None:
    frozen = jobs.RecordRejectedError('{"born": 1906}', "no name")
    with pytest.raises(FrozenInstanceError):
        frozen.__notes__ = []
    assert mark_index(frozen, 4).__notes__ == ["parmap: raised for input index 4"]

    tupled = ValueError("x")
    tupled.__notes__ = ("kept",)  # type: ignore[assignment]
    mark_index(tupled, 1)
    mark_index(tupled, 1)  # once only
    assert tupled.__notes__ == ["kept", "parmap: raised for input index 1"]

    odd = ValueError("y")
    odd.__notes__ = "not a list"  # type: ignore[assignment]
    assert mark_index(odd, 2).__notes__ == ["not a list", "parmap: raised for input index 2"]


def test_a_frozen_exception_is_encoded_and_rebuilt_with_its_remote_traceback() -> None:
    with pytest.raises(jobs.FrozenBareError) as info:
        jobs.validate_record('{"name": ""}')
    payload = encode_error(info.value)
    assert info.value.__traceback__ is None  # dropped before pickling, despite the class
    rebuilt = rebuild_error(payload)
    assert type(rebuilt) is jobs.FrozenBareError
    assert "validate_record" in str(rebuilt.__cause__)


def test_encoding_an_exception_whose_str_raises_keyboard_interrupt_does_not_raise() -> None:
    with pytest.raises(jobs.LoudStrError) as info:
        jobs.raise_loud_on(3, 3)
    data, name, message, tb_text = encode_error(info.value)
    assert name == "tests.jobs.LoudStrError"
    assert "str() of the exception failed" in message
    assert "raise_loud_on" in tb_text
    assert data is not None and type(pickle.loads(data)) is jobs.LoudStrError


def test_a_frozen_exception_survives_tblibs_reducers() -> None:
    # dask installs tblib's pickling support, which rebuilds every exception
    # by setting attributes: a frozen dataclass refuses that. Run apart, as
    # the install is for the whole process.
    import subprocess
    import sys
    from pathlib import Path

    script = (
        "import tblib.pickling_support\n"
        "tblib.pickling_support.install()\n"
        "from tests import jobs\n"
        "from parmap._results import rebuild_error\n"
        "from parmap._codec import encode_error\n"
        "try:\n"
        '    jobs.validate_record(\'{"name": ""}\')\n'
        "except Exception as exc:\n"
        "    error = exc\n"
        "print(type(rebuild_error(encode_error(error))).__name__)\n"
    )
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=60
    )
    assert out.stdout.strip() == "FrozenBareError", out.stderr


def test_the_fast_outcome_is_an_outcome_like_any_other() -> None:
    made = outcome(3, "x")
    assert type(made) is Outcome and made == Outcome(3, "x") and hash(made) == hash(Outcome(3, "x"))
    assert outcome(4, None, KeyError("k")).ok is False
    with pytest.raises(FrozenInstanceError):
        made.index = 5  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(made)) == made
