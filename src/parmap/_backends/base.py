"""What every backend offers the engine."""

from __future__ import annotations

from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, Protocol

from .._scheduler import BeaconReading, Scheduler

Waitable = Connection | int
"""Something ``multiprocessing.connection.wait`` accepts and that has a file
descriptor for an event loop: a pipe end or a process sentinel."""


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
    def spawn(self, wid: int) -> None: ...
    def send(self, wid: int, payload: Any) -> None: ...
    def kill(self, wid: int) -> None: ...
    def retire(self, wid: int) -> None: ...
    def close(self) -> None: ...
    def waitables(self) -> list[Waitable]: ...
    def beacon(self, wid: int) -> BeaconReading: ...
    def handle(self, waitable: Waitable, sched: Scheduler, now: float) -> None: ...
