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


# --- core end-to-end jobs (tests/test_core.py) ---------------------------------

def write_pid_then_hang(x: int, hang_on: int, marker_dir: str) -> int:
    """Record which process runs `x`; hang forever on `hang_on`."""
    from pathlib import Path

    Path(marker_dir, f"{x}.pid").write_text(str(os.getpid()))
    if x == hang_on:
        time.sleep(3600)
    return x


def fail_first_attempt(x: int, marker_dir: str) -> int:
    """Raise the first time each input is seen, succeed afterwards."""
    from pathlib import Path

    marker = Path(marker_dir, f"{x}.seen")
    if not marker.exists():
        marker.write_text("1")
        raise ConnectionError(f"flaky {x}")
    return x


def crash_how(x: int, how: str, on: int) -> int:
    if x != on:
        return x
    if how == "raise":
        raise RuntimeError("raised")
    if how == "sys_exit":
        raise SystemExit(7)
    if how == "os_exit":
        os._exit(7)
    if how == "segfault":
        import ctypes

        ctypes.string_at(0)
    if how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError(how)


class ExitWhenPickled:
    """A result whose pickling kills the worker."""

    def __reduce__(self) -> Any:
        os._exit(9)


class ExitWhenUnpickled:
    """An argument that kills the worker while it is unpickled there."""

    def __reduce__(self) -> Any:
        return (os._exit, (9,))


def return_it(x: Any) -> Any:
    return x


def return_lock(x: int) -> Any:
    import threading

    return threading.Lock() if x == 1 else x


class NeedsTwoArgs(Exception):
    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"needs {a} and {b}")


def raise_needs_two_args(x: int) -> int:
    if x == 2:
        raise NeedsTwoArgs(1, 2)
    return x


def big_result(megabytes: int) -> bytes:
    return b"x" * (megabytes << 20)


_STATE: dict[str, Any] = {}


def remember(key: str, value: Any) -> None:
    _STATE[key] = value


def recall(key: str) -> Any:
    return _STATE.get(key)


def initializer_fails() -> None:
    raise LookupError("no configuration")


def report_signals(_: Any = None) -> tuple[Any, Any]:
    return (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))


def sleep_and_pid(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def fail_fast_or_sleep(x: int) -> int:
    if x == 0:
        raise ValueError("first")
    time.sleep(60)
    return x


# --- async maps (tests/test_async.py) ---------------------------------------


def _write_atomically(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def async_busy(seconds: float) -> float:
    """Burn CPU (no sleeping) for ``seconds``."""
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end:
        n += 1
    return seconds


def async_marked_sleep(marker_dir: str, index: int, seconds: float) -> int:
    """Write this worker's pid to ``marker_dir/<index>.pid``, then sleep."""
    _write_atomically(os.path.join(marker_dir, f"{index}.pid"), str(os.getpid()))
    time.sleep(seconds)
    return index


def async_logged_sleep(log: str, label: str, index: int, seconds: float) -> tuple[str, int]:
    """Append ``label index start-time`` to ``log`` (one O_APPEND write), then sleep."""
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{label} {index} {time.monotonic()!r}\n".encode())
    finally:
        os.close(fd)
    time.sleep(seconds)
    return label, index


@parallel(workers=2)
def async_decorated_logged_sleep(log: str, label: str, index: int, seconds: float) -> tuple[str, int]:
    return async_logged_sleep(log, label, index, seconds)


def async_wait_for(index: int, release: str | None, done_dir: str) -> int:
    """Wait until file ``release`` exists (if given), then mark ``index`` done."""
    deadline = time.monotonic() + 60
    while release is not None and not os.path.exists(release):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{release} never appeared")
        time.sleep(0.005)
    _write_atomically(os.path.join(done_dir, f"{index}.done"), "")
    return index


def exit_when_result_pickled(x: int) -> Any:
    return ExitWhenPickled() if x == 1 else x
