#!/usr/bin/env python
"""What each process-pool library can and cannot do, checked by running it.

    python benchmarks/behaviour.py [--markdown] [--only NAME ...] [--start-method M] [--verbose]

Libraries: concurrent.futures.ProcessPoolExecutor, multiprocessing.Pool,
joblib (loky), pebble (ProcessPool), mpire (WorkerPool) and parmap.
Capabilities, each a small real experiment (except where noted):

1. timeout   - a 1 s per-task timeout on a task that beats a heartbeat file every
               0.2 s for 30 s: does the task STOP, or only the waiting?  ("after
               N s" counts from the call, so it includes a lazy pool's start-up.)
2. crash     - 6 tasks on 2 workers, item 2 calls os._exit(1): do the other 5 return?
3. async     - a native awaitable API (what is importable, and does it run)?
4. progress  - a built-in progress bar (run it and look for "6/6" on stderr)?
5. errors    - 6 tasks, item 2 raises: all 5 values in input order plus the
               exception, from the map call itself?
6. ctrl-c    - SIGINT to a process running a map of long sleeps (to its process
               group, as a terminal's Ctrl-C does, and to the parent alone):
               does it exit within 2 s, leaving no worker behind?

Every experiment runs in its own process session under a hard wall-clock cap,
and everything it started is found afterwards by a unique environment value
($PARMAP_BEHAVIOUR_DIR) and killed, so a hanging library cannot hang the run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import importlib
import inspect
import json
import multiprocessing as mp
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _behaviour_tasks as tasks  # noqa: E402

LIBS = ("ProcessPoolExecutor", "mp.Pool", "joblib", "pebble", "mpire", "parmap")
CAPS = ("timeout", "crash", "async", "progress", "errors", "ctrl-c")
CAP_TITLES = {
    "timeout": "1. timeout stops the task",
    "crash": "2. survives a worker crash",
    "async": "3. native async API",
    "progress": "4. built-in progress bar",
    "errors": "5. ordered values + errors in one call",
    "ctrl-c": "6. Ctrl-C: exits <=2 s, no leftovers",
}
DISTRIBUTIONS = {"joblib": "joblib", "pebble": "pebble", "mpire": "mpire", "parmap": "parmap"}

WORKERS = 2
N_ITEMS = 6
TIMEOUT = 1.0  # the per-task timeout of the timeout experiment
STOP_WITHIN = 2.0  # a stopped task beats no more this long after the timeout fired
STALE = 1.0  # no heartbeat for this long (5 beats) means the task has stopped
CRASH_CAP = 10.0  # beyond this, waiting for the crashed item's result counts as "hangs"
CTRLC_EXIT_WITHIN = 2.0
CTRLC_CAP = 10.0
#: Hard wall-clock cap of one experiment's process (it has inner caps of its own).
EXPERIMENT_CAP = {"timeout": 25.0, "crash": 25.0, "async": 20.0, "progress": 20.0, "errors": 20.0}
START_METHOD_ENV = "PARMAP_BEHAVIOUR_START_METHOD"


@dataclass
class Cell:
    verdict: str  # yes / no / partial / hangs / n/a / error
    note: str


# ---------------------------------------------------------------- child side
# Everything from here to "parent side" runs in the experiment's own process.


def _start_method() -> str | None:
    return os.environ.get(START_METHOD_ENV) or None


def _ctx() -> Any:
    method = _start_method()
    return mp.get_context(method) if method else None


def _ppe() -> ProcessPoolExecutor:
    return ProcessPoolExecutor(max_workers=WORKERS, mp_context=_ctx())


def _mp_pool() -> Any:
    return (_ctx() or mp).Pool(WORKERS)


def _pebble_pool() -> Any:
    import pebble

    return pebble.ProcessPool(max_workers=WORKERS, context=_ctx() or mp)


def _mpire_pool() -> Any:
    import mpire

    method = _start_method()
    return mpire.WorkerPool(n_jobs=WORKERS, **({"start_method": method} if method else {}))


def _parmap_options() -> dict[str, Any]:
    method = _start_method()
    return {"workers": WORKERS, **({"start_method": method} if method else {})}


def _joblib_parallel(**kwargs: Any) -> Any:
    import joblib

    # loky starts its workers its own way (fork+exec); --start-method does not apply.
    return joblib.Parallel(n_jobs=WORKERS, backend="loky", **kwargs)


def _ename(exc: BaseException) -> str:
    return type(exc).__name__


def _drain(it: Iterator[Any], limit: int = 3 * N_ITEMS) -> list[tuple[str, Any]]:
    """Read an iterator to its end, carrying on after each exception it raises."""
    out: list[tuple[str, Any]] = []
    while len(out) < limit:
        try:
            out.append(("value", next(it)))
        except StopIteration:
            break
        except Exception as exc:
            out.append(("error", exc))
    return out


def _describe(items: list[tuple[str, Any]]) -> str:
    return "[" + ", ".join(str(v) if k == "value" else _ename(v) for k, v in items) + "]"


# -- 1. timeout


def _beats() -> int:
    try:
        return os.path.getsize(tasks._path("heartbeat"))
    except FileNotFoundError:
        return 0


def _watch_heartbeat(fired_at: float) -> tuple[float | None, int]:
    """Watch the heartbeat after the timeout fired: (seconds to its last beat or None, beats).

    It has stopped once no beat came for STALE seconds (5 beats' worth); it is
    still running when it beats later than STOP_WITHIN + STALE after the timeout.
    """
    size = at_fire = _beats()
    last_growth: float | None = None
    while True:
        time.sleep(0.05)
        now, now_size = time.monotonic(), _beats()
        if now_size != size:
            size, last_growth = now_size, now
        if now - (last_growth or fired_at) >= STALE or now >= fired_at + STOP_WITHIN + STALE:
            break
    return (None if last_growth is None else last_growth - fired_at), size - at_fire


def _timeout_verdict(how: str, started: float, fired_at: float | None, error: str) -> Cell:
    if fired_at is None:
        return Cell("no", f"{how}: no timeout fired ({error})")
    waited = fired_at - started
    if _beats() == 0:
        return Cell("error", f"{how}: the task never started before the timeout fired")
    last, after = _watch_heartbeat(fired_at)
    said = f"{how} raised {error} after {waited:.1f} s"
    if last is None:
        return Cell("yes", f"{said}; the task stopped (no heartbeat after that)")
    if last <= STOP_WITHIN:
        return Cell(
            "yes", f"{said}; the task stopped ({after} beats after, the last {last:.1f} s later)"
        )
    return Cell(
        "no",
        f"{said}, but the task kept running ({after} beats in the next "
        f"{last:.1f} s, still beating)",
    )


def timeout_experiment(lib: str) -> Cell:
    fn, seconds = tasks.heartbeat, 30.0
    error = ""
    fired_at: float | None = None
    started = time.monotonic()
    if lib == "ProcessPoolExecutor":
        how = "future.result(timeout=1)"
        ex = _ppe()
        fut = ex.submit(fn, seconds)
        started = time.monotonic()
        try:
            fut.result(timeout=TIMEOUT)
        except TimeoutError as exc:
            fired_at, error = time.monotonic(), _ename(exc)
        cancelled = fut.cancel()
        cell = _timeout_verdict(how, started, fired_at, error)
        cell.note += f"; future.cancel() -> {cancelled}"
        return cell
    if lib == "mp.Pool":
        how = "AsyncResult.get(timeout=1)"
        pool = _mp_pool()
        res = pool.apply_async(fn, (seconds,))
        started = time.monotonic()
        try:
            res.get(timeout=TIMEOUT)
        except mp.TimeoutError as exc:
            fired_at, error = time.monotonic(), _ename(exc)
        return _timeout_verdict(how, started, fired_at, error)
    if lib == "joblib":
        import joblib

        how = "Parallel(timeout=1)"
        try:
            _joblib_parallel(timeout=TIMEOUT)(joblib.delayed(fn)(seconds) for _ in range(1))
        except Exception as exc:
            fired_at, error = time.monotonic(), _ename(exc)
        return _timeout_verdict(how, started, fired_at, error)
    if lib == "pebble":
        how = "pool.schedule(timeout=1)"
        pool = _pebble_pool()
        fut = pool.schedule(fn, args=(seconds,), timeout=TIMEOUT)
        try:
            fut.result()
        except Exception as exc:
            fired_at, error = time.monotonic(), _ename(exc)
        return _timeout_verdict(how, started, fired_at, error)
    if lib == "mpire":
        how = "map(task_timeout=1)"
        pool = _mpire_pool()
        try:
            pool.map(fn, [seconds], task_timeout=TIMEOUT)
        except Exception as exc:
            fired_at, error = time.monotonic(), _ename(exc)
        return _timeout_verdict(how, started, fired_at, error)
    if lib == "parmap":
        import parmap

        how = "pmap(timeout=1)"
        res = parmap.pmap(fn, [seconds], timeout=TIMEOUT, on_error="collect", **_parmap_options())
        if 0 in res.errors:
            fired_at, error = time.monotonic(), _ename(res.errors[0])
        else:
            error = f"returned {res.values!r}"
        return _timeout_verdict(how, started, fired_at, error)
    raise ValueError(lib)


# -- 2. crash


def _crash_verdict(how: str, items: list[tuple[str, Any]], hung: bool = False) -> Cell:
    values = [v for k, v in items if k == "value"]
    errors = sorted({_ename(v) for k, v in items if k == "error"})
    expected = [i * 10 for i in range(N_ITEMS) if i != tasks.BAD_INDEX]
    got = f"{len(values)}/{N_ITEMS - 1} other values"
    if hung:
        return Cell(
            "hangs",
            f"{how}: {got}; the crashed item never resolves (gave up after {CRASH_CAP:.0f} s)",
        )
    err = ", ".join(errors) or "nothing"
    first = next((v for k, v in items if k == "error"), None)
    if first is not None and str(first):
        err += f" ({str(first).strip().splitlines()[0][:90]})"
    if sorted(values) == expected:
        return Cell("yes", f"{how}: {got}; the crashed item gets {err}")
    return Cell(
        "no" if not values else "partial", f"{how}: {got} {_describe(items)}; errors: {err}"
    )


def crash_experiment(lib: str) -> Cell:
    fn, xs = tasks.crash_at, range(N_ITEMS)
    deadline = time.monotonic() + CRASH_CAP
    if lib == "ProcessPoolExecutor":
        ex = _ppe()
        futs = [ex.submit(fn, x) for x in xs]
        items: list[tuple[str, Any]] = []
        for f in futs:
            try:
                items.append(("value", f.result(timeout=max(0.0, deadline - time.monotonic()))))
            except TimeoutError:
                return _crash_verdict("submit() per item", items, hung=True)
            except Exception as exc:
                items.append(("error", exc))
        return _crash_verdict("submit() per item", items)
    if lib == "mp.Pool":
        pool = _mp_pool()
        results = [pool.apply_async(fn, (x,)) for x in xs]
        items = []
        hung = False
        for r in results:
            try:
                items.append(("value", r.get(timeout=max(0.0, deadline - time.monotonic()))))
            except mp.TimeoutError:
                hung = True
            except Exception as exc:
                items.append(("error", exc))
        return _crash_verdict("apply_async() per item", items, hung=hung)
    if lib == "joblib":
        import joblib

        gen = _joblib_parallel(return_as="generator")(joblib.delayed(fn)(x) for x in xs)
        return _crash_verdict("Parallel(return_as='generator')", _drain(iter(gen)))
    if lib == "pebble":
        pool = _pebble_pool()
        return _crash_verdict("map().result() iterated", _drain(pool.map(fn, xs).result()))
    if lib == "mpire":
        pool = _mpire_pool()
        return _crash_verdict("imap() iterated", _drain(iter(pool.imap(fn, xs))))
    if lib == "parmap":
        import parmap

        res = parmap.pmap(fn, xs, on_error="collect", **_parmap_options())
        items = [
            ("error", res.errors[i]) if i in res.errors else ("value", v)
            for i, v in enumerate(res.values)
        ]
        return _crash_verdict("pmap(on_error='collect')", items)
    raise ValueError(lib)


# -- 3. async


class _Ticker:
    """Counts event-loop ticks, to show an awaited map leaves the loop free."""

    def __init__(self) -> None:
        self.ticks = 0
        self.max_gap = 0.0

    async def run(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            self.ticks += 1
            self.max_gap = max(self.max_gap, now - last)
            last = now


async def _with_ticker(coro: Any) -> tuple[Any, _Ticker]:
    ticker = _Ticker()
    task = asyncio.create_task(ticker.run())
    try:
        return await coro, ticker
    finally:
        task.cancel()


def _awaitable_attrs(obj: Any) -> list[str]:
    return sorted(
        n
        for n in dir(obj)
        if n.startswith(("a", "async")) and inspect.iscoroutinefunction(getattr(obj, n, None))
    )


def async_experiment(lib: str) -> Cell:
    if lib == "ProcessPoolExecutor":
        fut = _ppe().submit(tasks.square, 3)
        native = inspect.isawaitable(fut)
        return Cell(
            "no",
            f"Future awaitable: {native}; wrap it yourself "
            "(loop.run_in_executor / asyncio.wrap_future)",
        )
    if lib == "mp.Pool":
        res = _mp_pool().apply_async(tasks.square, (3,))
        return Cell("no", f"AsyncResult awaitable: {inspect.isawaitable(res)}; callbacks only")
    if lib == "joblib":
        import joblib

        found = _awaitable_attrs(joblib.Parallel) + _awaitable_attrs(joblib)
        return Cell(
            "no",
            f"no coroutine API in joblib.Parallel ({found or 'none found'}); "
            "blocking call or return_as='generator' only",
        )
    if lib == "pebble":
        import pebble
        from pebble import asynchronous

        pool = _pebble_pool()
        decorated = asynchronous.process(pool=pool)(tasks.nap_square)

        async def main() -> list[int]:
            return list(await asyncio.gather(*(decorated(x) for x in range(N_ITEMS))))

        values, ticker = asyncio.run(_with_ticker(main()))
        wrapped = asyncio.run(_wrap(pool.schedule(tasks.square, args=(3,))))
        return Cell(
            "partial",
            f"per call only: @pebble.asynchronous.process(pool=...) "
            f"awaited {values} (loop ticked {ticker.ticks}x); "
            f"ProcessPool futures via asyncio.wrap_future -> {wrapped}; "
            f"no awaitable map (pebble {pebble.__version__})",
        )
    if lib == "mpire":
        import mpire

        found = _awaitable_attrs(mpire.WorkerPool)
        res = _mpire_pool().apply_async(tasks.square, (3,))
        return Cell(
            "no",
            f"no coroutine API ({found or 'none found'}); "
            f"apply_async() result awaitable: {inspect.isawaitable(res)}",
        )
    if lib == "parmap":
        import parmap

        values, ticker = asyncio.run(
            _with_ticker(parmap.apmap(tasks.nap_square, range(N_ITEMS), **_parmap_options()))
        )

        async def stream() -> list[int]:
            return [
                o.index
                async for o in parmap.aimap(
                    tasks.square, range(N_ITEMS), ordered=True, **_parmap_options()
                )
            ]

        order = asyncio.run(stream())
        return Cell(
            "yes",
            f"await apmap() -> {list(values)} (loop ticked {ticker.ticks}x, "
            f"max gap {ticker.max_gap * 1000:.0f} ms); "
            f"async for over aimap(ordered=True) -> indexes {order}",
        )
    raise ValueError(lib)


async def _wrap(fut: Any) -> Any:
    return await asyncio.wrap_future(fut)


# -- 4. progress


@contextlib.contextmanager
def _capture_stderr() -> Iterator[list[str]]:
    """Capture file descriptor 2 (so writes from any thread or C code are seen)."""
    out: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield out
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            out.append(tmp.read().decode(errors="replace"))


def _param_names(fn: Callable[..., Any]) -> list[str]:
    return list(inspect.signature(fn).parameters)


def _progress_params(fn: Callable[..., Any]) -> list[str]:
    return [p for p in _param_names(fn) if "progress" in p or p == "verbose"]


def progress_experiment(lib: str) -> Cell:
    bar = f"{N_ITEMS}/{N_ITEMS}"
    if lib == "ProcessPoolExecutor":
        found = _progress_params(ProcessPoolExecutor.map) + _progress_params(ProcessPoolExecutor)
        return Cell("no", f"no progress parameter ({found or 'none'}); wrap with tqdm yourself")
    if lib == "mp.Pool":
        from multiprocessing.pool import Pool

        found = _progress_params(Pool.map) + _progress_params(Pool.imap)
        return Cell("no", f"no progress parameter ({found or 'none'}); wrap imap in tqdm yourself")
    if lib == "pebble":
        import pebble

        found = _progress_params(pebble.ProcessPool.map)
        return Cell("no", f"no progress parameter ({found or 'none'}); wrap yourself")
    if lib == "joblib":
        import joblib

        with _capture_stderr() as err:
            _joblib_parallel(verbose=10)(
                joblib.delayed(tasks.nap_square)(x) for x in range(N_ITEMS)
            )
        lines = [ln for ln in err[0].splitlines() if "Done" in ln]
        return Cell(
            "no",
            f"verbose=10 logs text lines instead ({len(lines)} 'Done k out of n' "
            f"lines, e.g. {lines[-1].strip()[:40]!r})"
            if lines
            else "verbose= prints nothing here",
        )
    if lib == "mpire":
        with _capture_stderr() as err, _mpire_pool() as pool:
            pool.map(tasks.nap_square, range(N_ITEMS), progress_bar=True)
        seen = bar in err[0]
        return Cell(
            "yes" if seen else "no",
            f"map(progress_bar=True): tqdm bar on stderr {'showed' if seen else 'lacked'} {bar!r}",
        )
    if lib == "parmap":
        import parmap

        with _capture_stderr() as err:
            parmap.pmap(tasks.nap_square, range(N_ITEMS), progress=True, **_parmap_options())
        seen = bar in err[0]
        return Cell(
            "yes" if seen else "no",
            f"pmap(progress=True): tqdm bar on stderr {'showed' if seen else 'lacked'} {bar!r}",
        )
    raise ValueError(lib)


# -- 5. errors


def _full(items: list[tuple[str, Any]]) -> bool:
    """True when ``items`` are the 5 values in input order with the error at its place."""
    want = [
        ("value", i * 10) if i != tasks.BAD_INDEX else ("error", "ValueError")
        for i in range(N_ITEMS)
    ]
    return [(k, v if k == "value" else _ename(v)) for k, v in items] == want


def _errors_cell(
    blocking: str, blocking_result: str, it_how: str, items: list[tuple[str, Any]] | None
) -> Cell:
    note = f"{blocking} {blocking_result}"
    if items is None:
        return Cell("no", note)
    note += f"; {it_how} with try/except around next(): {_describe(items)}"
    if _full(items):
        return Cell("partial", note + " (iteration goes on after the error)")
    return Cell("no", note)


def _call(fn: Callable[[], Any]) -> str:
    try:
        return f"-> {fn()!r}"
    except Exception as exc:
        return f"raises {_ename(exc)}"


def errors_experiment(lib: str) -> Cell:
    fn, xs = tasks.raise_at, range(N_ITEMS)
    if lib == "ProcessPoolExecutor":
        ex = _ppe()
        return _errors_cell(
            "list(map())", _call(lambda: list(ex.map(fn, xs))), "map()", _drain(ex.map(fn, xs))
        )
    if lib == "mp.Pool":
        pool = _mp_pool()
        return _errors_cell(
            "map()", _call(lambda: pool.map(fn, xs)), "imap()", _drain(pool.imap(fn, xs))
        )
    if lib == "joblib":
        import joblib

        def jobs() -> Iterator[Any]:
            return (joblib.delayed(fn)(x) for x in xs)

        blocking = _call(lambda: _joblib_parallel()(jobs()))
        gen = _joblib_parallel(return_as="generator")(jobs())
        return _errors_cell("Parallel()", blocking, "return_as='generator'", _drain(iter(gen)))
    if lib == "pebble":
        pool = _pebble_pool()
        return _errors_cell(
            "list(map().result())",
            _call(lambda: list(pool.map(fn, xs).result())),
            "map().result()",
            _drain(pool.map(fn, xs).result()),
        )
    if lib == "mpire":
        with _mpire_pool() as pool:
            blocking = _call(lambda: pool.map(fn, xs))
        with _mpire_pool() as pool:
            return _errors_cell("map()", blocking, "imap()", _drain(iter(pool.imap(fn, xs))))
    if lib == "parmap":
        import parmap

        res = parmap.pmap(fn, xs, on_error="collect", **_parmap_options())
        items = [
            ("error", res.errors[i]) if i in res.errors else ("value", v)
            for i, v in enumerate(res.values)
        ]
        ok = _full(items)
        return Cell(
            "yes" if ok else "no",
            f"pmap(on_error='collect'): values={res.values}, "
            f"errors={{{', '.join(f'{i}: {_ename(e)}' for i, e in res.errors.items())}}}",
        )
    raise ValueError(lib)


# -- 6. ctrl-c (the child that gets interrupted)


def ctrlc_child(lib: str) -> None:
    """Run a map of 30 s sleeps until interrupted (see ``ctrlc_experiment``)."""
    fn, xs = tasks.marked_sleep, range(2 * WORKERS)
    if lib == "ProcessPoolExecutor":
        with _ppe() as ex:
            list(ex.map(fn, xs))
    elif lib == "mp.Pool":
        with _mp_pool() as pool:
            pool.map(fn, xs)
    elif lib == "joblib":
        import joblib

        _joblib_parallel()(joblib.delayed(fn)(x) for x in xs)
    elif lib == "pebble":
        with _pebble_pool() as pool:
            list(pool.map(fn, xs).result())
    elif lib == "mpire":
        with _mpire_pool() as pool:
            pool.map(fn, xs)
    elif lib == "parmap":
        import parmap

        parmap.pmap(fn, xs, **_parmap_options())
    else:
        raise ValueError(lib)


EXPERIMENTS: dict[str, Callable[[str], Cell]] = {
    "timeout": timeout_experiment,
    "crash": crash_experiment,
    "async": async_experiment,
    "progress": progress_experiment,
    "errors": errors_experiment,
}


def _kill_own_descendants() -> None:
    import psutil

    for p in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            p.kill()


def child_main(cap: str, lib: str) -> None:
    # Python ignores SIGINT when started with it ignored (nohup, some CI runners);
    # a terminal's Ctrl-C reaches a process with the default handler.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if cap == "ctrl-c":
        ctrlc_child(lib)
        return
    try:
        cell = EXPERIMENTS[cap](lib)
    except Exception as exc:
        cell = Cell("error", f"experiment failed: {_ename(exc)}: {exc}"[:300])
        traceback.print_exc()
    with open(tasks._path("result.json"), "w") as f:
        json.dump(cell.__dict__, f)
    # Leftover workers may still run 30 s tasks; pools' own shutdown would wait for them.
    _kill_own_descendants()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# ---------------------------------------------------------------- parent side


def _processes_of(workdir: str, exclude: int | None = None) -> list[Any]:
    """Live processes that inherited this experiment's unique environment value."""
    import psutil

    found = []
    me = os.getuid()
    for p in psutil.process_iter(["uids", "status"]):
        try:
            if p.pid in (os.getpid(), exclude) or p.info["uids"].real != me:
                continue
            if p.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if p.environ().get(tasks.DIR_ENV) == workdir:
                found.append(p)
        except (psutil.Error, AttributeError):
            continue
    return found


def _kill_all(workdir: str) -> int:
    import psutil

    procs = _processes_of(workdir)
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(procs, timeout=5)
    return len(procs)


def _is_helper(p: Any) -> bool:
    """A resource tracker or forkserver: a helper, not a worker; it exits on its own."""
    try:
        cmd = " ".join(p.cmdline())
        return "resource_tracker" in cmd or "forkserver" in cmd
    except Exception:
        return False


class Experiment:
    """One experiment process: own session, own directory, unique environment value."""

    def __init__(self, cap: str, lib: str, start_method: str | None) -> None:
        self.workdir = tempfile.mkdtemp(prefix="parmap-behaviour-")
        self.out = open(os.path.join(self.workdir, "child.log"), "w+b")  # noqa: SIM115
        env = dict(os.environ, **{tasks.DIR_ENV: self.workdir})
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [HERE, env.get("PYTHONPATH")]))
        if start_method:
            env[START_METHOD_ENV] = start_method
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--child", cap, lib],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: a group SIGINT reaches only it
        )

    def wait(self, cap: float) -> bool:
        try:
            self.proc.wait(timeout=cap)
            return True
        except subprocess.TimeoutExpired:
            return False

    def log(self) -> str:
        self.out.flush()
        self.out.seek(0)
        return self.out.read().decode(errors="replace")

    def result(self) -> Cell | None:
        try:
            with open(os.path.join(self.workdir, "result.json")) as f:
                return Cell(**json.load(f))
        except FileNotFoundError:
            return None

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            # Not yet reaped, so its process group id cannot have been reused.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        _kill_all(self.workdir)
        self.out.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


