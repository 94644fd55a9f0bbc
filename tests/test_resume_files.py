"""Checkpoint files that are damaged, closed or odd, and outcomes that do not
pickle, on real SQLite files (serial backend: cheap, in this process)."""

from __future__ import annotations

import functools
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from parmap import pmap
from parmap._checkpoint import (
    CheckpointError,
    CheckpointFile,
    CheckpointFileError,
    describe_function,
)


def _double(x: int) -> int:
    return 2 * x


def _fail_odd(x: int) -> int:
    if x % 2:
        raise ValueError(f"odd {x}")
    return x


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text")


class _Unpicklable(Exception):
    def __reduce__(self) -> Any:
        raise TypeError("not this one")


def _raise_odd_oddly(x: int) -> int:
    if x == 1:
        raise _Unprintable
    if x == 3:
        raise _Unpicklable("kept as text only")
    return x


def _lock(x: object) -> object:
    return threading.Lock()


def _identity(x: object) -> object:
    return 0


def test_a_directory_cannot_be_opened(tmp_path: Path) -> None:
    with pytest.raises(CheckpointFileError, match="cannot open checkpoint"):
        CheckpointFile.open(str(tmp_path), "m.f", "0")


def test_a_file_that_does_not_name_its_function_is_damaged(tmp_path: Path) -> None:
    path = str(tmp_path / "ck.sqlite")
    CheckpointFile.open(path, "m.f", "0").close()
    with sqlite3.connect(path) as conn:
        conn.execute("DELETE FROM meta WHERE key = 'function'")
    conn.close()
    with pytest.raises(CheckpointFileError, match="does not name its function"):
        CheckpointFile.open(path, "m.f", "0")


def test_a_closed_file_cannot_be_read_or_written(tmp_path: Path) -> None:
    f = CheckpointFile.open(str(tmp_path / "ck.sqlite"), "m.f", "0")
    f.save([(0, b"f" * 16, b"v")])
    f.close()
    with pytest.raises(CheckpointError, match="cannot read"):
        f.successes(0, 1)
    with pytest.raises(CheckpointError, match="cannot write"):
        f.save([(1, b"f" * 16, b"w")])


def test_a_failed_save_leaves_the_file_as_it_was(tmp_path: Path) -> None:
    f = CheckpointFile.open(str(tmp_path / "ck.sqlite"), "m.f", "0")
    f.save([(0, b"f" * 16, b"v")])
    with pytest.raises(CheckpointError, match="cannot write"):
        # The failure's row has a column too many: the transaction rolls back,
        # taking the success saved in it along.
        f.save([(1, b"f" * 16, b"w")], [(2, b"f" * 16, "T", "m", "tb", None, "extra")])  # type: ignore[list-item]
    assert set(f.successes(0, 10)) == {0}
    f.close()


def test_describe_function_names_partials() -> None:
    assert describe_function(functools.partial(_double, 1)) == (
        f"functools.partial({__name__}._double)"
    )


def test_failures_are_recorded_and_run_again(tmp_path: Path) -> None:
    ck = tmp_path / "ck.sqlite"
    out = pmap(_fail_odd, range(4), backend="serial", checkpoint=ck, on_error="collect")
    assert sorted(out.errors) == [1, 3]
    assert isinstance(out.errors[1], ValueError)
    with sqlite3.connect(ck) as conn:
        rows = conn.execute(
            "SELECT idx, ok, error_type, error_message FROM outcome ORDER BY idx"
        ).fetchall()
    conn.close()
    assert rows[1] == (1, 0, "builtins.ValueError", "odd 1")
    assert [r[1] for r in rows] == [1, 0, 1, 0]


def test_errors_without_text_or_pickle_are_recorded(tmp_path: Path) -> None:
    ck = tmp_path / "ck.sqlite"
    out = pmap(_raise_odd_oddly, range(4), backend="serial", checkpoint=ck, on_error="collect")
    assert isinstance(out.errors[1], _Unprintable)
    with sqlite3.connect(ck) as conn:
        rows = {
            idx: (msg, data)
            for idx, msg, data in conn.execute(
                "SELECT idx, error_message, error_pickle FROM outcome WHERE ok = 0"
            )
        }
    conn.close()
    assert rows[1][0] == "<unprintable _Unprintable>"
    assert rows[3] == ("kept as text only", None)


def test_unpicklable_arguments_and_values_warn_and_run_again(tmp_path: Path) -> None:
    ck = tmp_path / "ck.sqlite"
    args: list[object] = [1, threading.Lock(), 3]
    with pytest.warns(RuntimeWarning, match="input 1 succeeded but is not recorded"):
        assert pmap(_identity, args, backend="serial", checkpoint=ck).values == [0, 0, 0]
    with pytest.warns(RuntimeWarning, match="its value cannot be pickled"):
        pmap(_lock, range(2), backend="serial", checkpoint=tmp_path / "ck2.sqlite")


def test_a_record_that_no_longer_loads_runs_again(tmp_path: Path) -> None:
    ck = tmp_path / "ck.sqlite"
    assert pmap(_double, range(3), backend="serial", checkpoint=ck).values == [0, 2, 4]
    with sqlite3.connect(ck) as conn:
        conn.execute("UPDATE outcome SET value = x'00' WHERE idx = 1")
    conn.close()
    again = pmap(_double, range(3), backend="serial", checkpoint=ck)
    assert again.values == [0, 2, 4]
    assert again.resumed == 2
    with sqlite3.connect(ck) as conn:
        (value,) = conn.execute("SELECT value FROM outcome WHERE idx = 1").fetchone()
    conn.close()
    assert value != b"\x00"  # replaced by the new run's record
