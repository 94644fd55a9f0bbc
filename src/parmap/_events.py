"""What passes between a pool's parts: events in, commands out.

A backend turns what it reads (a worker's message, a process's exit) into
*events*; the engine alone hands them to the scheduler (``Scheduler.handle``)
and carries out the *commands* the scheduler queues in return. Every event
carries the time it was seen and, where the scheduler must know what a worker
was running (a death, a deadline), the worker's beacon reading taken then, so
the scheduler never reads a clock or a backend itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from . import _wire
from ._stats import Slice

BeaconReading = tuple[int, float | None] | None
"""What a worker's beacon says: items started since birth, and a time by which
the item running now had started (its start time where the backend knows it;
``math.inf`` when it cannot tell), or ``None`` between items. ``None`` as a
whole means the reading was torn and should be retried later."""


# ----------------------------------------------------------------- commands
@dataclass(frozen=True, slots=True)
class Spawn:
    """Start worker ``wid``."""

    wid: int


@dataclass(frozen=True, slots=True)
class Send:
    """Send chunk ``message`` to worker ``wid``: the engine has the backend encode
    it and reports back (``Encoded``, or ``Unpicklable``; see ``encode_chunk``)."""

    wid: int
    message: ChunkMessage


@dataclass(frozen=True, slots=True)
class Kill:
    """Kill worker ``wid`` now (it is running something we gave up on)."""

    wid: int


@dataclass(frozen=True, slots=True)
class Retire:
    """Stop idle worker ``wid`` gracefully."""

    wid: int


Command = Spawn | Send | Kill | Retire


#: How many maps' functions a process worker keeps: ``ChunkMessage.fn`` is
#: sent to a worker only when its cache lacks the map's function, so the
#: scheduler keeps the same count per worker.
FUNCTION_CACHE = 64


@dataclass(frozen=True, slots=True)
class ChunkMessage:
    """A chunk for a backend to encode: inputs ``args`` of map ``job_id``.

    ``fn`` is the map's function payload with the map's first chunk to each
    worker, else None; ``timed`` tells a backend whose workers date their
    items only when asked (processes) that the map has a timeout;
    ``threshold`` is the map's ``shared_memory_threshold``.
    """

    job_id: int
    fn: Any
    star: bool
    args: list[Any]
    timed: bool = True
    threshold: int | None = None


# ------------------------------------------------------------------- events
@dataclass(frozen=True, slots=True)
class _OfWorker:
    # What most events start with: the worker they are about.
    wid: int


@dataclass(frozen=True, slots=True)
class _WorkerFailed(_OfWorker):
    error: BaseException


@dataclass(frozen=True, slots=True)
class Started(_OfWorker):
    """Worker ``wid``'s process was started at ``now`` (its start-up clock runs)."""

    now: float


@dataclass(frozen=True, slots=True)
class SpawnFailed(_WorkerFailed):
    """Worker ``wid`` could not be started (``error`` says why)."""


@dataclass(frozen=True, slots=True)
class Ready(_OfWorker):
    """Worker ``wid`` started and ran its initializer (``now`` None: dispatch later)."""

    now: float | None = None


@dataclass(frozen=True, slots=True)
class InitFailed(_WorkerFailed):
    """Worker ``wid``'s initializer raised ``error``."""


@dataclass(frozen=True, slots=True)
class Batch(_OfWorker):
    """Worker ``wid`` reports the next ``len(values)`` outcomes of its chunk.

    ``errors`` maps positions in ``values`` to their exception; ``busy`` is
    the time spent running them, ``slices`` when (``(t0, t1, count)``) where
    the backend knows it.
    """

    values: list[Any]
    errors: dict[int, BaseException] | None
    busy: float
    now: float
    slices: list[Slice] | None = None


@dataclass(frozen=True, slots=True)
class Undecodable(_WorkerFailed):
    """Worker ``wid`` could not unpickle the chunk it was running (``error``)."""

    now: float


@dataclass(frozen=True, slots=True)
class Exited(_OfWorker):
    """Worker ``wid`` exited with ``exitcode``; ``hint`` says why, if known."""

    exitcode: int | None
    now: float
    beacon: BeaconReading
    hint: str | None = None


@dataclass(frozen=True, slots=True)
class Drained:
    """A worker's backlog of unsent chunks cleared: work may be sent ahead again."""

    now: float


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed to ``now``: check deadlines, with the beacons the scheduler
    asked for (``Scheduler.beacons_wanted``) read at that moment."""

    now: float
    beacons: Mapping[int, BeaconReading] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Measured:
    """The memory (``rss``, None if unreadable) of the workers whose reading
    was due, and their beacons, read at ``now``."""

    rss: Mapping[int, int | None]
    beacons: Mapping[int, BeaconReading]
    now: float


@dataclass(frozen=True, slots=True)
class Encoded(_OfWorker):
    """The chunk last sent to worker ``wid`` (``items`` inputs of map ``job_id``)
    was encoded; its arguments weigh ``weight`` bytes (None: the backend does
    not pickle them, or cannot tell)."""

    job_id: int
    items: int
    weight: int | None


@dataclass(frozen=True, slots=True)
class Unpicklable(_OfWorker):
    """The chunk last sent to worker ``wid`` could not be encoded, so it was not
    sent; ``errors`` maps the positions of the inputs that cannot be pickled,
    each tried alone, to why."""

    job_id: int
    errors: dict[int, Exception]


Event = (
    Started
    | SpawnFailed
    | Ready
    | InitFailed
    | Batch
    | Undecodable
    | Exited
    | Drained
    | Tick
    | Measured
    | Encoded
    | Unpicklable
)


def encode_chunk(
    encode: Callable[[ChunkMessage], object], send: Send
) -> tuple[object, Encoded | Unpicklable]:
    """Encode the chunk of ``send`` with a backend's ``encode``.

    Returns the payload for the backend's ``send`` and the event that tells the
    scheduler how it went. The weight is what the arguments alone weigh: the
    function a map's first chunk carries says nothing about its items. When
    the chunk does not encode, each input is tried alone, to name the culprits
    (the payload is then None and nothing must be sent).
    """
    message = send.message
    try:
        payload = encode(message)
    except Exception as chunk_error:
        errors: dict[int, Exception] = {}
        for pos, arg in enumerate(message.args):
            try:
                # As the chunk would have been (its threshold too), minus the function.
                encode(replace(message, fn=None, args=[arg]))
            except Exception as exc:
                errors[pos] = exc
        if not errors and len(message.args) == 1:
            # It failed, yet not alone (it pickles only every other time, say):
            # sent again on its own it could fail forever.
            errors[0] = chunk_error
        return None, Unpicklable(send.wid, message.job_id, errors)
    weight = None
    if isinstance(payload, _wire.Encoded):
        weight = payload.nbytes
    elif isinstance(payload, bytes):
        weight = len(payload)
    return payload, Encoded(send.wid, message.job_id, len(message.args), weight)
