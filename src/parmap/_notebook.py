"""Stopping pools when an IPython kernel shuts down or restarts.

At shutdown (and restart, which is a shutdown followed by a new kernel)
ipykernel sends SIGTERM to every child process in its process group and polls,
with growing sleeps, until none is left, zombies included; after a few seconds
the frontend kills the kernel. parmap's workers ignore SIGTERM (Ctrl-C and
SIGTERM are the parent's to handle, DESIGN's ``ignore_signals``), and even a
worker that died stays a zombie until its pool reaps it, which an idle pool
never does. ``ProcessPoolExecutor`` has a manager thread that reaps its dead
workers, so a kernel shuts down in about 0.3 s with one open.

Rather than have workers obey SIGTERM, the pool's owner stops them itself,
as the design intends: when the kernel asks IPython to exit (it sets the
shell's ``exit_now`` trait in ``do_shutdown``, before it signals its
children) every open pool of this process is closed, its workers killed and
reaped. That takes milliseconds, so ipykernel finds no child left. Workers
keep ignoring SIGINT and SIGTERM, so a kernel interrupt still reaches only
the parent.

The hook is set when a pool starts its workers, only in a process where
IPython is already imported and running a shell; parmap never imports IPython.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from typing import Any

#: How long closing a pool that an event loop in another thread drives may take.
LOOP_CLOSE_TIMEOUT = 2.0

_watched: set[int] = set()
_watched_lock = threading.Lock()


def watch_kernel_shutdown() -> None:
    """Close every pool when the running IPython shell is told to exit (idempotent)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return
    try:
        shell: Any = ipython.get_ipython()
    except Exception:
        return
    # exit_now is a traitlets trait of every InteractiveShell; observe() is
    # traitlets' public way to be told when it changes.
    if shell is None or not getattr(shell, "has_trait", lambda name: False)("exit_now"):
        return
    with _watched_lock:
        if id(shell) in _watched:
            return
        _watched.add(id(shell))
    shell.observe(_on_exit_now, names="exit_now")


def _on_exit_now(change: Any) -> None:
    if change["new"]:
        close_all_pools()


def close_all_pools() -> None:
    """Stop the workers of every pool of this process, from any thread.

    ipykernel runs ``do_shutdown`` on its control thread, while the main
    thread may still be inside a map: a pool that blocking maps use is closed
    while holding its turn, one that an event loop drives is closed on that
    loop. A map still running then fails, as with ``Pool.close()``.
    """
    from . import _engine

    for engine in list(_engine._live_engines):
        if engine.closed:
            continue
        loop = engine.aio.loop
        if loop is None:
            with engine.sync.turn():
                engine.close()
        else:
            _close_on_loop(engine, loop)


def _close_on_loop(engine: Any, loop: asyncio.AbstractEventLoop) -> None:
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        engine.close()
        return
    done = threading.Event()

    def close() -> None:
        try:
            engine.close()
        finally:
            done.set()

    try:
        loop.call_soon_threadsafe(close)
    except RuntimeError:  # the loop is closed: no map can be running on it
        engine.close()
        return
    # A loop that does not run the callback in time (it is blocked) keeps its
    # pool; the workers then exit when this process does.
    done.wait(LOOP_CLOSE_TIMEOUT)
