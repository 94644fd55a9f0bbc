"""Killed workers are reaped without blocking anyone (issue 14): tasks and scenarios.

``python -m tests.reap_cases SCENARIO DIR`` runs a scenario as a script, so
that the tests can run it in a process of its own (its children are the
pool's only) with a hard time limit. A scenario prints ``ok`` and figures.

The hard-to-reap worker is a traced one, as under ``strace -p`` or a
debugger: once SIGKILLed it is a zombie only its tracer may collect, so
its parent cannot reap it until the tracer lets go (``waitpid`` blocks).
"""

from __future__ import annotations

import asyncio
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from parmap import Pool, TaskTimeoutError

#: Traces the process whose pid is its argument (PTRACE_SEIZE: it runs on,
#: unstopped), says so, then holds it until killed (30 s at most).
_TRACER = """
import ctypes, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
for _ in range(500):  # until the tracee allows it (see PR_SET_PTRACER)
    if libc.ptrace(0x4206, int(sys.argv[1]), None, None) == 0:
        print("traced", flush=True)
        break
    time.sleep(0.01)
else:
    print("cannot trace: errno", ctypes.get_errno(), flush=True)
time.sleep(30)
"""
#: prctl option: which process may trace us where Yama restricts ptrace.
PR_SET_PTRACER = 0x59616D61


def traced_or_release(role: str, folder: str) -> int:
    """``"trace"``: get traced by a process outside our group, then hang.
    ``"release"``: kill that tracer and return once it is gone."""
    marks = Path(folder)
    if role == "trace":
        import ctypes

        tracer = subprocess.Popen(
            [sys.executable, "-c", _TRACER, str(os.getpid())],
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,  # outlives the killing of our process group
        )
        ctypes.CDLL(None).prctl(PR_SET_PTRACER, tracer.pid, 0, 0, 0)
        assert tracer.stdout is not None
        (marks / "traced").write_text(f"{os.getpid()} {tracer.pid} {tracer.stdout.readline()}")
        time.sleep(3600)
    pid = int((marks / "traced").read_text().split()[1])
    pidfd = os.pidfd_open(pid)
    os.kill(pid, signal.SIGKILL)
    select.select([pidfd], [], [], 10)  # readable once it has exited
    os.close(pidfd)
    return 1


def hang_or_return(x: float) -> float:
    """Sleep ``x`` seconds (a negative one: an hour)."""
    time.sleep(3600 if x < 0 else x)
    return x


def _zombies() -> list[int]:
    return [
        p.pid
        for p in psutil.Process().children(recursive=True)
        if p.status() == psutil.STATUS_ZOMBIE
    ]


async def _loop_stays_live(folder: str) -> None:
    gaps: list[float] = []

    async def tick() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.005)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    with Pool(workers=1) as pool:
        ticker = asyncio.create_task(tick())
        result = await pool.apmap(
            traced_or_release,
            ["trace", "release"],
            [folder, folder],
            timeout=1.0,
            chunksize=1,
            on_error="collect",
        )
        ticker.cancel()
        traced, _tracer, status = (Path(folder) / "traced").read_text().split(maxsplit=2)
        assert status.strip() == "traced", status
        assert isinstance(result.errors.get(0), TaskTimeoutError), result.errors
        assert result.values[1] == 1, result
        # The traced worker was reaped by the map's next event once its tracer
        # was gone (an event: the next item's result).
        children = {p.pid for p in psutil.Process().children(recursive=True)}
        assert int(traced) not in children, f"the killed worker {traced} is still our child"
        assert not _zombies(), _zombies()
    assert not psutil.Process().children(recursive=True), "a process outlived the pool"
    print("ok", f"{max(gaps):.3f}")


def loop_stays_live(folder: str) -> None:
    """A traced worker's timeout: the loop never waits for the kill to be reaped."""
    asyncio.run(_loop_stays_live(folder))


def sync_leaves_no_zombie(folder: str) -> None:
    """Kills in the middle and at the end of blocking maps leave no zombie."""
    items = [0.0, -1.0, 0.0, -1.0, 0.1, -1.0]  # the last kills end the map
    with Pool(workers=3) as pool:  # open while we look
        result = pool.pmap(hang_or_return, items, timeout=0.3, on_error="collect")
        assert sorted(result.errors) == [1, 3, 5], result.errors
        assert not _zombies(), f"zombies after a map with timeouts: {_zombies()}"
        for _ in pool.imap(hang_or_return, [0.0, -1.0, -1.0]):
            break  # leaving kills the workers still running
        assert not _zombies(), f"zombies after leaving a map: {_zombies()}"
    print("ok")


if __name__ == "__main__":
    {"loop_stays_live": loop_stays_live, "sync_leaves_no_zombie": sync_leaves_no_zombie}[
        sys.argv[1]
    ](sys.argv[2])
