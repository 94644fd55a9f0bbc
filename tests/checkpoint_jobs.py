"""Task functions for the checkpoint tests (importable, so they pickle under spawn).

Each task leaves a marker per input it finishes in the directory named by the
environment variable ``PARMAP_CK_MARKERS`` (set before the pool starts, so
workers inherit it; it is not an argument, so it is not part of the inputs'
fingerprints): one line per run of that input, the ``time.monotonic()`` at
which it finished (a system-wide clock on Linux, shared with the test).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from parmap import parallel

MARKERS_ENV = "PARMAP_CK_MARKERS"


def _mark(index: object) -> None:
    directory = os.environ.get(MARKERS_ENV)
    if directory:
        with open(os.path.join(directory, str(index)), "a") as f:
            f.write(f"{time.monotonic():.6f}\n")


def use_markers(directory: str) -> None:
    """Worker initializer: leave markers in ``directory`` (for pools whose workers do
    not inherit the parent's current environment, e.g. under forkserver)."""
    os.environ[MARKERS_ENV] = directory


def finished(directory: Path) -> dict[int, list[float]]:
    """Input index -> the times it finished, from the markers in ``directory``."""
    found = {}
    for p in directory.iterdir():
        # Empty: the worker was killed between opening and writing the file.
        if p.name.isdigit() and (times := [float(t) for t in p.read_text().split()]):
            found[int(p.name)] = times
    return found


def make_records(n: int) -> list[dict[str, Any]]:
    """JSON-like records of people and a line of text each (real-looking data)."""
    words = [
        *("alpha", "beta", "gamma", "delta", "epsilon", "zeta"),
        *("eta", "theta", "iota", "kappa", "lambda", "mu"),
    ]
    return [
        {
            "id": i,
            "name": f"user-{i:05d}",
            "tags": [words[(i * 7 + k) % len(words)] for k in range(i % 4)],
            "text": " ".join(words[(i + k) % len(words)] for k in range(3 + i % 9)),
            "score": round((i * 37 % 101) / 7, 3),
        }
        for i in range(n)
    ]


def summarize(record: dict[str, Any], ms: float = 0.0) -> dict[str, Any]:
    """Summarize one record (after ``ms`` milliseconds of "work"); mark it finished."""
    if ms:
        time.sleep(ms / 1000)
    body = json.dumps(record, sort_keys=True).encode()
    out = {
        "id": record["id"],
        "words": len(record["text"].split()),
        "digest": hashlib.sha256(body).hexdigest()[:16],
        "score": record["score"] * 2,
    }
    _mark(record["id"])
    return out


def summarize_slowly(record: dict[str, Any]) -> dict[str, Any]:
    return summarize(record, ms=5.0)


def other_summary(record: dict[str, Any]) -> dict[str, Any]:
    return summarize(record)


def count_words(index: int, line: str) -> int:
    """A two-argument task over lines of text."""
    _mark(index)
    return len(line.split())


def fail_first_time(index: int, state_dir: str) -> int:
    """Raise the first time ``index`` runs (a "transient" error), succeed after."""
    _mark(index)
    seen = Path(state_dir, f"seen-{index}")
    if index % 3 == 0 and not seen.exists():
        seen.write_text("")
        raise ValueError(f"transient failure of {index}")
    return index * 10


def wait_for_release(index: int, release: str) -> int:
    """Mark that ``index`` started, then wait (at most a minute) for ``release`` to exist."""
    _mark(f"started-{index}")
    deadline = time.monotonic() + 60
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.01)
    return index


def square(x: int) -> int:
    _mark(x)
    return x * x


@parallel(workers=2)
def decorated_square(x: int) -> int:
    return square(x)


def fail_while(x: int, flag: str) -> int:
    """Raise for input 25 while the file ``flag`` exists."""
    if x == 25 and os.path.exists(flag):
        raise ValueError(f"input {x} failed")
    _mark(x)
    return x + 1000


def cli_words(line: str) -> int:
    """For ``parmap run``: a line ``"<index> words..."``; count the words after the index."""
    index, _, text = line.partition(" ")
    _mark(index)
    return len(text.split())


def cli_upper(line: str) -> str:
    return line.upper()
