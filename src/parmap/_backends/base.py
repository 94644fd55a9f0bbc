"""What every backend offers the engine."""

from __future__ import annotations

from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, Protocol

from .._scheduler import BeaconReading, Scheduler

Waitable = Connection | int
"""Something with a file descriptor to poll and give an event loop: a pipe
end, a socket's or a process sentinel's descriptor number."""


class Backend(Protocol):
    """The I/O side of a pool: carries out the scheduler's commands.

    Readiness is always signalled through file descriptors (``waitables``),
    so one sync driver (``multiprocessing.connection.wait``) and one async
    driver (``loop.add_reader``) serve every backend.
    """

    #: False when a timed-out item cannot be stopped, only abandoned.
    can_kill: bool
    #: The function workers already have without pickling, if any.
    preload: Callable[..., Any] | None
    #: Called with waitables just before they are closed.
    on_discard: Callable[[list[Waitable]], None]

    def encode(self, message: object) -> object: ...
    def forget(self, job_id: int) -> None: ...
    def spawn(self, wid: int) -> None: ...
    def send(self, wid: int, payload: Any) -> None: ...
    def kill(self, wid: int) -> None: ...
    def retire(self, wid: int) -> None: ...
    def close(self) -> None: ...
    def waitables(self) -> list[Waitable]: ...
    def writables(self) -> list[Waitable]: ...
    def on_writable(self, waitable: Waitable) -> bool: ...
    def backlogged(self, wid: int) -> bool: ...
    def beacon(self, wid: int) -> BeaconReading: ...
    def handle(self, waitable: Waitable, sched: Scheduler, now: float) -> None: ...


class InProcessIO:
    """What a backend without sockets of its own says about writing: nothing
    ever waits to be written, and no map leaves anything to forget."""

    def writables(self) -> list[Waitable]:
        """Nothing waits to be written."""
        return []

    def on_writable(self, waitable: Waitable) -> bool:
        """Never called: there is nothing to write."""
        return False

    def backlogged(self, wid: int) -> bool:
        """Never backlogged."""
        return False

    def forget(self, job_id: int) -> None:
        """Nothing is kept per map."""
