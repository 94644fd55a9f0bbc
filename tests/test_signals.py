"""Signals: Ctrl-C and SIGTERM to the parent, kill -9 of the parent, SIGKILL of a worker.

The parent runs as a script (tests/scripts/signal_parent.py) in a session of
its own, so that a "Ctrl-C" can go to its whole process group as a terminal
would send it. The test waits until every item has started (each writes its
worker's pid to a marker file), then signals, and checks how the parent ended
and that every process it had started is gone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import psutil
import pytest

from parmap import Pool, WorkerCrashedError
from parmap._options import StartMethod

from . import jobs
from .checks import eventually
from .procs import running, wait_ended

SCRIPT = Path(__file__).resolve().parent / "scripts" / "signal_parent.py"
WORKERS = 2  # as in the script
#: Promise 4: KeyboardInterrupt within a second, whatever the workers' number
#: and start method (the test measures until the parent has raised it).
INTERRUPT_BOUND = 1.0
ORPHAN_BOUND = 10.0


def wait_for_markers(
    marker_dir: Path, count: int, proc: subprocess.Popen[str] | None = None
) -> list[int]:
    """Wait until ``count`` items have written their worker's pid; return the pids."""

    def started() -> list[int]:
        pids = [int(p.read_text()) for p in marker_dir.glob("*.pid")]
        if len(pids) >= count:
            return pids
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the parent exited early ({proc.returncode}):\n{out}\n{err}")
        return []

    return eventually(started, within=60, message="the items never started")


@contextmanager
def parent(mode: str, method: str, tmp_path: Path, *extra: str) -> Iterator[subprocess.Popen[str]]:
    """Run the script; make sure it and everything it started are gone afterwards."""
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), mode, method, str(tmp_path), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        # Whatever happened, nothing of this session may survive the test
        # (orphans keep the process group even after their parent is gone).
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()


def descendants(proc: subprocess.Popen[str]) -> list[psutil.Process]:
    return psutil.Process(proc.pid).children(recursive=True)


def worker_pids_and_tree(
    proc: subprocess.Popen[str], tmp_path: Path
) -> tuple[list[int], list[psutil.Process]]:
    pids = wait_for_markers(tmp_path, WORKERS, proc)
    tree = descendants(proc)
    assert set(pids) <= {p.pid for p in tree}, "the markers name processes outside the tree"
    return pids, tree


MODES_AND_METHODS = [
    ("pmap", "fork"),
    ("apmap", "fork"),
    ("pmap", "spawn"),
    ("apmap", "forkserver"),
    ("pool", "forkserver"),
    ("decorated", "spawn"),
]


@pytest.mark.parametrize(("mode", "method"), MODES_AND_METHODS)
@pytest.mark.parametrize("target", ["parent", "group"])
@pytest.mark.timeout(90)
def test_ctrl_c_raises_keyboard_interrupt_promptly_and_leaves_nothing(
    mode: str, method: str, target: str, tmp_path: Path
) -> None:
    """SIGINT to the parent alone, or to its process group (a terminal's Ctrl-C)."""
    with parent(mode, method, tmp_path) as proc:
        _, tree = worker_pids_and_tree(proc, tmp_path)
        sent = time.monotonic()
        if target == "group":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        took = time.monotonic() - sent
    assert proc.returncode == 0, (out, err)
    words = out.split()
    assert words[:1] == ["KeyboardInterrupt"], (out, err)
    raised_after = float(words[1]) - sent
    assert raised_after < INTERRUPT_BOUND, f"KeyboardInterrupt {raised_after:.2f} s after SIGINT"
    assert took < INTERRUPT_BOUND + 5, f"the parent took {took:.2f} s to exit"
    assert err == "", f"something printed on stderr (a worker's traceback?):\n{err}"
    left = wait_ended(tree, ORPHAN_BOUND)
    assert not left, f"processes left behind: {left}"


@pytest.mark.parametrize("workers", [2, 4, 8])
@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
@pytest.mark.timeout(120)
def test_ctrl_c_is_raised_within_a_second_for_any_number_of_workers(
    method: str, workers: int, tmp_path: Path
) -> None:
    """No replacement is started for a map torn down, and the workers stop together."""
    with parent("pmap", method, tmp_path, "--workers", str(workers)) as proc:
        pids = wait_for_markers(tmp_path, workers, proc)
        tree = descendants(proc)
        sent = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    words = out.split()
    assert words[:1] == ["KeyboardInterrupt"], (out, err)
    raised_after = float(words[1]) - sent
    assert raised_after < INTERRUPT_BOUND, f"KeyboardInterrupt {raised_after:.2f} s after SIGINT"
    assert err == "", err
    assert len(pids) == workers
    assert not wait_ended(tree, ORPHAN_BOUND)


@pytest.mark.parametrize(("mode", "method"), [("pmap", "fork"), ("apmap", "spawn")])
@pytest.mark.timeout(90)
def test_sigterm_raising_system_exit_stops_the_parent_cleanly(
    mode: str, method: str, tmp_path: Path
) -> None:
    """A SIGTERM handler that raises SystemExit gets the same clean stop as Ctrl-C."""
    with parent(mode, method, tmp_path, "--term-exits") as proc:
        _, tree = worker_pids_and_tree(proc, tmp_path)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, (out, err)
    words = out.split()
    assert words[:2] == ["SystemExit", "143"], (out, err)
    assert float(words[2]) - sent < INTERRUPT_BOUND
    assert err == "", f"something printed on stderr:\n{err}"
    assert not wait_ended(tree, ORPHAN_BOUND)


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
@pytest.mark.parametrize(
    ("mode", "method"),
    [("pmap", "fork"), ("imap", "fork"), ("apmap", "spawn"), ("pool", "forkserver")],
)
@pytest.mark.timeout(90)
def test_parent_dying_abruptly_lets_every_worker_exit_on_its_own(
    how: signal.Signals, mode: str, method: str, tmp_path: Path
) -> None:
    """Default SIGTERM or kill -9: the parent cannot clean up, so workers must notice."""
    with parent(mode, method, tmp_path) as proc:
        pids, tree = worker_pids_and_tree(proc, tmp_path)
        proc.send_signal(how)
        proc.wait(30)
        assert proc.returncode == -how
        workers = [p for p in tree if p.pid in pids]
        started = time.monotonic()
        left = wait_ended(workers, ORPHAN_BOUND)
        assert not left, f"workers outlived their parent by {ORPHAN_BOUND} s: {left}"
        print(f"workers gone {time.monotonic() - started:.2f} s after the parent died")
        # multiprocessing's helpers (forkserver, resource tracker) follow suit.
        assert not wait_ended(tree, ORPHAN_BOUND), f"helpers left: {running(tree)}"


@pytest.mark.parametrize("method", ["fork", "spawn"])
@pytest.mark.timeout(60)
def test_a_worker_killed_from_outside_fails_only_its_item(
    method: StartMethod, tmp_path: Path
) -> None:
    n = 12
    victim_index = 5

    def kill_the_victim() -> None:
        (pid,) = wait_for_markers(tmp_path, 1)
        os.kill(pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_the_victim)
    killer.start()
    with Pool(workers=3, start_method=method) as pool:
        res = pool.pmap(
            jobs.hard_marked_victim,
            range(n),
            [str(tmp_path)] * n,
            [victim_index] * n,
            on_error="collect",
        )
    killer.join(30)
    assert list(res.errors) == [victim_index]
    error = res.errors[victim_index]
    assert isinstance(error, WorkerCrashedError)
    assert error.index == victim_index and error.signal == signal.SIGKILL
    assert res.values == [i if i != victim_index else None for i in range(n)]
