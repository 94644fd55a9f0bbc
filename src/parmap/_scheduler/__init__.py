"""The I/O-free core of a pool: who runs what, deadlines, retries, ordering.

Theory of operation
-------------------
A ``Scheduler`` owns the state of one pool: its worker slots and the jobs
(maps) running on it. It never touches a pipe, a process or a clock. The
engine alone hands it what happened, one typed event at a time
(``Scheduler.handle``, see ``_events``), each carrying the time it was seen,
and then carries out the commands it queued (``Spawn``, ``Send``, ``Kill``,
``Retire``). Drivers reach it through the engine too (``new_job``, ``feed``,
``skip``, ``end_input``, ``input_failed``, ``cancel``):

=====================  ==================================================
event                  what the scheduler does
=====================  ==================================================
``new_job`` / ``feed`` inputs join the job's pending runs; idle workers
                       are sent chunks.
``skip``               inputs a checkpoint already has take their indexes
                       and are emitted at once, unrun.
``Ready``              a worker finished starting (its initializer ran).
``Encoded``            the chunk just sent was encoded: its weight sizes
                       the next chunks, and the next one is sent.
``Unpicklable``        it was not: the inputs that cannot be pickled
                       fail, the others are sent one per chunk.
``Batch``              outcomes of the worker's current chunk, in order;
                       failures are retried or recorded; a finished chunk
                       frees the worker for the next one.
``Exited``             a worker died: the item it was running fails with
                       ``WorkerCrashedError``; the rest of its chunk is
                       pending again; a replacement is spawned.
``Tick``               deadlines passed: the worker is killed, the item
                       fails with ``TaskTimeoutError``, the rest of its
                       chunk is pending again; a replacement is spawned.
``cancel``             the consumer went away: the job's workers are
                       killed and replaced; its pending inputs dropped.
``Measured``           resident memory readings (pools with
                       ``max_memory_per_worker``): a busy worker over the
                       limit is killed, its item fails with
                       ``WorkerMemoryError``; an idle one over 75% of it is
                       retired and replaced.
=====================  ==================================================

Work moves in *runs* (contiguous inputs) and *chunks* (the slice of a run sent
to one worker), not item by item, so that a map of millions of tiny items costs
the parent a few list slices per chunk rather than objects per item. A worker
runs one chunk at a time and sends outcomes back in order, batched over a few
milliseconds. Which item inside a chunk is running, and since when, comes from
the worker's *beacon* (a few shared numbers the backend reads into the
events): that is what keeps deadlines per item (never early, at most a few
milliseconds late) and crash blame exact even though outcomes are batched.

A pool with a memory limit reads its workers' memory in the parent, by
deadlines it asks for like any other (``memory_due`` names the workers to
read), so no thread samples anything. A worker that runs out of work is
measured before it gets more; and it is sent only as many items, in its chunk
and in one queued behind it, as the map's worst measured growth per item
(memory after a run of chunks minus before, per item) lets it run from its
latest reading before it would pass ``RECYCLE_FRACTION`` of the limit: one
item at a time for a map that leaks, full chunks sent ahead for one that
does not.

Outcomes leave as *segments* ``(start, values, errors)`` covering contiguous
input indexes; each input index is covered by exactly one segment.

The modules, one layer each: ``tuning`` (the numbers), ``jobs`` (``Job``,
``Run``, ``Chunk``, segments), ``slots`` (``Slot``, its deadline ``Clock``,
which item a beacon names), ``sizing`` (chunk sizes), ``state`` (slots, jobs,
commands, failing and retrying), ``dispatch`` (inputs in, chunks out),
``deadlines`` (timeouts, blame), ``memory`` (readings), ``scheduler`` (the
events).
"""

from .jobs import Chunk, Job, Run, Segment
from .scheduler import Scheduler
from .slots import Clock, Running, Slot
from .tuning import (
    FIRST_CHUNK_ITEMS,
    GENERIC_ERRORS,
    ITEM_TIMES_KEPT,
    MAX_CHUNK_BYTES,
    MAX_CHUNK_ITEMS,
    MAX_QUEUED,
    MAX_STARTUP_FAILURES,
    MAX_WINDOW_ITEMS,
    MEMORY_POLL_SECONDS,
    POLL_SECONDS,
    PREFETCH_ITEM_SECONDS,
    QUEUE_SECONDS,
    RECHECK_SECONDS,
    RECYCLE_FRACTION,
    START_TIMEOUT,
    TAIL_FLOOR_SECONDS,
    TAIL_SHARES,
    TARGET_CHUNK_SECONDS,
    TIMED_PREFETCH_AFTER,
    WINDOW_CHUNKS,
)

__all__ = [
    "FIRST_CHUNK_ITEMS",
    "GENERIC_ERRORS",
    "ITEM_TIMES_KEPT",
    "MAX_CHUNK_BYTES",
    "MAX_CHUNK_ITEMS",
    "MAX_QUEUED",
    "MAX_STARTUP_FAILURES",
    "MAX_WINDOW_ITEMS",
    "MEMORY_POLL_SECONDS",
    "POLL_SECONDS",
    "PREFETCH_ITEM_SECONDS",
    "QUEUE_SECONDS",
    "RECHECK_SECONDS",
    "RECYCLE_FRACTION",
    "START_TIMEOUT",
    "TAIL_FLOOR_SECONDS",
    "TAIL_SHARES",
    "TARGET_CHUNK_SECONDS",
    "TIMED_PREFETCH_AFTER",
    "WINDOW_CHUNKS",
    "Chunk",
    "Clock",
    "Job",
    "Run",
    "Running",
    "Scheduler",
    "Segment",
    "Slot",
]
