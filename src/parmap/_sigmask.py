"""Holding Ctrl-C back while the parent does what must not be cut in two."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def sigint_held() -> Iterator[None]:
    """Block SIGINT in the main thread for the block; it arrives right after.

    Used around forking a worker (a Ctrl-C raised in an at-fork hook would be
    lost there) and around stopping workers (a Ctrl-C halfway would leave some
    running). The mask is restored by unblocking, not by restoring a saved
    mask: a KeyboardInterrupt raised between the block and the assignment of
    its result would otherwise leave SIGINT blocked for good.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    # A query (SIG_BLOCK of nothing) changes nothing, whatever interrupts it.
    was_blocked = signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, [])
    try:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        yield
    finally:
        if not was_blocked:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
