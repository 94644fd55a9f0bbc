"""What a worker process sets up about itself before it runs anything.

Its own process group (``lead_own_group``), so that killing it stops what
its task started; its signals (Ctrl-C is the parent's to handle); and three
guards that make it die with the pool's owner, because each misses a case:
the watch thread (``gone``) cannot run while a task holds the GIL in one
long C call; the kernel's parent-death signal (``set_parent_death_signal``,
Linux) follows the thread that forked the worker, and under forkserver the
forkserver; a forked watchdog process (``watch_owner_from_a_process``)
covers the forkserver case.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys


def prepare(parent: int, owner: int, die_with_parent: bool, *, ignore_signals: bool) -> None:
    """Set up a worker that just started (all but the watch thread).

    ``parent`` is its parent process, ``owner`` the process that owns the
    pool; ``die_with_parent`` asks for the kernel's parent-death signal (see
    ``process_worker.worker_main``); ``ignore_signals`` is the pool's option.
    """
    lead_own_group()
    if die_with_parent:
        set_parent_death_signal(parent)
    if owner != parent:
        watch_owner_from_a_process(owner)
    if ignore_signals:
        ignore_sigint_and_sigterm()
    else:
        # Python's own Ctrl-C handler, not whatever the parent had in place
        # while it forked us (it defers SIGINT then, see ``_sigmask``).
        signal.signal(signal.SIGINT, signal.default_int_handler)
    # The parent holds SIGINT back while it forks us (see ``process_life.start_worker``).
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def ignore_sigint_and_sigterm() -> None:
    """Ignore SIGINT and SIGTERM: Ctrl-C is the parent's to handle."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def lead_own_group() -> None:
    """Make this process the leader of a process group of its own."""
    # The worker and whatever its task starts form one process group, so that
    # killing the worker for a timeout stops its task's children too.
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)


def set_parent_death_signal(parent: int) -> None:
    """Ask the kernel to SIGKILL this process when ``parent`` exits (Linux)."""
    if not sys.platform.startswith("linux"):  # pragma: no cover - Linux only here
        return  # elsewhere the watch thread notices, once it gets the GIL
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before the request took effect
        os._exit(0)


def watch_owner_from_a_process(owner: int) -> None:
    """Under forkserver: a tiny process that kills this worker when the owner dies.

    The kernel's parent-death signal follows the forkserver, which lives as
    long as its children do, and the watch thread cannot run while a task
    holds the GIL in one long C call. A forked watchdog blocks on the
    owner's pidfd instead, and dies with the worker (Linux only).
    """
    if not sys.platform.startswith("linux"):  # pragma: no cover - Linux only here
        return
    try:
        pidfd = os.pidfd_open(owner)
    except ProcessLookupError:
        os._exit(0)
    except (AttributeError, OSError):
        return
    worker = os.getpid()
    # The watchdog ends in os._exit: coverage never saves what it ran.
    if os.fork() == 0:  # pragma: no cover - the watchdog: single-threaded here, so safe
        try:
            # Hold nothing of the worker's (its socket, its sentinel).
            os.closerange(3, pidfd)
            os.closerange(pidfd + 1, 1 << 16)
            set_parent_death_signal(worker)
            poller = select.poll()
            poller.register(pidfd, select.POLLIN)
            while not poller.poll():
                pass
            os.killpg(worker, signal.SIGKILL)
        finally:
            os._exit(0)
    os.close(pidfd)


def gone(pid: int, pidfd: int | None) -> bool:
    """Whether process ``pid`` has exited (its pidfd is readable then)."""
    if pidfd is not None:
        return bool(select.select([pidfd], [], [], 0)[0])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
