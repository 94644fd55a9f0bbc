"""Tasks that attack the worker process itself (issue 12), importable by workers.

``python -m tests.attack_jobs SCENARIO ...`` runs a scenario as a script, so
that the tests can run it in a subprocess with a hard time limit.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, cast

from parmap import pmap
from parmap._options import StartMethod


def start_child_then_hang(marker_dir: str) -> None:
    """Start a long-lived child process, note its pid, then hang."""
    child = subprocess.Popen(["sleep", "300"])
    Path(marker_dir, "child").write_text(str(child.pid))
    time.sleep(3600)


def fork_and_return(x: int) -> int:
    """Fork; the child returns into the worker's loop as if it were the worker."""
    pid = os.fork()
    if pid:
        os.waitpid(pid, 0)
    return x * 10


def close_inherited_descriptors(x: int) -> int:
    """Do what daemonizing code does: close every inherited descriptor."""
    if x == 3:
        os.closerange(3, 65536)
        time.sleep(2)
    return x


def thread_wakeups() -> int:
    """Voluntary context switches of every thread of this process so far."""
    total = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/status") as status:
                for line in status:
                    if line.startswith("voluntary_ctxt_switches"):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total


def wakeups_during_sleep(seconds: float) -> int:
    """How often this worker's threads woke while the task slept ``seconds``."""
    before = thread_wakeups()
    time.sleep(seconds)
    return thread_wakeups() - before - 1  # the sleep's own wake-up


def spin_holding_the_gil(marker: str) -> int:
    """Note our pid, then run one long C call that never releases the GIL."""
    Path(marker).write_text(str(os.getpid()))
    return sum(range(4 * 10**10))


def orphan_scenario(start_method: str, marker: str) -> None:
    """A parent whose worker holds the GIL; the test SIGKILLs this parent."""
    method = cast("StartMethod", start_method)
    pmap(spin_holding_the_gil, [marker], workers=1, start_method=method)


SCENARIOS: dict[str, Any] = {"orphan": orphan_scenario}

if __name__ == "__main__":
    SCENARIOS[sys.argv[1]](*sys.argv[2:])


def _slowly(value: int) -> int:
    time.sleep(30)
    return value


class SlowToUnpickle:
    """An argument whose unpickling in the worker takes 30 s."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __reduce__(self) -> tuple[Any, ...]:
        return (_slowly, (self.value,))


class SlowToPickle:
    """A result whose pickling in the worker takes 30 s."""

    def __reduce__(self) -> tuple[Any, ...]:
        time.sleep(30)
        return (int, (0,))


def identity(x: Any) -> Any:
    return x


def return_slow_to_pickle(_: Any) -> SlowToPickle:
    return SlowToPickle()


def never_return() -> None:
    time.sleep(3600)


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def hold_memory_and_nap(megabytes: int) -> int:
    """Fill ``megabytes`` of memory (every page touched), then sleep for an hour."""
    data = b"\x01" * (megabytes << 20)
    time.sleep(3600)
    return len(data)


def exit_now(code: int) -> int:
    os._exit(code)
