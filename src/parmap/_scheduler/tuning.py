"""The scheduler's tunable numbers, in one place (see the package's docs)."""

from __future__ import annotations

import os

#: Aim for chunks that keep a worker busy this long: long enough to make the
#: round trip negligible, short enough to keep the tail of a map balanced.
TARGET_CHUNK_SECONDS = 0.02
#: Cap on what one chunk's pickled arguments may weigh.
MAX_CHUNK_BYTES = 4 << 20
MAX_CHUNK_ITEMS = 16_384
#: Cap on the inputs a map without ``buffer`` holds at once (pulled, not yet
#: consumed): a map of millions of tiny items must not buffer hundreds of
#: thousands of them. Chunks shrink so that every worker still gets two.
MAX_WINDOW_ITEMS = 65_536
#: Chunks per worker a map without ``buffer`` pulls ahead (within the cap):
#: one running, one queued behind it (prefetch), and one waiting in the
#: parent, so that a worker's queue is refilled as soon as its outcomes
#: arrive, not only once the consumer has taken them. A deeper queue
#: (``QUEUE_SECONDS``) widens the window by its extra chunks.
WINDOW_CHUNKS = 3
#: A worker's queue holds chunks until they hold about this much estimated
#: work, at most ``MAX_QUEUED``: the parent shares the cores with its workers
#: and may not run for a few milliseconds (a scheduler time slice), and a
#: queue of one short chunk (1,000 tiny items take well under one) ran dry
#: in that time, its worker waiting for the parent about a third of a map.
QUEUE_SECONDS = 0.005
MAX_QUEUED = 4
#: Consecutive workers that may die before reporting ready before the pool
#: is declared broken (rather than respawning forever).
MAX_STARTUP_FAILURES = 3
#: How many functions' item times a pool remembers (for a later map's first
#: chunk size); beyond that the oldest is forgotten.
ITEM_TIMES_KEPT = 256
#: Exception types too broad to say "retry timeouts" or "retry crashes":
#: ``TaskTimeoutError`` is an ``OSError`` and ``WorkerCrashedError`` a
#: ``RuntimeError``, but ``retry_on=(OSError,)`` means the I/O errors a task
#: raises, not an item that hung (see ``State._should_retry``).
GENERIC_ERRORS: tuple[type[BaseException], ...] = (BaseException, Exception, OSError, RuntimeError)
#: A worker may be sent its next chunk while it runs the current one (so it
#: never waits for the parent between chunks) when the map's items take less
#: than this: the tail of a map is then at most one chunk of such items out
#: of balance. With a timeout too: a chunk queued behind an item that hangs
#: waits until that item's deadline kills the worker, and then goes back
#: unrun, which delays a few milliseconds of work by one timeout; waiting
#: for the parent between chunks cost every timed map of tiny items 10-15%.
PREFETCH_ITEM_SECONDS = 0.001
#: ...but a timed map sends ahead only once this many of its items succeeded,
#: and no longer once one timed out: in a map where items hang, a hanging
#: item queued behind another one started a whole timeout late (12 items,
#: every third hanging, timeout=1, 3 workers: 3.1 s instead of 2.1 s).
TIMED_PREFETCH_AFTER = 64
FIRST_CHUNK_ITEMS = 1024
#: Once a map's input is all known, a chunk with automatic size takes at most
#: ``1 / (TAIL_SHARES * workers)`` of what is left to send.
TAIL_SHARES = 2
#: ... but it keeps at least this much estimated work.
TAIL_FLOOR_SECONDS = 0.0001
#: When a deadline passes but the beacon shows no item running, look again
#: after this long.
RECHECK_SECONDS = 0.02
#: How long a worker may take to start and run its initializer before the
#: pool is declared broken (``PARMAP_START_TIMEOUT`` overrides it).
START_TIMEOUT = float(os.environ.get("PARMAP_START_TIMEOUT", "120"))
#: While a worker runs a timed chunk of several items, read its beacon at
#: least this often: when the beacon cannot give an item's start time, the
#: first time we saw it running bounds it instead.
POLL_SECONDS = 0.02
#: How often a busy worker's resident memory is read in a pool with
#: ``max_memory_per_worker``: a worker over it is killed this long after
#: crossing it at most (plus the time to act on a reading).
MEMORY_POLL_SECONDS = 0.02
#: An idle worker above this share of the memory limit is retired: its next
#: item would likely take it over.
RECYCLE_FRACTION = 0.75
