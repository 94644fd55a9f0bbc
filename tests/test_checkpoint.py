"""Checkpoints: a map that dies and runs again gives the uninterrupted result (promise 9).

The tasks (``checkpoint_jobs``) leave a marker file per input they finish,
with the time, so a test sees exactly which inputs ran in which run. Maps
that are killed run in a parent script of their own (``checkpoint_parent.py``)
in a session of its own, with hard time limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import itertools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
from tqdm import tqdm

from parmap import Executor, Pool, aimap, apmap, imap, pmap
from parmap import __version__ as parmap_version
from parmap._checkpoint import CheckpointError, CheckpointInUseError

from . import checkpoint_jobs as cj
from .procs import wait_ended

TESTS = Path(__file__).resolve().parent
SCRIPT = TESTS / "scripts" / "checkpoint_parent.py"
SRC = TESTS.parent / "src"
PARMAP_RUN = (sys.executable, "-m", "parmap", "run")
N = 2000
#: Promise 9: a map killed outright re-runs at most the work of its last second.
LAST_SECOND = 1.0


@pytest.fixture
def markers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A marker directory for this process's maps (workers inherit the variable)."""
    directory = tmp_path / "markers"
    directory.mkdir()
    monkeypatch.setenv(cj.MARKERS_ENV, str(directory))
    return directory


def fresh(directory: Path) -> Path:
    """Empty ``directory`` of markers, for the next run."""
    for p in directory.iterdir():
        p.unlink()
    return directory


def ran(directory: Path) -> set[int]:
    return set(cj.finished(directory))


def rows(path: Path) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute(
            "SELECT idx, ok, error_type, error_message, error_traceback, error_pickle "
            "FROM outcome ORDER BY idx"
        ).fetchall()


def env_with(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(TESTS), str(TESTS.parent), str(SRC), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.update(extra)
    return env


def session_left(session: int, seconds: float) -> list[psutil.Process]:
    """Processes of ``session`` still running after up to ``seconds``."""
    members = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if os.getsid(proc.pid) == session:
                members.append(proc)
    return wait_ended(members, seconds)


# --------------------------------------------------------------------------
# promise 9: death and resumption


def _start_parent(command: list[str], markers: Path) -> subprocess.Popen[str]:
    """Start the parent process of a map that is to die, in a session of its own;
    its workers leave a marker file in ``markers`` per finished input."""
    return subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env_with(**{cj.MARKERS_ENV: str(markers)}),
        start_new_session=True,
    )


