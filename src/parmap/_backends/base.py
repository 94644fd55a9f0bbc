"""What every backend offers the engine."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Protocol

from .._events import BeaconReading, ChunkMessage, Event

Waitable = Connection | int
"""Something with a file descriptor to poll and give an event loop: a pipe
end, a socket's or a process sentinel's descriptor number."""


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a backend can do, fixed when it is built; the engine sets up the
    scheduler and the maps' payloads from it."""

    #: Worker slots (serial has one, dask asks its cluster).
    workers: int
    #: False when a timed-out item cannot be stopped, only abandoned.
    can_kill: bool
    #: The beacon tells which item of a chunk runs (an executor's or dask's
    #: future runs a whole chunk as one call: False; see Scheduler).
    item_beacon: bool
    #: A worker may be sent its next chunk while it runs one (it reads its
    #: chunks in order from its own socket).
    prefetch: bool
    #: Items run in this process: the function object itself is sent, unpickled.
    in_process: bool
    #: The start method of worker processes of our own, else None.
    start_method: str | None
    #: The function workers already have without pickling, if any.
    preload: Callable[..., Any] | None

    @classmethod
    def in_this_process(cls, workers: int, preload: Callable[..., Any] | None) -> Capabilities:
        """What a backend that runs items on this process's threads can do."""
        return cls(
            workers=workers,
            can_kill=False,
            item_beacon=True,
            prefetch=False,
            in_process=True,
            start_method=None,
            preload=preload,
        )


class Backend(Protocol):
    """The I/O side of a pool: carries out the scheduler's commands.

    Readiness is always signalled through file descriptors (``waitables``),
    so one sync driver (``multiprocessing.connection.wait``) and one async
    driver (``loop.add_reader``) serve every backend.
    """

    #: Called with waitables just before they are closed.
    on_discard: Callable[[list[Waitable]], None]

    @property
    def capabilities(self) -> Capabilities: ...

    def encode(self, message: ChunkMessage) -> object: ...
    def forget(self, job_id: int) -> None: ...
    def spawn(self, wid: int) -> None: ...
    def send(self, wid: int, payload: Any) -> None: ...
    def kill(self, wid: int) -> None: ...
    def retire(self, wid: int) -> None: ...
    def reap(self, *, wait: bool) -> None: ...
    def close(self) -> None: ...
    def waitables(self) -> list[Waitable]: ...
    def writables(self) -> list[Waitable]: ...
    def on_writable(self, waitable: Waitable) -> bool: ...
    def backlogged(self, wid: int) -> bool: ...
    def beacon(self, wid: int) -> BeaconReading: ...
    def pid(self, wid: int) -> int | None: ...
    def handle(self, waitable: Waitable, now: float) -> list[Event]: ...


class InProcessIO:
    """What a backend without processes or sockets of its own says about
    them: no process ids, nothing to reap, nothing ever waits to be written,
    and no map leaves anything to forget."""

    def pid(self, wid: int) -> int | None:
        """No worker is a process of its own."""
        return None

    def reap(self, *, wait: bool) -> None:
        """No worker is a process to reap."""

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
