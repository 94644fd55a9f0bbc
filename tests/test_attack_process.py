"""Attacks on the worker process itself (issue 12): no orphan ever, the work
really stops, and a task that forks or closes descriptors cannot corrupt a map.

Cases that could hang run in a subprocess with a hard time limit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from parmap import TaskTimeoutError, WorkerCrashedError, imap, pmap
from parmap._options import StartMethod

from . import attack_jobs
from .checks import eventually, run_limited
from .procs import pid_running

ROOT = Path(__file__).resolve().parent.parent
METHODS = ["fork", "spawn", "forkserver"]


def _wait_for(path: Path, seconds: float) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return path.read_text()
        time.sleep(0.02)
    pytest.fail(f"{path} never appeared")


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_a_timed_out_items_own_children_are_killed_with_it(
    tmp_path: Path, start_method: StartMethod
) -> None:
    res = pmap(
        attack_jobs.start_child_then_hang,
        [str(tmp_path)],
        timeout=1.5,
        on_error="collect",
        workers=1,
        start_method=start_method,
    )
    assert isinstance(res.errors[0], TaskTimeoutError)
    child = int((tmp_path / "child").read_text())
    deadline = time.monotonic() + 5
    while pid_running(child) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not pid_running(child), "the task's child outlived the timed-out item"


def test_a_task_that_forks_and_returns_twice_does_not_corrupt_the_map() -> None:
    script = (
        "from parmap import pmap\n"
        "from tests.attack_jobs import fork_and_return\n"
        "res = pmap(fork_and_return, range(40), workers=2, start_method='fork')\n"
        "assert res.unwrap() == [x * 10 for x in range(40)], res.values\n"
        "print('ok')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.stdout.strip() == "ok", out.stderr


def test_a_task_closing_its_descriptors_fails_its_item_without_stalling() -> None:
    script = (
        "import time\n"
        "from parmap import pmap, WorkerCrashedError\n"
        "from tests.attack_jobs import close_inherited_descriptors\n"
        "t0 = time.monotonic()\n"
        "res = pmap(close_inherited_descriptors, range(8), workers=2, on_error='collect')\n"
        "assert list(res.errors) == [3], res.errors\n"
        "assert isinstance(res.errors[3], WorkerCrashedError), res.errors\n"
        "assert 'descriptors' in str(res.errors[3]), res.errors[3]\n"
        "assert [res.values[i] for i in range(8) if i != 3] == [0, 1, 2, 4, 5, 6, 7]\n"
        "print('ok', time.monotonic() - t0)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.stdout.startswith("ok"), out.stdout + out.stderr
    # The parent did not wait for the task's two-second sleep to end.
    assert float(out.stdout.split()[1]) < 1.9, out.stdout


@pytest.mark.allow_leftover
@pytest.mark.parametrize("start_method", METHODS)
def test_a_worker_holding_the_gil_dies_with_its_killed_parent(
    tmp_path: Path, start_method: str
) -> None:
    marker = tmp_path / "worker"
    parent = subprocess.Popen(
        [sys.executable, "-m", "tests.attack_jobs", "orphan", start_method, str(marker)],
        cwd=ROOT,
    )
    try:
        worker = int(_wait_for(marker, 60))
        time.sleep(0.2)  # it is inside the long C call by now
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 10
        while pid_running(worker) and time.monotonic() < deadline:
            time.sleep(0.05)
        alive = pid_running(worker)
        if alive:
            os.kill(worker, signal.SIGKILL)
        assert not alive, "the worker outlived its SIGKILLed parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_a_huge_timeout_is_waited_for_not_refused() -> None:
    assert pmap(abs, [-1, -2], timeout=1e9, workers=2).unwrap() == [1, 2]
    assert [o.unwrap() for o in imap(abs, [-3], timeout=1e12, workers=1)] == [3]


def test_workers_stay_quiet_while_a_timed_item_runs_long() -> None:
    # The watch thread backs off while one item runs: a handful of wake-ups
    # in two seconds, not one every 5 ms (about 400).
    res = pmap(attack_jobs.wakeups_during_sleep, [2.0, 2.0], timeout=60, workers=2)
    assert max(res.unwrap()) < 60, res.values


def test_a_crash_is_still_reported_with_its_exit_code() -> None:
    from . import jobs

    res = pmap(jobs.exit_if, range(6), [2] * 6, workers=2, on_error="collect")
    assert isinstance(res.errors[2], WorkerCrashedError) and res.errors[2].exitcode == 3


ATTACK = Path(__file__).resolve().parent / "scripts" / "attack_parent.py"


@pytest.mark.parametrize(
    "scenario",
    [
        "close_from_another_thread",
        "sigint_during_start_up",
        "two_crashes_at_once",
        "slow_unpickling",
        "slow_pickling",
        "initializer_never_returns",
        "stopped_idle_worker",
    ],
)
def test_attack_scenario(scenario: str) -> None:
    """Each runs in a process of its own; a hang is caught by the time limit."""
    env = {**os.environ, "PARMAP_START_TIMEOUT": "3"}
    out = run_limited([sys.executable, str(ATTACK), scenario], limit=90, env=env)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stdout + out.stderr


@pytest.mark.parametrize(
    ("scenario", "caught"),
    [
        # Two of the four by default (about 8 s each); all four with --soak.
        pytest.param("sigint_storm_during_close", False, marks=pytest.mark.matrix),
        ("sigint_storm_during_close_retried", True),
        pytest.param("sigint_storm_during_a_map", False, marks=pytest.mark.matrix),
        ("sigint_storm_during_a_memory_heavy_map", False),
    ],
)
def test_a_storm_of_ctrl_c_neither_hangs_the_parent_nor_leaves_a_worker(
    scenario: str, caught: bool
) -> None:
    """SIGINT every 0.5 ms for a second while workers are killed (issue 12)."""
    out = run_limited([sys.executable, str(ATTACK), scenario], limit=60)
    lines = out.stdout.splitlines()
    pids = [int(pid) for line in lines if line.startswith("pids ") for pid in line.split()[1:]]
    assert pids and len(pids) % 4 == 0, out.stdout + out.stderr
    if caught:
        assert out.returncode == 0 and lines[-1] == "ok", out.stdout + out.stderr
    else:
        assert "KeyboardInterrupt" in out.stderr and "AssertionError" not in out.stderr, out.stderr
    eventually(
        lambda: not any(pid_running(pid) for pid in pids),
        within=10,
        message=lambda: f"workers left running: {[p for p in pids if pid_running(p)]}",
    )