def run_experiment(cap: str, lib: str, start_method: str | None, verbose: bool) -> Cell:
    exp = Experiment(cap, lib, start_method)
    try:
        finished = exp.wait(EXPERIMENT_CAP[cap])
        cell = exp.result()
        if cell is None:
            why = "hung" if not finished else f"exited {exp.proc.returncode}"
            tail = exp.log().strip().splitlines()[-1:] or [""]
            cell = Cell(
                "hangs" if not finished else "error",
                f"experiment process {why} after {EXPERIMENT_CAP[cap]:.0f} s cap "
                f"without a result; {tail[0][:150]}",
            )
        if verbose:
            print(f"--- {cap} / {lib}: log\n{exp.log()}", file=sys.stderr)
        return cell
    finally:
        exp.cleanup()


def _wait_for_markers(workdir: str, n: int, proc: subprocess.Popen[bytes], cap: float) -> bool:
    deadline = time.monotonic() + cap
    while time.monotonic() < deadline and proc.poll() is None:
        if sum(name.startswith("started-") for name in os.listdir(workdir)) >= n:
            return True
        time.sleep(0.02)
    return False


def ctrlc_trial(
    lib: str, start_method: str | None, to_group: bool, verbose: bool
) -> tuple[str, str]:
    """SIGINT once WORKERS items run; returns (verdict, note)."""
    import psutil

    exp = Experiment("ctrl-c", lib, start_method)
    try:
        # Every worker is busy with a sleep once WORKERS markers exist.
        if not _wait_for_markers(exp.workdir, WORKERS, exp.proc, 60.0):
            return "error", f"map never started (exit {exp.proc.poll()})"
        workers = [p for p in _processes_of(exp.workdir, exclude=exp.proc.pid) if not _is_helper(p)]
        sent = time.monotonic()
        if to_group:
            os.killpg(exp.proc.pid, signal.SIGINT)
        else:
            os.kill(exp.proc.pid, signal.SIGINT)
        if not exp.wait(CTRLC_CAP):
            alive = sum(p.is_running() for p in workers)
            return "hangs", f"hangs >{CTRLC_CAP:.0f} s ({alive}/{len(workers)} workers alive)"
        took = time.monotonic() - sent
        # Give workers that notice their parent's death on their own the same 2 s.
        _gone, alive = psutil.wait_procs(workers, timeout=max(0.0, CTRLC_EXIT_WITHIN - took))
        left = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        # The parent's own KeyboardInterrupt traceback is expected; workers' are noise.
        tracebacks = exp.log().count("Traceback")
        note = (
            f"exit {took:.1f} s, {len(left)}/{len(workers)} workers left, {tracebacks} "
            f"traceback{'s' if tracebacks != 1 else ''} on stderr"
        )
        ok = took <= CTRLC_EXIT_WITHIN and not left
        return ("yes" if ok else "partial" if took <= CTRLC_CAP else "no"), note
    finally:
        if verbose:
            print(f"--- ctrl-c / {lib} (group={to_group}): log\n{exp.log()}", file=sys.stderr)
        exp.cleanup()


