"""Which processes still run: for the tests that check that none is left behind."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import psutil

from .checks import eventually

_MP_HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")


def running(procs: Iterable[psutil.Process]) -> list[psutil.Process]:
    """Those of ``procs`` still running (a zombie has ended: it only awaits reaping)."""
    result = []
    for proc in procs:
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                result.append(proc)
        except psutil.NoSuchProcess:
            pass
    return result


def pid_running(pid: int) -> bool:
    """Whether process ``pid`` is still running."""
    try:
        return bool(running([psutil.Process(pid)]))
    except psutil.NoSuchProcess:
        return False


def wait_ended(procs: Iterable[psutil.Process], seconds: float) -> list[psutil.Process]:
    """Wait up to ``seconds`` for ``procs`` to end; return those still running."""
    procs = list(procs)
    with contextlib.suppress(AssertionError):
        eventually(lambda: not running(procs), within=seconds, message="", every=0.02)
    return running(procs)


def processes(pids: Iterable[int]) -> list[psutil.Process]:
    """The processes behind ``pids`` that still exist."""
    found = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            found.append(psutil.Process(pid))
    return found


def _is_mp_helper(proc: psutil.Process) -> bool:
    """multiprocessing's own long-lived helpers, started once per interpreter."""
    try:
        return any(helper in " ".join(proc.cmdline()) for helper in _MP_HELPERS)
    except psutil.Error:
        return False


def running_children() -> list[psutil.Process]:
    """Our running child processes at any depth, but for multiprocessing's helpers.

    Workers started by the forkserver are its children: they still count.
    """
    children = psutil.Process().children(recursive=True)
    return [p for p in running(children) if not _is_mp_helper(p)]
