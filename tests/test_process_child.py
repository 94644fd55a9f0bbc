"""Whether a process is gone, with and without its pidfd, on real processes."""

from __future__ import annotations

import os
import subprocess
import sys

from parmap._backends.process_child import gone


def test_gone_without_a_pidfd() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: its pid names no process now (reuse aside)
    assert gone(child.pid, None) is True
    assert gone(os.getpid(), None) is False
    # Process 1 always exists; signalling it may be refused: not gone either way.
    assert gone(1, None) is False


def test_gone_with_a_pidfd() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    pidfd = os.pidfd_open(child.pid)
    try:
        assert gone(child.pid, pidfd) is False
        assert child.stdin is not None
        child.stdin.close()
        child.wait()
        assert gone(child.pid, pidfd) is True
    finally:
        os.close(pidfd)