def ctrlc_experiment(lib: str, start_method: str | None, verbose: bool) -> Cell:
    group_verdict, group_note = ctrlc_trial(lib, start_method, True, verbose)
    parent_verdict, parent_note = ctrlc_trial(lib, start_method, False, verbose)
    verdict = group_verdict
    if group_verdict == "yes" and parent_verdict != "yes":
        verdict = "partial"
    return Cell(verdict, f"Ctrl-C (group): {group_note}; SIGINT to parent only: {parent_note}")


# ---------------------------------------------------------------- report


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for lib, dist in DISTRIBUTIONS.items():
        try:
            out[lib] = version(dist)
        except PackageNotFoundError:
            out[lib] = "not installed"
    for extra in ("tqdm", "psutil"):
        with contextlib.suppress(PackageNotFoundError):
            out[extra] = version(extra)
    return out


def available(lib: str) -> bool:
    mod = {"joblib": "joblib", "pebble": "pebble", "mpire": "mpire", "parmap": "parmap"}.get(lib)
    if mod is None:
        return True
    try:
        importlib.import_module(mod)
        return True
    except ImportError:
        return False


def header(start_method: str | None) -> list[str]:
    v = versions()
    libs = ", ".join(f"{k} {v[k]}" for k in DISTRIBUTIONS)
    method = start_method or f"{mp.get_start_method()} (platform default)"
    return [
        f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"python: {v['python']} ({platform.python_implementation()}, {platform.system()} "
        f"{platform.machine()}), CPUs: {os.cpu_count()}, start method: {method} "
        "(joblib: loky's own)",
        f"libraries: {libs}; tqdm {v.get('tqdm', '?')}, psutil {v.get('psutil', '?')}",
        f"each experiment: {WORKERS} workers, its own process session and wall-clock cap",
    ]


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(
    results: dict[tuple[str, str], Cell], libs: list[str], caps: list[str], start_method: str | None
) -> str:
    lines = [f"- {h}" for h in header(start_method)]
    lines += ["", "| capability | " + " | ".join(libs) + " |", "|---|" + "---|" * len(libs)]
    for cap in caps:
        cells = []
        for lib in libs:
            c = results[(cap, lib)]
            cells.append(f"**{c.verdict}**: {_md(c.note)}")
        lines.append(f"| {CAP_TITLES[cap]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_text(
    results: dict[tuple[str, str], Cell], libs: list[str], caps: list[str], start_method: str | None
) -> str:
    lines = [*header(start_method), ""]
    first = max(len(CAP_TITLES[c]) for c in caps)
    widths = [max(len(lib), 8) for lib in libs]
    heads = [lib.ljust(w) for lib, w in zip(libs, widths, strict=True)]
    lines.append(" | ".join([" " * first, *heads]))
    lines.append("-+-".join(["-" * first, *("-" * w for w in widths)]))
    for cap in caps:
        row = [CAP_TITLES[cap].ljust(first)]
        row += [results[(cap, lib)].verdict.ljust(w) for lib, w in zip(libs, widths, strict=True)]
        lines.append(" | ".join(row))
    lines.append("")
    for cap in caps:
        lines.append(f"{CAP_TITLES[cap]}:")
        for lib in libs:
            c = results[(cap, lib)]
            lines.append(f"  {lib:<20} {c.verdict:<8} {c.note}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", action="store_true", help="print a GitHub markdown table")
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="NAME",
        default=[],
        help="restrict to these libraries and/or capabilities",
    )
    parser.add_argument(
        "--start-method",
        choices=("fork", "spawn", "forkserver"),
        help="start method for the pools (default: the platform's)",
    )
    parser.add_argument("--verbose", action="store_true", help="print every experiment's log")
    parser.add_argument("--child", nargs=2, metavar=("CAP", "LIB"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(*args.child)
        return 0
    try:
        import psutil  # noqa: F401
    except ImportError:
        print("behaviour.py needs psutil (to find and kill leftover processes)", file=sys.stderr)
        return 2
    unknown = set(args.only) - set(LIBS) - set(CAPS)
    if unknown:
        parser.error(f"unknown names {sorted(unknown)}; choose from {LIBS + CAPS}")
    libs = [
        lib for lib in LIBS if not args.only or lib in args.only or not set(args.only) & set(LIBS)
    ]
    caps = [
        cap for cap in CAPS if not args.only or cap in args.only or not set(args.only) & set(CAPS)
    ]
    results: dict[tuple[str, str], Cell] = {}
    began = time.monotonic()
    for cap in caps:
        for lib in libs:
            t0 = time.monotonic()
            if not available(lib):
                cell = Cell("n/a", "not installed")
            elif cap == "ctrl-c":
                cell = ctrlc_experiment(lib, args.start_method, args.verbose)
            else:
                cell = run_experiment(cap, lib, args.start_method, args.verbose)
            results[(cap, lib)] = cell
            print(
                f"[{time.monotonic() - began:5.1f} s] {cap:<8} {lib:<20} {cell.verdict:<7} "
                f"({time.monotonic() - t0:.1f} s)",
                file=sys.stderr,
                flush=True,
            )
    render = render_markdown if args.markdown else render_text
    print(render(results, libs, caps, args.start_method))
    return 0


if __name__ == "__main__":
    sys.exit(main())
