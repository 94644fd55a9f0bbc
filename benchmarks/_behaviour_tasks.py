"""Importable task functions for ``benchmarks/behaviour.py``.

They live in their own module, which imports no pool library, so that they
pickle by reference under every start method and for every library.  Tasks
that need a place to leave files read it from ``$PARMAP_BEHAVIOUR_DIR``, which
the harness sets before any pool starts, so every worker inherits it.
"""

from __future__ import annotations

import os
import time

#: Environment variable naming the directory where tasks leave files.
DIR_ENV = "PARMAP_BEHAVIOUR_DIR"

#: Input index that fails (raises or kills its worker) in the failing tasks.
BAD_INDEX = 2

#: Seconds between two heartbeats of :func:`heartbeat`.
BEAT_SECONDS = 0.2


def _path(name: str) -> str:
    return os.path.join(os.environ[DIR_ENV], name)


def heartbeat(seconds: float) -> str:
    """Append a byte to ``heartbeat`` every 0.2 s for ``seconds``: a stopped task stops beating."""
    path = _path("heartbeat")
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        with open(path, "ab") as f:
            f.write(b".")
        time.sleep(BEAT_SECONDS)
    return "finished"


def crash_at(i: int) -> int:
    """Return ``i * 10`` after a short nap; item ``BAD_INDEX`` kills its own worker instead."""
    if i == BAD_INDEX:
        os._exit(1)
    time.sleep(0.3)
    return i * 10


def raise_at(i: int) -> int:
    """Return ``i * 10`` after a short nap; item ``BAD_INDEX`` raises ``ValueError``."""
    time.sleep(0.05)
    if i == BAD_INDEX:
        raise ValueError(f"bad item {i}")
    return i * 10


def marked_sleep(i: int) -> int:
    """Leave a marker file ``started-<i>`` (so the harness knows the map runs), then sleep 30 s."""
    with open(_path(f"started-{i}"), "w"):
        pass
    time.sleep(30)
    return i


def square(x: int) -> int:
    return x * x


def nap_square(x: int) -> int:
    """``x * x`` after 50 ms, long enough for a progress bar or an event loop to tick."""
    time.sleep(0.05)
    return x * x
