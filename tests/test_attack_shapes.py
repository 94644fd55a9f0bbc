"""Issue 12, under attack: exceptions and callables of every shape, and the read-ahead window.

Each test here failed before its fix. They check what the user is promised
(the item fails alone and clearly, the map runs, memory stays bounded), not
how: on every backend where the shape can occur, with real worker processes.
A case that once hung runs in a subprocess with a hard time limit.
"""

from __future__ import annotations

import functools
import gc
import json
import pickle
import subprocess
import sys
import textwrap
import weakref
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import parmap
from parmap import (
    Pool,
    RemoteError,
    TaskTimeoutError,
    WorkerCrashedError,
    parallel,
    pmap,
)
from parmap._parallel import ParallelFunction

from . import jobs

pytestmark = pytest.mark.timeout(120)

BACKENDS = [
    pytest.param({"backend": "process", "start_method": "fork"}, id="fork"),
    pytest.param({"backend": "process", "start_method": "spawn"}, id="spawn"),
    pytest.param({"backend": "thread"}, id="thread"),
    pytest.param({"backend": "serial"}, id="serial"),
]
SRC = str(Path(parmap.__file__).resolve().parent.parent)
ROOT = str(Path(__file__).resolve().parent.parent)


def run_script(code: str, *, limit: float = 90.0) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter, killed after ``limit`` seconds."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=limit,
        cwd=ROOT,
        env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"},
        check=False,
    )


def note_of(index: int) -> str:
    return f"parmap: raised for input index {index}"


# ----------------------------------------------------------- odd exceptions
RECORDS = [
    json.dumps({"name": "ada", "born": 1815}),
    json.dumps({"born": 1906}),  # no name: a frozen dataclass exception with fields
    json.dumps({"name": "grace", "born": 1906}),
    json.dumps({"name": "", "born": 1912}),  # empty name: a frozen one without fields
]


@pytest.mark.parametrize("options", BACKENDS)
def test_a_frozen_dataclass_exception_fails_only_its_item(options: dict[str, Any]) -> None:
    res = pmap(jobs.validate_record, RECORDS, workers=2, on_error="collect", **options)
    assert res.values[0] == {"name": "ada", "born": 1815}
    assert res.values[2] == {"name": "grace", "born": 1906}
    assert sorted(res.errors) == [1, 3]
    rejected, bare = res.errors[1], res.errors[3]
    assert not isinstance(rejected, WorkerCrashedError)
    if options["backend"] == "process":
        # Its fields cannot be unpickled (the class refuses __setstate__'s
        # writes, in plain Python too): it arrives described.
        assert isinstance(rejected, RemoteError)
        assert rejected.type_name == "tests.jobs.RecordRejectedError"
        assert "no name" in rejected.message and "validate_record" in rejected.traceback
    else:
        assert isinstance(rejected, jobs.RecordRejectedError)
        assert rejected.reason == "no name"
    # One without fields crosses as itself, with the index and the remote traceback.
    assert type(bare) is jobs.FrozenBareError
    for index, error in res.errors.items():
        assert note_of(index) in error.__notes__


@pytest.mark.parametrize("options", BACKENDS)
def test_a_frozen_dataclass_exception_stops_a_raise_mode_map_as_itself(
    options: dict[str, Any],
) -> None:
    expected = RemoteError if options["backend"] == "process" else jobs.RecordRejectedError
    with pytest.raises(expected) as info:
        pmap(jobs.validate_record, RECORDS[:2], workers=1, **options)
    assert note_of(1) in info.value.__notes__


@pytest.mark.parametrize("options", BACKENDS)
def test_an_exception_whose_str_raises_keyboard_interrupt_fails_only_its_item(
    options: dict[str, Any],
) -> None:
    with Pool(workers=1, **options) as pool:
        res = pool.pmap(jobs.raise_loud_on, range(6), [2] * 6, on_error="collect")
        pids_before = pool.pmap(jobs.getpid, range(2)).values
        assert res.values == [0, 1, None, 3, 4, 5]
        assert type(res.errors[2]) is jobs.LoudStrError
        assert note_of(2) in res.errors[2].__notes__
        # The worker lived through it: no replacement was started.
        assert pool.pmap(jobs.getpid, range(2)).values == pids_before


@pytest.mark.parametrize("options", BACKENDS)
def test_notes_that_are_a_tuple_are_kept_and_gain_the_index(options: dict[str, Any]) -> None:
    words = ["alpha", "b3ta", "gamma", "d3lta"]
    res = pmap(jobs.raise_with_tuple_notes, words, workers=2, on_error="collect", **options)
    assert res.values == ["ALPHA", None, "GAMMA", None]
    for index in (1, 3):
        error = res.errors[index]
        assert isinstance(error, ValueError)
        assert list(error.__notes__) == ["checked by raise_with_tuple_notes", note_of(index)]


