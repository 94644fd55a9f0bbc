"""Importable task functions for the tests.

They live in one module so that they pickle by reference under every start
method (spawn and forkserver import this module in the worker).  Add new jobs
by appending to the end of this file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import pickle
import signal
import time
from typing import Any

from parmap import parallel
from parmap._options import StartMethod


def sleep_then_pid(seconds: float) -> int:
    """Sleep ``seconds``, then say which process ran the item."""
    time.sleep(seconds)
    return os.getpid()


def square(x: int) -> int:
    return x * x


def add(x: int, y: int) -> int:
    return x + y


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


def misbehave(how: str, message: str = "raised") -> None:
    """Fail as ``how`` says: raise, SystemExit, exit the process, segfault, SIGKILL or hang."""
    if how == "raise":
        raise RuntimeError(message)
    if how == "sys_exit":
        raise SystemExit(7)
    if how == "os_exit":
        os._exit(7)
    if how == "segfault":
        import ctypes

        ctypes.string_at(0)
    if how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    if how == "hang":
        time.sleep(3600)
    raise AssertionError(how)


def crash_how(x: int, how: str, on: int) -> int:
    if x != on:
        return x
    misbehave(how)
    return x


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


def _refuse_to_load() -> None:
    raise RuntimeError("this object cannot be unpickled")


class Unloadable:
    """Pickles fine, but loading it raises, whatever pickling helpers are installed."""

    def __reduce__(self) -> Any:
        return (_refuse_to_load, ())


class NeedsTwoArgs(Exception):
    """An exception that cannot be rebuilt from its pickle (dask's tblib or not)."""

    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"needs {a} and {b}")
        self.token = Unloadable()


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


