"""Worker processes as the process backend holds them: start, kill, reap.

``start_worker`` starts one with its own socket and beacon; ``kill_group``
SIGKILLs it with whatever its task started; ``reaped``, ``exit_fd`` and
``wait_for_exit`` reap it without ever blocking the caller for long. What to
do with them (when to kill, whom to wait for) is ``ProcessBackend``'s.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any

from .._options import PoolConfig
from .._sigmask import sigint_held
from .._wire import Inbox, Outbox
from .process_beacon import Beacon
from .process_worker import worker_main


def wait_for_exit(proc: BaseProcess, seconds: float) -> None:
    """Wait up to ``seconds`` for ``proc`` to exit, without relying on its sentinel."""
    pid = proc.pid
    if pid is None:
        return
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        return
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        poller.poll(seconds * 1000)
    finally:
        os.close(pidfd)


def kill_group(proc: BaseProcess) -> None:
    """SIGKILL a worker and its process group (what its task started)."""
    pid = proc.pid
    if pid is not None and proc.exitcode is None:
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:  # not its own group yet (it is still starting)
            with contextlib.suppress(OSError, ValueError):
                proc.kill()


def reaped(proc: BaseProcess) -> int | None:
    """Reap ``proc`` if it has exited, never waiting; its exit code, or None."""
    code = proc.exitcode  # polls without blocking
    if code is not None:
        proc.close()
    return code


def exit_fd(proc: BaseProcess) -> tuple[int, bool]:
    """A descriptor that becomes readable once ``proc`` has exited, and
    whether it is ours to close.

    A pidfd where the system has them: readable exactly when the process can
    be reaped. Else its sentinel, which closes a moment before that.
    """
    if proc.pid is not None:
        with contextlib.suppress(AttributeError, OSError):
            return os.pidfd_open(proc.pid), True
    return proc.sentinel, False  # pragma: no cover - no pidfd_open (Linux < 5.3, macOS)


@dataclass(slots=True)
class Dying:
    """A worker sent SIGKILL and not reaped yet."""

    process: BaseProcess
    fd: int  # see ``exit_fd``
    own_fd: bool
    #: It exited but cannot be reaped yet: a tracer (strace, a debugger) has
    #: not let go of it. Its descriptor stays readable, so it is no longer
    #: watched, only looked at again on every later event.
    held: bool = False
    #: A blocking map's end waited for it once already.
    waited: bool = False


@dataclass(slots=True)
class Proc:
    """A live worker: its process, socket, beacon and what waits to go either way."""

    process: BaseProcess
    sock: socket.socket
    fd: int
    sentinel: int
    beacon: Beacon
    outbox: Outbox = field(default_factory=Outbox)
    inbox: Inbox = field(default_factory=Inbox)
    backlogged: bool = False
    eof: bool = False
    stopped: bool = False  # killed already (see ``handle``)


def start_worker(
    ctx: BaseContext, config: PoolConfig, preload: Callable[..., Any] | None, wid: int
) -> Proc:
    """Start worker process ``wid`` with its socket and beacon.

    ``preload`` is the function a forked worker has without pickling (see
    ``Capabilities.preload``).
    """
    parent_sock, child_sock = socket.socketpair()
    shared = ctx.RawArray("d", Beacon.SLOTS)
    beacon = Beacon(shared)
    beacon.reset()
    start_method = ctx.get_start_method()
    proc = ctx.Process(  # type: ignore[attr-defined]
        target=worker_main,
        args=(
            child_sock,
            shared,
            config.ignore_signals,
            config.initializer,
            config.initargs,
            preload,
            parent_sock if start_method == "fork" else None,
            os.getpid(),
            # The kernel's parent-death signal follows the forking thread:
            # ask for it only from a thread that outlives the workers.
            threading.current_thread() is threading.main_thread() or start_method == "forkserver",
        ),
        name=f"parmap-worker-{wid}",
    )
    # Ctrl-C during the fork would be raised in an at-fork hook and lost
    # there; held back, it arrives once the worker has started. (The
    # worker unblocks it for itself.)
    with sigint_held():
        try:
            proc.start()
        except BaseException:
            parent_sock.close()
            raise
        finally:
            child_sock.close()
    parent_sock.setblocking(False)
    return Proc(proc, parent_sock, parent_sock.fileno(), proc.sentinel, beacon)
