"""Importable task functions for the tests.

They live in one module so that they pickle by reference under every start
method (spawn and forkserver import this module in the worker).  Add new jobs
by appending to the end of this file.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from parmap import parallel


def square(x: int) -> int:
    return x * x


def add(x: int, y: int) -> int:
    return x + y


def identity(x: Any) -> Any:
    return x


def sleep_return(seconds: float, value: Any = None) -> Any:
    time.sleep(seconds)
    return value


def fail_every_third(index: int) -> int:
    """The seed scenario: every third task raises, the others sleep and return."""
    if index % 3 == 0:
        raise RuntimeError(f"task {index} failed")
    time.sleep(0.05)
    return index


def hang_if(x: int, hang_on: int) -> int:
    if x == hang_on:
        time.sleep(3600)
    return x


def exit_if(x: int, exit_on: int, code: int = 3) -> int:
    if x == exit_on:
        os._exit(code)
    return x


def kill_self_if(x: int, kill_on: int) -> int:
    if x == kill_on:
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def raise_value_error(x: int) -> int:
    raise ValueError(f"bad {x}")


def getpid(_: Any = None) -> int:
    return os.getpid()


@parallel(workers=2)
def decorated_square(x: int) -> int:
    return x * x