@pytest.mark.parametrize(
    ("death", "mode"),
    [
        # One row per way of dying by default (about 6 s each); all with --soak.
        ("SIGKILL", "pmap"),
        pytest.param("SIGKILL", "imap", marks=pytest.mark.matrix),
        pytest.param("SIGKILL", "apmap", marks=pytest.mark.matrix),
        pytest.param("SIGINT", "pmap", marks=pytest.mark.matrix),
        ("SIGINT", "apmap"),
        pytest.param("input raises", "pmap", marks=pytest.mark.matrix),
        ("input raises", "imap"),
    ],
)
@pytest.mark.timeout(180)
def test_a_map_that_dies_resumes_to_the_uninterrupted_result(
    death: str, mode: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = cj.make_records(N)
    expected = [cj.summarize(r) for r in records]  # no marker variable set yet
    data = tmp_path / "records.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    ck = tmp_path / "map.ckpt"
    command = [sys.executable, str(SCRIPT), str(ck), str(data), mode]
    if death == "input raises":
        command.append("1200")
    proc = _start_parent(command, first)
    try:
        died_at = 0.0
        if death != "input raises":
            deadline = time.monotonic() + 90
            # Half-way, so that much work finished more than a second before.
            while len(os.listdir(first)) < N // 2:
                assert proc.poll() is None, f"the parent ended early: {proc.communicate()}"
                assert time.monotonic() < deadline, "the map never got going"
                time.sleep(0.005)
            died_at = time.monotonic()
            proc.send_signal(signal.SIGKILL if death == "SIGKILL" else signal.SIGINT)
        out, err = proc.communicate(timeout=90)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    if death == "SIGKILL":
        assert proc.returncode == -signal.SIGKILL
    elif death == "SIGINT":
        assert (proc.returncode, out.split()) == (3, ["KeyboardInterrupt"]), err
    else:
        assert proc.returncode == 4, err
        died_at = float(out.split()[1])
    assert not session_left(proc.pid, 10.0), "the dead parent's workers lived on"

    before = cj.finished(first)
    assert 0 < len(before) < N, "the map should have died mid-way"
    monkeypatch.setenv(cj.MARKERS_ENV, str(second))
    res = pmap(cj.summarize_slowly, records, workers=2, checkpoint=ck)

    assert res.values == expected and res.ok
    rerun = cj.finished(second)
    assert all(len(times) == 1 for times in rerun.values()), "an input ran twice"
    assert res.resumed + len(rerun) == N, "every input is accounted for exactly once"
    # Inputs that finished before the death ran again only if they finished
    # within its last second (their records had not been committed yet).
    lost = {i: died_at - min(before[i]) for i in rerun if i in before and min(before[i]) <= died_at}
    assert max(lost.values(), default=0.0) <= LAST_SECOND, sorted(lost.items())[-5:]
    finished_early = [i for i, t in before.items() if min(t) <= died_at - LAST_SECOND]
    assert res.resumed >= len(finished_early) > 0
    oldest = max(lost.values(), default=0.0)
    print(f"{death}/{mode}: {len(before)} finished, {res.resumed} resumed, {len(lost)} lost")
    print(f"  the oldest lost finished {oldest:.3f} s before the death")


# --------------------------------------------------------------------------
# resuming


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_second_run_resumes_everything_and_runs_nothing(
    method: str, markers: Path, tmp_path: Path
) -> None:
    lines = [f"line {i}: " + "word " * (i % 7) for i in range(300)]
    ck = tmp_path / "words.ckpt"
    options: dict[str, Any] = {"workers": 2, "checkpoint": ck, "start_method": method}
    first = pmap(cj.count_words, range(300), lines, **options)
    assert first.resumed == 0 and ran(markers) == set(range(300))
    again = pmap(cj.count_words, range(300), lines, **options)
    assert again.values == first.values == [2 + i % 7 for i in range(300)]
    assert again.resumed == 300 and not ran(fresh(markers))


def test_the_file_is_what_the_readme_says(markers: Path, tmp_path: Path) -> None:
    import pickle

    pragmas = ("application_id", "user_version")
    ck = tmp_path / "format.ckpt"
    lines = ["first line", "second, longer line"]
    pmap(cj.count_words, range(2), lines, workers=1, checkpoint=ck)
    with contextlib.closing(sqlite3.connect(ck)) as conn:
        header = [conn.execute(f"PRAGMA {p}").fetchone()[0] for p in pragmas]
        meta = dict(conn.execute("SELECT key, value FROM meta"))
        idx, fp, ok, value = conn.execute(
            "SELECT idx, fingerprint, ok, value FROM outcome WHERE idx = 1"
        ).fetchone()
    assert header == [0x706D6170, 1]
    assert meta == {"function": "tests.checkpoint_jobs.count_words", "parmap": parmap_version}
    args = pickle.dumps((1, "second, longer line"), protocol=5)
    assert fp == hashlib.blake2b(args, digest_size=16).digest()
    assert (idx, ok, pickle.loads(value)) == (1, 1, 3)


def test_workers_forked_while_the_file_is_open_leave_it_alone(
    markers: Path, tmp_path: Path
) -> None:
    """Forked workers inherit the open database; retiring them must not touch it."""
    ck = tmp_path / "forked.ckpt"
    options: dict[str, Any] = {"workers": 2, "start_method": "fork", "checkpoint": ck}
    first = pmap(cj.square, range(200), max_tasks_per_worker=7, **options)
    assert first.values == [i * i for i in range(200)]
    fresh(markers)
    again = pmap(cj.square, range(200), **options)
    assert again.resumed == 200 and not ran(markers)
    with contextlib.closing(sqlite3.connect(ck)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_changed_inputs_run_again_and_replace_their_record(markers: Path, tmp_path: Path) -> None:
    records = cj.make_records(200)
    ck = tmp_path / "records.ckpt"
    pmap(cj.summarize, records, workers=2, checkpoint=ck)
    changed = [dict(r) for r in records]
    for i in (3, 50, 199):
        changed[i]["text"] += " omega"
    fresh(markers)
    res = pmap(cj.summarize, changed, workers=2, checkpoint=ck)
    assert ran(markers) == {3, 50, 199} and res.resumed == 197
    assert res.values == [cj.summarize(r) for r in changed]
    fresh(markers)
    again = pmap(cj.summarize, changed, workers=2, checkpoint=ck)
    assert again.resumed == 200 and not ran(markers) and again.values == res.values
    # A longer input: the new inputs run, the old ones resume.
    fresh(markers)
    longer = pmap(cj.summarize, changed + cj.make_records(230)[200:], workers=2, checkpoint=ck)
    assert ran(markers) == set(range(200, 230)) and longer.resumed == 200


def test_numpy_arguments_are_fingerprinted_by_content(markers: Path, tmp_path: Path) -> None:
    arrays = [np.arange(i, i + 50, dtype=np.float64) for i in range(40)]
    ck = tmp_path / "arrays.ckpt"
    pmap(np.sum, arrays, workers=2, checkpoint=ck)
    arrays[7] = arrays[7].copy()
    arrays[7][10] = -1.0
    res = pmap(np.sum, arrays, workers=2, checkpoint=ck)
    assert res.resumed == 39 and res.values == [float(a.sum()) for a in arrays]


def test_failures_run_again_and_are_recorded_with_their_error(
    markers: Path, tmp_path: Path
) -> None:
    ck = tmp_path / "flaky.ckpt"
    state = str(tmp_path)
    res = pmap(
        cj.fail_first_time, range(30), [state] * 30, workers=2, on_error="collect", checkpoint=ck
    )
    assert sorted(res.errors) == list(range(0, 30, 3))
    recorded = rows(ck)
    assert [r[0] for r in recorded] == list(range(30))
    failed = [r for r in recorded if not r[1]]
    assert [r[0] for r in failed] == list(range(0, 30, 3))
    idx, _, etype, message, tb_text, data = failed[1]
    assert (idx, etype, message) == (3, "builtins.ValueError", "transient failure of 3")
    assert "fail_first_time" in tb_text and "raise ValueError" in tb_text
    assert isinstance(data, bytes) and b"transient failure of 3" in data
    fresh(markers)
    again = pmap(cj.fail_first_time, range(30), [state] * 30, workers=2, checkpoint=ck)
    assert ran(markers) == set(range(0, 30, 3)) and again.resumed == 20
    assert again.values == [i * 10 for i in range(30)] and again.ok
    assert all(r[1] for r in rows(ck))


def test_on_error_raise_keeps_what_finished_before_the_failure(
    markers: Path, tmp_path: Path
) -> None:
    ck = tmp_path / "raise.ckpt"
    flag = tmp_path / "flag"
    flag.write_text("")
    with pytest.raises(ValueError, match="input 25 failed"):
        pmap(cj.fail_while, range(40), [str(flag)] * 40, workers=1, checkpoint=ck)
    assert ran(markers) >= set(range(25))
    flag.unlink()
    fresh(markers)
    res = pmap(cj.fail_while, range(40), [str(flag)] * 40, workers=1, checkpoint=ck)
    assert res.values == [i + 1000 for i in range(40)]
    assert res.resumed == 25 and ran(markers) == set(range(25, 40))


@pytest.mark.parametrize("ordered", [True, False])
def test_imap_resumes_with_ok_outcomes_in_their_slots(
    ordered: bool, markers: Path, tmp_path: Path
) -> None:
    ck = tmp_path / "imap.ckpt"
    for out in imap(cj.square, range(60), workers=2, checkpoint=ck):
        assert out.ok
    fresh(markers)
    outs = list(imap(cj.square, range(100), workers=2, ordered=ordered, checkpoint=ck))
    assert ran(markers) == set(range(60, 100))
    if ordered:
        assert [o.index for o in outs] == list(range(100))
    assert sorted((o.index, o.value, o.ok) for o in outs) == [(i, i * i, True) for i in range(100)]


def test_imap_commits_what_it_hands_to_a_slow_consumer(markers: Path, tmp_path: Path) -> None:
    """Outcomes a stream has yielded are on disk even while the consumer holds on to them."""
    ck = tmp_path / "stream.ckpt"
    stream = imap(cj.square, range(50), workers=2, ordered=True, checkpoint=ck)
    first = next(stream)
    assert first.index == 0
    # The file is locked while the map runs; read a copy of it and its log.
    copy = tmp_path / "copy.ckpt"
    copy.write_bytes(ck.read_bytes())
    wal = Path(f"{ck}-wal")
    if wal.exists():
        Path(f"{copy}-wal").write_bytes(wal.read_bytes())
    assert 0 in {r[0] for r in rows(copy)}
    stream.close()


def test_an_exception_in_the_consumers_loop_keeps_what_it_saw(
    markers: Path, tmp_path: Path
) -> None:
    ck = tmp_path / "loop.ckpt"
    seen: list[int] = []

    def consume() -> None:
        for out in imap(cj.square, range(500), workers=2, ordered=True, checkpoint=ck):
            seen.append(out.index)
            if len(seen) == 120:
                raise KeyError("the consumer broke")

    with pytest.raises(KeyError):
        consume()
    fresh(markers)
    res = pmap(cj.square, range(500), workers=2, checkpoint=ck)
    assert res.values == [i * i for i in range(500)]
    assert res.resumed >= 120 and ran(markers).isdisjoint(seen)


def test_apmap_and_aimap_resume(markers: Path, tmp_path: Path) -> None:
    lines = [f"{i} " + "text " * (i % 5) for i in range(120)]
    ck = tmp_path / "async.ckpt"

    async def indexes() -> Any:
        for i in range(len(lines)):
            await asyncio.sleep(0)
            yield i

    async def main() -> tuple[Any, Any, list[Any]]:
        first = await apmap(cj.count_words, range(80), lines[:80], workers=2, checkpoint=ck)
        fresh(markers)
        second = await apmap(cj.count_words, range(120), lines, workers=2, checkpoint=ck)
        ran_second = ran(markers)
        fresh(markers)
        # An async source zipped with a list gives the same inputs: all resumed.
        stream = aimap(cj.count_words, indexes(), lines, workers=2, ordered=True, checkpoint=ck)
        return first, (second, ran_second), [o async for o in stream]

    first, (second, ran_second), outs = asyncio.run(main())
    assert first.resumed == 0 and second.resumed == 80 and ran_second == set(range(80, 120))
    assert second.values == [1 + i % 5 for i in range(120)]
    assert [(o.index, o.value, o.ok) for o in outs] == [(i, 1 + i % 5, True) for i in range(120)]
    assert not ran(markers)


def test_pool_methods_and_parallel_functions_take_the_option(markers: Path, tmp_path: Path) -> None:
    ck = tmp_path / "pool.ckpt"
    with Pool(workers=2, checkpoint=ck) as pool:
        assert pool.pmap(cj.square, range(20)).resumed == 0
        assert pool.pmap(cj.square, range(30)).resumed == 20
        outs = list(pool.imap(cj.square, range(30), ordered=True))
        assert [o.value for o in outs] == [i * i for i in range(30)]
    ck2 = tmp_path / "decorated.ckpt"
    try:
        assert cj.decorated_square.pmap(range(10), checkpoint=ck2).resumed == 0
        res = cj.decorated_square.pmap(range(15), checkpoint=ck2)
        assert res.resumed == 10 and res.values == [i * i for i in range(15)]
    finally:
        cj.decorated_square.close()
    with contextlib.closing(sqlite3.connect(ck2)) as conn:
        (name,) = conn.execute("SELECT value FROM meta WHERE key = 'function'").fetchone()
    assert name == "tests.checkpoint_jobs.decorated_square"


# --------------------------------------------------------------------------
# misuse


def test_a_different_function_is_refused_before_anything_runs(
    markers: Path, tmp_path: Path
) -> None:
    ck = tmp_path / "f.ckpt"
    records = cj.make_records(10)
    pmap(cj.summarize, records, workers=2, checkpoint=ck)
    fresh(markers)
    with pytest.raises(ValueError, match=r"tests\.checkpoint_jobs\.summarize.*other_summary"):
        pmap(cj.other_summary, records, workers=2, checkpoint=ck)
    stream = imap(cj.other_summary, records, workers=2, checkpoint=ck)
    with pytest.raises(ValueError, match=r"not of tests\.checkpoint_jobs\.other_summary"):
        next(stream)
    assert not ran(markers)
    assert len(rows(ck)) == 10  # the file is as it was


def test_a_file_in_use_fails_at_once_in_this_process_and_another(
    markers: Path, tmp_path: Path
) -> None:
    ck = tmp_path / "busy.ckpt"
    release = tmp_path / "release"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from parmap import pmap; from tests import checkpoint_jobs as cj; "
            "print(pmap(cj.wait_for_release, range(2), [sys.argv[2]] * 2, workers=2, "
            "checkpoint=sys.argv[1]).resumed)",
            str(ck),
            str(release),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env_with(),
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (markers / "started-0").exists():
            assert holder.poll() is None, holder.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.01)
        # In this process: the error comes at once, not after the holder is done.
        with pytest.raises(CheckpointInUseError, match="in use by another map") as info:
            pmap(cj.square, range(3), workers=1, checkpoint=ck)
        assert isinstance(info.value, RuntimeError)
        # In another process: likewise (the holder waits up to a minute).
        other = subprocess.run(
            [*PARMAP_RUN, "checkpoint_jobs:cli_words", "--checkpoint", str(ck)],
            input="1 a b\n",
            capture_output=True,
            text=True,
            env=env_with(),
            cwd=TESTS,
            timeout=30,
        )
        assert other.returncode == 2 and other.stdout == ""
        assert other.stderr.startswith("parmap: error: checkpoint") and "in use" in other.stderr
        assert holder.poll() is None, "the holder should still hold the file"
        release.write_text("")
        out, err = holder.communicate(timeout=60)
        assert (holder.returncode, out) == (0, "0\n"), err
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()
    assert not session_left(holder.pid, 10.0)
    # Released: the next map may use it (and resumes the holder's work).
    res = pmap(cj.wait_for_release, range(2), [str(release)] * 2, workers=2, checkpoint=ck)
    assert res.resumed == 2


def test_two_maps_of_one_process_cannot_share_a_file(markers: Path, tmp_path: Path) -> None:
    ck = tmp_path / "shared.ckpt"
    stream = imap(cj.square, range(100), workers=2, checkpoint=ck)
    next(stream)
    with pytest.raises(CheckpointInUseError):
        pmap(cj.square, range(5), workers=1, checkpoint=ck)
    stream.close()
    assert pmap(cj.square, range(5), workers=1, checkpoint=ck).values == [0, 1, 4, 9, 16]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("kind", ["text", "json", "sqlite", "damaged", "version", "empty"])
def test_a_foreign_or_damaged_file_gets_a_clear_error_and_stays_as_it_was(
    kind: str, markers: Path, tmp_path: Path
) -> None:
    path = tmp_path / "file"
    if kind == "text":
        path.write_text("the quick brown fox\n" * 300)
    elif kind == "json":
        path.write_text("".join(json.dumps(r) + "\n" for r in cj.make_records(50)))
    elif kind == "sqlite":
        with contextlib.closing(sqlite3.connect(path)) as conn:
            conn.execute("CREATE TABLE users (name TEXT)")
            conn.execute("INSERT INTO users VALUES ('ada')")
            conn.commit()
    elif kind in ("damaged", "version"):
        pmap(cj.square, range(500), workers=1, checkpoint=path)
        if kind == "damaged":
            data = bytearray(path.read_bytes())
            data[100 : len(data) // 2] = os.urandom(len(data) // 2 - 100)
            path.write_bytes(bytes(data))
        else:
            with contextlib.closing(sqlite3.connect(path)) as conn:
                conn.execute("PRAGMA user_version=99")
    elif kind == "empty":
        path.write_bytes(b"")
    before = _digest(path)
    fresh(markers)
    if kind == "empty":  # an empty file is a new checkpoint
        assert pmap(cj.square, range(3), workers=1, checkpoint=path).values == [0, 1, 4]
        return
    with pytest.raises(CheckpointError) as info:
        pmap(cj.square, range(5), workers=1, checkpoint=path)
    message = str(info.value)
    assert isinstance(info.value, ValueError) and repr(str(path)) in message
    expected = {
        "text": "not a parmap checkpoint",
        "json": "not a parmap checkpoint",
        "sqlite": "another program",
        "damaged": "damaged",
        "version": "format version 99",
    }[kind]
    assert expected in message
    assert _digest(path) == before, "the file was changed"
    assert not ran(markers)


def test_the_option_is_validated() -> None:
    with pytest.raises(TypeError, match=r"checkpoint must be a path \(str or os.PathLike\)"):
        pmap(cj.square, range(3), checkpoint=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="checkpoint must be"):
        Pool(checkpoint=b"x.db")  # type: ignore[arg-type]


# --------------------------------------------------------------------------
# what cannot be recorded, progress


def test_unpicklable_values_are_not_recorded_and_warned_about_once(
    markers: Path, tmp_path: Path
) -> None:
    ck = tmp_path / "locks.ckpt"
    with pytest.warns(RuntimeWarning, match="not recorded") as warned:
        res = pmap(_lock_or_square, range(10), backend="thread", workers=2, checkpoint=ck)
    assert len(warned) == 1 and "cannot be pickled" in str(warned[0].message)
    assert res.ok
    with pytest.warns(RuntimeWarning, match="not recorded"):
        again = pmap(_lock_or_square, range(10), backend="serial", checkpoint=ck)
    assert again.resumed == 5  # the even inputs returned locks: they ran again


def _lock_or_square(x: int) -> Any:
    import threading

    return threading.Lock() if x % 2 == 0 else x * x


def test_progress_counts_resumed_items_as_done(markers: Path, tmp_path: Path) -> None:
    ck = tmp_path / "progress.ckpt"
    pmap(cj.square, range(60), workers=2, checkpoint=ck)
    bar = tqdm(total=100, file=io.StringIO())
    seen_at_first_run_item: float = -1
    for out in imap(cj.square, range(100), workers=2, ordered=True, checkpoint=ck, progress=bar):
        if out.index == 60:
            seen_at_first_run_item = bar.n
    assert seen_at_first_run_item >= 61 and bar.n == 100
    bar.close()


# --------------------------------------------------------------------------
# the command line


def _cli(*args: str, stdin: str, markers: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PARMAP_RUN, *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env_with(**{cj.MARKERS_ENV: str(markers)}),
        cwd=TESTS,
        timeout=60,
    )


def test_the_command_line_resumes_with_checkpoint(markers: Path, tmp_path: Path) -> None:
    ck = tmp_path / "cli.ckpt"
    text = "".join(f"{i} " + "lorem ipsum " * (i % 4) + "\n" for i in range(40))
    first = _cli("checkpoint_jobs:cli_words", "--checkpoint", str(ck), stdin=text, markers=markers)
    assert first.returncode == 0, first.stderr
    assert ran(markers) == set(range(40))
    lines = [json.loads(line) for line in first.stdout.splitlines()]
    assert lines[5] == {"index": 5, "value": 2}
    fresh(markers)
    again = _cli("checkpoint_jobs:cli_words", "--checkpoint", str(ck), stdin=text, markers=markers)
    assert (again.returncode, again.stdout) == (0, first.stdout) and not ran(markers)
    other = _cli("checkpoint_jobs:cli_upper", "--checkpoint", str(ck), stdin=text, markers=markers)
    assert other.returncode == 2 and other.stdout == ""
    assert other.stderr.count("\n") == 1 and "checkpoint_jobs.cli_words" in other.stderr
    assert "checkpoint_jobs.cli_upper" in other.stderr


def test_the_statistics_count_resumed_items(tmp_path: Path) -> None:
    path = tmp_path / "stats.sqlite"
    first = pmap(abs, [-1, -2, -3, -4], workers=2, checkpoint=path)
    assert first.stats.resumed == 0
    again = pmap(abs, [-1, -2, -3, -4, -5], workers=2, checkpoint=path)
    assert again.unwrap() == [1, 2, 3, 4, 5]
    assert again.stats.resumed == 4 and again.resumed == 4
    assert again.stats.items == 5 and again.stats.succeeded == 5


# --------------------------------------------------------------------------
# Executor.map

#: Inputs of the Executor's kill test (5 ms each on 2 workers: about 2 s of work).
N_EXECUTOR = 800


def executor(markers: Path, **options: Any) -> Executor:
    """An Executor of 2 workers that leave their markers in ``markers``.

    Its forkserver workers do not see this process's current environment, so
    the marker directory goes to them through the initializer.
    """
    return Executor(workers=2, initializer=cj.use_markers, initargs=(str(markers),), **options)


@pytest.mark.timeout(120)
def test_executor_map_killed_by_sigkill_resumes_to_the_uninterrupted_result(
    tmp_path: Path,
) -> None:
    records = cj.make_records(N_EXECUTOR)
    expected = [cj.summarize(r) for r in records]  # no marker variable set
    data = tmp_path / "records.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    ck = tmp_path / "map.ckpt"
    proc = _start_parent([sys.executable, str(SCRIPT), str(ck), str(data), "executor"], first)
    try:
        deadline = time.monotonic() + 60
        # Far enough in that some work finished more than a second before.
        while len(os.listdir(first)) < N_EXECUTOR * 5 // 8:
            assert proc.poll() is None, f"the parent ended early: {proc.communicate()}"
            assert time.monotonic() < deadline, "the map never got going"
            time.sleep(0.005)
        died_at = time.monotonic()
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, err
    assert not session_left(proc.pid, 10.0), "the dead parent's workers lived on"

    before = cj.finished(first)
    assert 0 < len(before) < N_EXECUTOR, "the map should have died mid-way"
    with executor(second) as ex:
        results = ex.map(cj.summarize_slowly, records, checkpoint=ck)
        resumed = results.resumed  # every input was read: final already
        values = list(results)
    assert values == expected and results.resumed == resumed
    rerun = cj.finished(second)
    assert all(len(times) == 1 for times in rerun.values()), "an input ran twice"
    assert resumed + len(rerun) == N_EXECUTOR, "every input is accounted for exactly once"
    lost = {i: died_at - min(before[i]) for i in rerun if i in before and min(before[i]) <= died_at}
    assert max(lost.values(), default=0.0) <= LAST_SECOND, sorted(lost.items())[-5:]
    finished_early = [i for i, t in before.items() if min(t) <= died_at - LAST_SECOND]
    assert resumed >= len(finished_early) > 0
    print(f"executor: {len(before)} finished, {resumed} resumed, {len(lost)} lost")


@pytest.mark.timeout(60)
def test_executor_map_keeps_what_its_consumer_saw_before_the_loop_raised(
    markers: Path, tmp_path: Path
) -> None:
    ck = tmp_path / "loop.ckpt"
    seen: list[int] = []

    def consume(ex: Executor) -> None:
        for index, value in enumerate(ex.map(cj.square, range(500), checkpoint=ck)):
            assert value == index * index
            seen.append(index)
            if len(seen) == 120:
                raise KeyError("the consumer broke")

    with executor(markers) as ex:
        with pytest.raises(KeyError):
            consume(ex)
        fresh(markers)
        # At once: leaving the loop let go of the file.
        results = ex.map(cj.square, range(500), checkpoint=ck)
        assert list(results) == [i * i for i in range(500)]
    assert results.resumed >= 120 and ran(markers).isdisjoint(seen)
    assert results.resumed + len(ran(markers)) == 500


def _breaking_input(n: int, at: int) -> Any:
    for i in range(n):
        if i == at:
            raise OSError(f"the input broke at {i}")
        yield i


@pytest.mark.timeout(60)
def test_executor_map_whose_input_raises_keeps_what_finished(markers: Path, tmp_path: Path) -> None:
    ck = tmp_path / "input.ckpt"
    with executor(markers) as ex:
        # Read at the call: the error comes from map() and the file is free again.
        with pytest.raises(OSError, match="broke at 5"):
            ex.map(cj.square, _breaking_input(100, 5), checkpoint=ck)
        assert list(ex.map(cj.square, range(3), checkpoint=ck)) == [0, 1, 4]
        # Read lazily: the error comes while iterating; what finished is kept.
        got: list[int] = []
        with pytest.raises(OSError, match="broke at 150"):
            got.extend(ex.map(cj.square, _breaking_input(300, 150), buffersize=8, checkpoint=ck))
        assert got == [i * i for i in range(len(got))] and len(got) >= 150 - 8
        fresh(markers)
        results = ex.map(cj.square, range(300), checkpoint=ck)
        assert list(results) == [i * i for i in range(300)]
    assert results.resumed >= len(got) and ran(markers).isdisjoint(range(len(got)))


@pytest.mark.timeout(60)
def test_executor_map_runs_failures_and_changed_inputs_again(markers: Path, tmp_path: Path) -> None:
    ck = tmp_path / "flaky.ckpt"
    flag = tmp_path / "flag"
    flag.write_text("")
    flags = [str(flag)] * 40
    with executor(markers) as ex:
        with pytest.raises(ValueError, match="input 25 failed"):
            list(ex.map(cj.fail_while, range(40), flags, checkpoint=ck))
        failed = [(r[0], r[2]) for r in rows(ck) if not r[1]]
        assert failed == [(25, "builtins.ValueError")]
        assert ran(markers) >= set(range(25))
        flag.unlink()
        fresh(markers)
        results = ex.map(cj.fail_while, range(40), flags, checkpoint=ck)
        assert list(results) == [i + 1000 for i in range(40)]
        assert 25 in ran(markers) and ran(markers).isdisjoint(range(25))
        assert results.resumed + len(ran(markers)) == 40
        assert all(r[1] for r in rows(ck))
        # Changed arguments (another flag path) run again and replace their record.
        changed = list(flags)
        changed[3] = changed[30] = str(tmp_path / "other-flag")
        fresh(markers)
        results = ex.map(cj.fail_while, range(40), changed, checkpoint=ck)
        assert list(results) == [i + 1000 for i in range(40)]
        assert ran(markers) == {3, 30} and results.resumed == 38
        fresh(markers)
        assert ex.map(cj.fail_while, range(40), changed, checkpoint=ck).resumed == 40
        assert not ran(markers)


@pytest.mark.timeout(60)
def test_executor_map_refuses_another_function_and_a_file_in_use(
    markers: Path, tmp_path: Path
) -> None:
    ck = tmp_path / "f.ckpt"
    busy_ck = tmp_path / "busy.ckpt"
    release = tmp_path / "release"
    with executor(markers) as ex:
        assert list(ex.map(cj.square, range(10), checkpoint=ck)) == [i * i for i in range(10)]
        fresh(markers)
        names = r"tests\.checkpoint_jobs\.square, not of tests\.checkpoint_jobs\.other_summary"
        with pytest.raises(ValueError, match=names):
            ex.map(cj.other_summary, cj.make_records(10), checkpoint=ck)
        assert not ran(markers) and len(rows(ck)) == 10  # nothing ran, the file is as it was

        busy = ex.map(cj.wait_for_release, range(2), [str(release)] * 2, checkpoint=busy_ck)
        try:
            deadline = time.monotonic() + 30
            while not (markers / "started-0").exists():
                assert time.monotonic() < deadline, "the holding map never started"
                time.sleep(0.01)
            # At once, not when the holder is done (its tasks wait for ``release``).
            with pytest.raises(CheckpointInUseError, match="in use by another map"):
                ex.map(cj.square, range(3), checkpoint=busy_ck)
            with pytest.raises(CheckpointInUseError):
                pmap(cj.square, range(3), workers=1, checkpoint=busy_ck)
        finally:
            release.write_text("")
        assert list(busy) == [0, 1]
        # Free as soon as the iteration is over.
        again = ex.map(cj.wait_for_release, range(2), [str(release)] * 2, checkpoint=busy_ck)
        assert again.resumed == 2 and list(again) == [0, 1]


@pytest.mark.timeout(60)
def test_executor_map_with_buffersize_reads_lazily_and_resumes_a_pmap_file(
    markers: Path, tmp_path: Path
) -> None:
    ck = tmp_path / "lazy.ckpt"
    pmap(cj.square, range(60), workers=2, checkpoint=ck)  # one iterable: the same fingerprints
    fresh(markers)
    pulled: list[int] = []

    def endless() -> Any:
        for i in itertools.count():
            pulled.append(i)
            yield i

    got: list[int] = []
    with executor(markers) as ex:
        results = ex.map(cj.square, endless(), buffersize=4, checkpoint=ck)
        assert len(pulled) == 4 and results.resumed == 4
        for value in results:
            got.append(value)
            assert len(pulled) <= len(got) + 4
            if len(got) == 100:
                break
        results.close()  # stops the work and lets go of the file
        assert got == [i * i for i in range(100)] and results.resumed == 60
        assert set(range(60, 100)) <= ran(markers) <= set(range(60, len(pulled)))
        fresh(markers)
        whole = ex.map(cj.square, range(100), checkpoint=ck)
        assert whole.resumed == 100 and list(whole) == got and not ran(markers)


@pytest.mark.timeout(60)
def test_executor_map_warns_once_about_values_it_cannot_record(tmp_path: Path) -> None:
    ck = tmp_path / "locks.ckpt"
    with Executor(workers=2, backend="thread") as ex:
        with pytest.warns(RuntimeWarning, match="not recorded") as warned:
            values = list(ex.map(_lock_or_square, range(10), checkpoint=ck))
        assert len(warned) == 1 and "cannot be pickled" in str(warned[0].message)
        assert values[1::2] == [i * i for i in range(1, 10, 2)]
        again = ex.map(_lock_or_square, range(10), checkpoint=ck)
        with pytest.warns(RuntimeWarning, match="not recorded"):
            list(again)
    assert again.resumed == 5  # the even inputs returned locks: they ran again


def test_executor_map_validates_the_option() -> None:
    with Executor(workers=1) as ex, pytest.raises(TypeError, match="checkpoint must be a path"):
        ex.map(abs, [1], checkpoint=3)  # type: ignore[arg-type]