def wait_for_path(path: str, timeout: float = 60.0) -> None:
    """Block until ``path`` exists; ``TimeoutError`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.002)


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
def async_decorated_logged_sleep(
    log: str, label: str, index: int, seconds: float
) -> tuple[str, int]:
    return async_logged_sleep(log, label, index, seconds)


def async_wait_for(index: int, release: str | None, done_dir: str) -> int:
    """Wait until file ``release`` exists (if given), then mark ``index`` done."""
    if release is not None:
        wait_for_path(release)
    _write_atomically(os.path.join(done_dir, f"{index}.done"), "")
    return index


def exit_when_result_pickled(x: int) -> Any:
    return ExitWhenPickled() if x == 1 else x


def async_sleep_or_raise(marker_dir: str, index: int, seconds: float) -> int:
    """Like ``async_marked_sleep``; a negative ``seconds`` raises once input 1 is running."""
    if seconds >= 0:
        return async_marked_sleep(marker_dir, index, seconds)
    with contextlib.suppress(TimeoutError):
        wait_for_path(os.path.join(marker_dir, "1.pid"))
    raise ValueError(f"input {index} failed")


# --- hardening: chaos, soak, signals, threads, bad input (tests/test_chaos.py, ...) ---


def hard_chaos(index: int, kind: str) -> int:
    """Return ``2 * index``, or misbehave as ``kind`` says (``"ok"``: behave)."""
    if kind != "ok":
        misbehave(kind, f"chaos item {index} raised")
    return 2 * index


def hard_raise_base(kind: str) -> None:
    """Raise a BaseException that is not an Exception."""
    if kind == "SystemExit":
        raise SystemExit(3)
    if kind == "exit":
        import sys

        sys.exit("task called sys.exit")
    if kind == "KeyboardInterrupt":
        raise KeyboardInterrupt("pressed inside a task")
    if kind == "GeneratorExit":
        raise GeneratorExit("odd but legal")
    if kind == "custom":
        raise HardBaseError("not an Exception")


class HardBaseError(BaseException):
    """A user-defined BaseException (not an Exception)."""


class HardBrokenReduceError(Exception):
    """An exception whose pickling raises."""

    def __reduce__(self) -> Any:
        raise RuntimeError("this exception refuses to be pickled")


def hard_raise_broken_reduce(x: int) -> int:
    if x == 1:
        raise HardBrokenReduceError(f"broken reduce at {x}")
    return x


def _hard_rebuild_only_in_a_worker(message: str) -> HardWorkerOnlyError:
    import multiprocessing

    if multiprocessing.parent_process() is None:
        raise RuntimeError("this exception can only be rebuilt inside a worker")
    return HardWorkerOnlyError(message)


class HardWorkerOnlyError(Exception):
    """An exception that round-trips in the worker but cannot be unpickled in the parent."""

    def __reduce__(self) -> Any:
        return (_hard_rebuild_only_in_a_worker, (str(self),))


def hard_raise_worker_only(x: int) -> int:
    if x == 1:
        raise HardWorkerOnlyError(f"worker-only error at {x}")
    return x


def _hard_refuse(message: str) -> Any:
    raise ValueError(message)


class HardLoadRaises:
    """Pickles fine; unpickling it raises ValueError (in the worker, as an argument)."""

    def __reduce__(self) -> Any:
        return (_hard_refuse, ("this argument cannot be rebuilt",))


class HardDumpRaises:
    """Pickling it raises."""

    def __reduce__(self) -> Any:
        raise RuntimeError("this object refuses to be pickled")


class HardExitOnLoad:
    """Unpickling it raises SystemExit (as a result, that is in the parent)."""

    def __reduce__(self) -> Any:
        import sys

        return (sys.exit, ("unpickling this result called sys.exit",))


def hard_return_odd(x: int, kind: str) -> Any:
    """Return ``x``, except for input 1, which returns an odd object."""
    if x != 1:
        return x
    return {"dump_raises": HardDumpRaises, "exit_on_load": HardExitOnLoad}[kind]()


def hard_nested_pmap(
    n: int, start_method: StartMethod | None = None
) -> tuple[list[Any], list[int], int]:
    """Run a pmap inside a worker: (values, inner worker pids, this worker's pid)."""
    from parmap import pmap

    values = pmap(square, range(n), workers=2, start_method=start_method).values
    pids = pmap(sleep_and_pid, [0.05] * 4, workers=2, start_method=start_method).values
    return values, sorted({p for p in pids if p is not None}), os.getpid()


def hard_nested_hang(marker_dir: str) -> None:
    """Start an inner pool whose items hang (the outer item will time out)."""
    from parmap import pmap

    pmap(async_marked_sleep, [marker_dir] * 2, range(2), [3600.0] * 2, workers=2)


# --- backends (tests/test_backends.py, tests/test_dask.py) -------------------


def backends_sleep_on(x: int, on: int, seconds: float) -> int:
    """Return ``x``; first sleep ``seconds`` when ``x == on``."""
    if x == on:
        time.sleep(seconds)
    return x


def backends_where(_: Any = None) -> tuple[int, str]:
    """The process and the thread that ran this item."""
    import threading

    return os.getpid(), threading.current_thread().name


def backends_slow_then_mark(x: int, seconds: float, marker_dir: str) -> int:
    """Sleep, then record that ``x`` ran to its end (abandoned work is not stopped)."""
    from pathlib import Path

    time.sleep(seconds)
    Path(marker_dir, f"{x}.done").write_text("")
    return x


def backends_interrupt(x: int) -> int:
    if x == 1:
        raise KeyboardInterrupt
    return x


def hard_marked_victim(x: int, marker_dir: str, victim: int) -> int:
    """Return ``x``; the victim writes its worker's pid to a marker and sleeps until killed."""
    if x == victim:
        _write_atomically(os.path.join(marker_dir, f"{x}.pid"), str(os.getpid()))
        time.sleep(60)
    return x


def backends_fail_first_else_slow(x: int, seconds: float, marker_dir: str) -> int:
    """Input 0 raises at once; the others sleep, then mark that they ran."""
    if x == 0:
        raise ValueError("bad 0")
    return backends_slow_then_mark(x, seconds, marker_dir)


@parallel(workers=3, on_error="collect")
def backends_seed_task(index: int) -> int:
    """The README's example task: every third input fails."""
    return fail_every_third(index)


@parallel(workers=2)
def hard_decorated_pid(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def hard_nested_decorated_pids(n: int) -> list[int]:
    """Map a @parallel function inside a worker; its pool stays alive in this worker."""
    return sorted({p for p in hard_decorated_pid.pmap([0.01] * n).values if p is not None})


def hang_at(x: int, hang_on: int, how: str, marker_dir: str) -> int:
    """Return `x` at once, except on `hang_on`: note when it began, then never end.

    ``how`` is ``"sleep"`` (the GIL is free meanwhile), ``"hold_gil"`` (a
    loop in C that never lets another thread of the worker run), or
    ``"sleep_on_go"``: like ``"sleep"``, but the item before `hang_on` first
    waits for a file ``go`` in `marker_dir`, so that the test decides when the
    hang begins.
    """
    if x == hang_on - 1 and how == "sleep_on_go":
        wait_for_path(os.path.join(marker_dir, "go"))
    if x != hang_on:
        return x
    _write_atomically(os.path.join(marker_dir, "hang.start"), repr(time.monotonic()))
    if how == "hold_gil":
        sum(range(10**15))
    else:
        time.sleep(3600)
    return x


# --- callables and exceptions of every shape (tests/test_attack_shapes.py) ------


@dataclasses.dataclass(frozen=True)
class RecordRejectedError(Exception):
    """A frozen dataclass exception: its ``__setattr__`` refuses every name."""

    line: str
    reason: str


@dataclasses.dataclass(frozen=True)
class FrozenBareError(Exception):
    """A frozen dataclass exception without fields: it pickles and unpickles."""


def validate_record(line: str) -> dict[str, Any]:
    """Parse a JSON line; reject one without a ``"name"`` with a frozen exception."""
    record: dict[str, Any] = json.loads(line)
    if "name" not in record:
        raise RecordRejectedError(line, "no name")
    if record["name"] == "":
        raise FrozenBareError()
    return record


class LoudStrError(Exception):
    """An exception whose ``__str__`` raises ``KeyboardInterrupt``."""

    def __str__(self) -> str:
        raise KeyboardInterrupt


def raise_loud_on(x: int, on: int) -> int:
    if x == on:
        raise LoudStrError(x)
    return x


def raise_with_tuple_notes(word: str) -> str:
    """Raise for a word with a digit, with ``__notes__`` set to a tuple."""
    if any(c.isdigit() for c in word):
        error = ValueError(f"not a word: {word!r}")
        error.__notes__ = ("checked by raise_with_tuple_notes",)  # type: ignore[assignment]
        raise error
    return word.upper()


@dataclasses.dataclass
class Scale:
    """An unhashable callable (``eq=True`` sets ``__hash__`` to None)."""

    factor: float

    def __call__(self, x: float) -> float:
        return self.factor * x


def count_words(text: str, sep: str) -> int:
    return len([w for w in text.split(sep) if w])


#: ``@parallel`` over a partial and over a callable instance, at module level
#: so that spawn workers can import the names (they still travel by value).
parallel_count_spaces = parallel(workers=2)(functools.partial(count_words, sep=" "))
parallel_scale = parallel(workers=2)(Scale(2.5))


def array_sum(array: Any, x: int) -> float:
    """Add ``x`` to the sum of a (large) numpy array bound in a partial."""
    return float(array.sum()) + x


def attempt_then(x: int, how: str, marker_dir: str) -> int:
    """Record each attempt at ``x`` in ``marker_dir``; then hang or die for ``x == 0``."""
    from pathlib import Path

    attempts = len(list(Path(marker_dir).glob(f"{x}.*")))
    Path(marker_dir, f"{x}.{attempts}").write_text(str(os.getpid()))
    if x == 0:
        if how == "hang":
            time.sleep(3600)
        os._exit(7)
    return x


# --- parmap.Executor (tests/test_executor.py) ---------------------------------


def executor_marked(marker_dir: str, index: int, seconds: float = 0.0, code: int = -1) -> int:
    """Write this worker's pid to ``marker_dir/<index>.pid``; sleep; ``os._exit(code)`` if set."""
    _write_atomically(os.path.join(marker_dir, f"{index}.pid"), str(os.getpid()))
    time.sleep(seconds)
    if code >= 0:
        os._exit(code)
    return index


def executor_kwargs(text: str, *, sep: str = " ", upper: bool = False) -> list[str]:
    words = text.split(sep)
    return [w.upper() for w in words] if upper else words


def executor_hang_in_initializer() -> None:
    time.sleep(3600)


# --- edges (tests/test_edges.py) ----------------------------------------------


class FunctionLoadRaises:
    """A map's function that pickles fine but cannot be rebuilt in a worker."""

    def __call__(self, x: Any) -> Any:
        return x

    def __reduce__(self) -> Any:
        return (_hard_refuse, ("this function cannot be rebuilt",))


class SilentError(Exception):
    """An exception whose ``str()`` raises, and that cannot be pickled either."""

    def __str__(self) -> str:
        raise RuntimeError("no words for it")

    def __reduce__(self) -> Any:
        raise TypeError("not picklable")


def raise_silent(x: int) -> int:
    if x == 1:
        raise SilentError
    return x


class PicklesEveryOtherTime:
    """Pickles on every second attempt only (the count is the class's)."""

    attempts = 0

    def __reduce__(self) -> tuple[type[PicklesEveryOtherTime], tuple[()]]:
        type(self).attempts += 1
        if type(self).attempts % 2:
            raise TypeError("not this time")
        return PicklesEveryOtherTime, ()


def map_an_input_that_pickles_every_other_time() -> None:
    """A chunk of one input that fails to pickle, but not when tried alone."""
    from concurrent.futures import ProcessPoolExecutor

    import parmap

    with ProcessPoolExecutor(1) as executor:
        for backend in ("process", executor):
            res = parmap.pmap(type, [PicklesEveryOtherTime()], backend=backend, on_error="collect")
            assert isinstance(res.errors[0], pickle.PicklingError), res.errors
            print("failed its item:", res.errors[0])
