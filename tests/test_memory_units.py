"""The memory helpers in this process: sizes for people, resident memory
through psutil, a gauge of a worker that is gone, the OOM hint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from parmap import _memory


def test_format_size_picks_its_unit() -> None:
    assert _memory.format_size(999) == "999 B"
    assert _memory.format_size(1500) == "1.5 kB"
    assert _memory.format_size(2_500_000_000) == "2.5 GB"


def test_psutil_reads_what_proc_reads() -> None:
    via_psutil = _memory._psutil_rss(os.getpid())
    via_proc = _memory.read_rss(os.getpid())
    assert via_psutil is not None
    assert via_proc is not None
    # The same process, a moment apart: the same order of magnitude.
    assert via_proc / 4 < via_psutil < via_proc * 4


def test_readings_of_a_process_that_is_gone() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert _memory.read_rss(child.pid) is None
    assert _memory._psutil_rss(child.pid) is None
    gauge = _memory.Gauge(forked=True)
    gauge.spawned(7)
    assert gauge.read(7, None) is None
    assert gauge.read(7, child.pid) is None
    assert gauge.read(8, os.getpid()) is not None


def test_the_oom_hint_names_only_a_sigkill() -> None:
    watch = _memory.OomWatch()
    assert watch.explain(1) is None
    assert watch.explain(-signal.SIGTERM) is None
    hint = watch.explain(-signal.SIGKILL)
    assert hint is not None
    assert "parmap did not send that SIGKILL" in hint
    assert "max_memory_per_worker" in hint
