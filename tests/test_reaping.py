"""A killed worker is reaped when its exit is signalled, never waited for (issue 14).

Each case runs in a process of its own (whose children are its pool's only)
with a hard time limit; see ``reap_cases``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .checks import run_limited


def _run(scenario: str, folder: Path) -> list[str]:
    out = run_limited([sys.executable, "-m", "tests.reap_cases", scenario, str(folder)], limit=60)
    words = out.stdout.split()
    assert out.returncode == 0 and words[:1] == ["ok"], out.stdout + out.stderr
    return words[1:]


def test_a_timeout_never_stalls_the_event_loop_even_if_the_worker_is_hard_to_reap(
    tmp_path: Path,
) -> None:
    """The timed-out worker is traced (as under strace): SIGKILLed, it cannot be
    reaped until the tracer lets go. A ticker task keeps running meanwhile, the
    worker is reaped once it can be, and nothing is left after the map."""
    (largest_gap,) = _run("loop_stays_live", tmp_path)
    # Reaping with ``proc.join(10)`` held the loop here for 10 s and more.
    assert float(largest_gap) < 1.0, f"the loop stalled for {largest_gap} s"


def test_kills_in_a_blocking_map_leave_no_zombie(tmp_path: Path) -> None:
    """Timeouts mid-map and at its end, and leaving a map early."""
    _run("sync_leaves_no_zombie", tmp_path)
