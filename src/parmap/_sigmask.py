"""Holding Ctrl-C back while the parent does what must not be cut in two."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


@contextmanager
def sigint_held() -> Iterator[None]:
    """Defer SIGINT for the block (main thread); it is raised right after.

    Used around forking a worker (a KeyboardInterrupt raised inside an at-fork
    hook is swallowed there) and around stopping workers (a Ctrl-C halfway
    would leave some running). Blocking the signal would not do: the kernel
    delivers it to any other thread that does not block it, and the
    interpreter then raises it in the main thread all the same. So the
    handler itself is swapped for one that only takes note, and a noted
    SIGINT is raised again, with the original handler, once the block ends.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    noted: list[int] = []

    def note(signum: int, frame: FrameType | None) -> None:
        noted.append(signum)

    previous = signal.signal(signal.SIGINT, note)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)
        if noted:
            signal.raise_signal(signal.SIGINT)