# --------------------------------------------------------- odd callables
@pytest.mark.parametrize("options", BACKENDS)
def test_an_unhashable_callable_is_mapped(options: dict[str, Any]) -> None:
    scale = jobs.Scale(0.5)
    with pytest.raises(TypeError):
        hash(scale)
    readings = [12.0, 7.5, 3.25, 100.0]
    expected = [6.0, 3.75, 1.625, 50.0]
    assert pmap(scale, readings, workers=2, **options).values == expected
    with Pool(workers=2, **options) as pool:
        assert pool.pmap(scale, readings).values == expected
        assert [o.value for o in pool.imap(scale, readings, ordered=True)] == expected
    task = parallel(workers=2, **options)(scale)
    try:
        assert task.pmap(readings).values == expected
    finally:
        task.close()


@pytest.mark.parametrize("options", BACKENDS)
def test_parallel_on_a_partial_or_a_callable_instance(options: dict[str, Any]) -> None:
    lines = ["the quick brown fox", "  jumps over ", "", "the lazy dog"]
    cases: list[tuple[ParallelFunction[..., Any], list[Any], list[Any]]] = [
        (jobs.parallel_count_spaces, lines, [4, 2, 0, 3]),
        (jobs.parallel_scale, [1.0, 2.0, 4.0], [2.5, 5.0, 10.0]),
    ]
    for task, inputs, expected in cases:
        assert "parallel function" in repr(task)
        try:
            assert task.pmap(inputs, **options).values == expected
        finally:
            task.close()
    assert "count_words" in repr(jobs.parallel_count_spaces)
    assert "Scale(factor=2.5)" in repr(jobs.parallel_scale)


def test_a_parallel_partial_pickles_by_value_and_still_maps() -> None:
    copy = pickle.loads(pickle.dumps(jobs.parallel_count_spaces))
    assert copy("a b c") == 3
    try:
        assert copy.pmap(["a b", "c"], start_method="spawn").values == [2, 1]
    finally:
        copy.close()
    # A named @parallel function still pickles by reference, to itself.
    assert pickle.loads(pickle.dumps(jobs.decorated_square)) is jobs.decorated_square


def test_a_parallel_partial_on_a_process_pool_executor_of_its_own() -> None:
    # The wrapper travels by value to the executor's processes; its options
    # name the executor, which stays behind (it belongs to this process).
    with ProcessPoolExecutor(2) as executor:
        task = parallel(workers=2, backend=executor)(functools.partial(jobs.count_words, sep=","))
        try:
            assert task.pmap(["a,b,c", "d", ",,"]).values == [3, 1, 0]
        finally:
            task.close()


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"backend": "process"}, id="process"),
        pytest.param({"backend": "thread"}, id="thread"),
        pytest.param({"backend": "serial"}, id="serial"),
    ],
)
def test_a_long_lived_pool_keeps_no_earlier_maps_function_alive(options: dict[str, Any]) -> None:
    maps = 12
    alive: list[weakref.ref[Any]] = []
    rng = np.random.default_rng(12)
    with Pool(workers=2, **options) as pool:
        for _ in range(maps):
            # A 4 MB array of measurements bound in a partial.
            fn = functools.partial(jobs.array_sum, rng.normal(size=1 << 19))
            alive.append(weakref.ref(fn))
            assert len(pool.pmap(fn, range(4)).values) == 4
            del fn
        gc.collect()
        held = sum(ref() is not None for ref in alive)
        # At most the last map's function may wait to be dropped by the next map.
        assert held <= 1, f"{held} of {maps} maps' functions are still alive"


# ------------------------------------------------------------- options
def test_an_explicit_chunksize_keeps_the_read_ahead_window() -> None:
    out = run_script(
        """
        import itertools
        from parmap import Pool
        pulled = 0
        def endless():
            global pulled
            for i in itertools.count():
                pulled += 1
                yield i
        if __name__ == "__main__":
            with Pool(workers=2) as pool:
                stream = pool.imap(abs, endless(), chunksize=10**5)
                next(stream)
                print(pulled)
                stream.close()
        """
    )
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) <= 65_536


@pytest.mark.parametrize(
    ("how", "retry_on", "attempts", "error"),
    [
        ("hang", (OSError,), 1, TaskTimeoutError),
        ("hang", (Exception,), 1, TaskTimeoutError),
        ("hang", (TimeoutError,), 2, TaskTimeoutError),
        ("hang", (TaskTimeoutError,), 2, TaskTimeoutError),
        ("die", (RuntimeError,), 1, WorkerCrashedError),
        ("die", (WorkerCrashedError,), 2, WorkerCrashedError),
    ],
)
def test_timeouts_and_crashes_are_retried_only_when_retry_on_names_them(
    how: str,
    retry_on: tuple[type[BaseException], ...],
    attempts: int,
    error: type[BaseException],
    tmp_path: Path,
) -> None:
    res = pmap(
        jobs.attempt_then,
        range(3),
        [how] * 3,
        [str(tmp_path)] * 3,
        workers=2,
        timeout=1 if how == "hang" else None,
        retries=1,
        retry_on=retry_on,
        on_error="collect",
    )
    assert res.values[1:] == [1, 2]
    assert type(res.errors[0]) is error
    assert len(list(tmp_path.glob("0.*"))) == attempts
