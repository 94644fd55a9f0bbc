"""Functions that the command-line tests run with ``parmap run cli_tasks:...``.

The tests put this directory on ``PYTHONPATH``, so the workers import this
module under every start method.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from parmap import parallel

NOT_CALLABLE = 42


def upper(line: str) -> str:
    return line.upper()


def square(line: str) -> int:
    """Raise ValueError for a line that is not an integer."""
    return int(line) ** 2


def add(a: int, b: int = 0) -> int:
    return a + b


def echo(*args: Any, **kwargs: Any) -> dict[str, Any]:
    return {"args": list(args), "kwargs": kwargs}


def as_set(line: str) -> set[str]:
    """Return a value JSON cannot encode."""
    return {line}


def not_a_number(line: str) -> float:
    return float("nan")


def exit_task(line: str) -> None:
    """Raise SystemExit in the worker: it must come back as an error, not stop the CLI."""
    sys.exit(int(line))


def hang(line: str) -> str:
    if line == "hang":
        time.sleep(3600)
    return line


def wait_for(line: str) -> str:
    """``wait:PATH`` blocks until PATH exists (at most a minute); other lines return."""
    if line.startswith("wait:"):
        path = line[len("wait:") :]
        deadline = time.monotonic() + 60
        while not os.path.exists(path):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{path} never appeared")
            time.sleep(0.01)
        return "released"
    return line


def fail_once(path: str) -> str:
    """Fail the first time it sees ``path`` (recorded by creating it), then succeed."""
    try:
        with open(path, "x"):
            pass
    except FileExistsError:
        return "second try"
    raise RuntimeError("first try")


def chatty(line: str) -> str:
    """Print on the way, through sys.stdout and straight to descriptor 1.

    (One write per line, so that two workers' lines cannot interleave when
    Python's streams are unbuffered, as under ``PYTHONUNBUFFERED``.)
    """
    sys.stdout.write(f"print: {line}\n")
    sys.stdout.flush()
    os.write(1, f"fd1: {line}\n".encode())
    return line


def crash(line: str) -> str:
    """Kill the worker abruptly on the line ``crash``."""
    if line == "crash":
        os._exit(3)
    return line


@parallel(workers=2)
def shout(line: str) -> str:
    """A decorated function: the CLI maps it like any other."""
    return line.upper() + "!"


class Mute:
    """A value that neither JSON, str() nor repr() can write."""

    def __str__(self) -> str:
        raise TypeError("no str")

    def __repr__(self) -> str:
        raise TypeError("no repr")


def mute(line: str) -> Mute:
    return Mute()
