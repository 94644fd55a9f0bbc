"""Every script in examples/ runs to the end and prints what it promises."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))

# What each example must print (on stdout); an example not listed here must
# still run and exit 0.
EXPECTED: dict[str, list[str]] = {
    "as_completed.py": [
        "stdlib: ProcessPoolExecutor.submit + as_completed",
        "parmap: imap",
        "task 0: failed with RuntimeError('task 0 failed')",
        "task 4: 4",
        "parmap.Executor: the same loop",
        "risky 0: TaskTimeoutError",
        "risky 1: WorkerCrashedError",
        "risky 4: 4",
    ],
    "done_callbacks.py": [
        "stdlib: Future.add_done_callback",
        "done 10/10",
        "parmap: an Outcome loop",
        "task 3: RuntimeError('task 3 failed')",
        "values: [None, 1, 2, None, 4, 5, None, 7, 8, None]",
        "errors: [0, 3, 6, 9]",
        "parmap.Executor: the same callbacks",
        "done 5/5",
        "task 0: TaskTimeoutError('the task did not finish within 1 s; its worker was killed')",
        "task 1: WorkerCrashedError('the worker running the task died (exit code 1)')",
    ],
    "asyncio_run_in_executor.py": [
        "stdlib: loop.run_in_executor + asyncio.gather",
        "parmap: await apmap",
        "task 9: RuntimeError('task 9 failed')",
        "task 8: 8",
        "the event loop ticked",
        "parmap: async for over aimap",
        "parmap.Executor: the same run_in_executor",
        "task 0: TaskTimeoutError(",
        "task 1: WorkerCrashedError(",
        "wait_for timed out; the hung task's worker was killed",
    ],
    "ignore_signals_initializer.py": [
        "hello from task 1, SIGINT ignored: True",
        "parmap: pmap(initializer=setup)",
        "KeyboardInterrupt after",
        "parmap.Executor(initializer=ignore_signals_and_setup)",
        "task 0: TaskTimeoutError(",
        "task 1: WorkerCrashedError(",
        "the running tasks were stopped",
    ],
}


def test_every_classic_example_exists() -> None:
    assert set(EXPECTED) <= {path.name for path in EXAMPLES}


@pytest.mark.slow
@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs(path: Path) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT / "src"), env.get("PYTHONPATH", "")) if p
    )
    proc = subprocess.run(
        [sys.executable, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for expected in EXPECTED.get(path.name, []):
        assert expected in proc.stdout, f"{expected!r} missing from:\n{proc.stdout}"
    assert "Traceback" not in proc.stderr, proc.stderr
