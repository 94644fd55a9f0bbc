"""Worker processes, each with its own pipe and its own beacon.

Everything here is about processes and pipes; what to run where is the
scheduler's business. One pipe per worker (not a shared queue) means killing
a worker can never leave a lock held that the others need.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any, cast

from .._options import PoolConfig
from .._results import rebuild_error
from .._scheduler import BeaconReading, Scheduler
from .._worker import BATCH, INIT_FAILED, PROTOCOL, READY, UNDECODABLE, Beacon, worker_main
from .base import Waitable

#: How long an idle worker gets to exit after being told to stop.
RETIRE_GRACE = 2.0
#: How long we wait for the kernel to reap a SIGKILLed process.
KILL_REAP_TIMEOUT = 10.0


def stop_process(proc: BaseProcess, *, force: bool, grace: float = RETIRE_GRACE) -> int | None:
    """Stop ``proc`` and reap it; return its exit code.

    Without ``force`` the process gets ``grace`` seconds to exit on its own
    (it was told to stop); then, or with ``force``, it is sent SIGKILL. Workers
    ignore SIGTERM, so there is no middle step.
    """
    if not force:
        proc.join(grace)
    if proc.exitcode is None:
        with contextlib.suppress(OSError, ValueError):
            proc.kill()
        proc.join(KILL_REAP_TIMEOUT)
    code = proc.exitcode
    # close() refuses a process still running after SIGKILL (uninterruptible
    # sleep); there is nothing more we can do for it.
    with contextlib.suppress(ValueError):
        proc.close()
    return code


@dataclass(slots=True)
class _Proc:
    process: BaseProcess
    conn: Connection
    sentinel: int
    beacon: Beacon
    eof: bool = False


class ProcessBackend:
    """Starts, feeds, watches and stops worker processes."""

    can_kill = True
    #: Workers read chunks in order from their own pipe: one may be sent its
    #: next chunk while it runs the current one (see Scheduler).
    prefetch = True

    def __init__(self, config: PoolConfig, *, preload: Callable[..., Any] | None = None) -> None:
        self._config = config
        self._ctx: BaseContext = multiprocessing.get_context(config.start_method)
        self.start_method: str = self._ctx.get_start_method()
        self.preload = preload if self.start_method == "fork" else None
        self._procs: dict[int, _Proc] = {}
        self._by_waitable: dict[Waitable, int] = {}
        self._retiring: list[BaseProcess] = []
        self.on_discard: Callable[[list[Waitable]], None] = lambda waitables: None

    # ------------------------------------------------------------- lifecycle
    def encode(self, message: object) -> bytes:
        """Pickle a chunk message for the pipe, with whether its map is timed."""
        job_id, fn, star, args = cast("tuple[Any, Any, Any, Any]", message)
        timed = getattr(message, "timed", True)
        # The arguments are pickled on their own, so that a worker that cannot
        # unpickle them still learns the function (its next chunk, already
        # sent, may come without it).
        return pickle.dumps((job_id, fn, star, timed, pickle.dumps(args, PROTOCOL)), PROTOCOL)

    def spawn(self, wid: int) -> None:
        """Start worker ``wid``."""
        self._reap_retired()
        ctx = self._ctx
        parent_conn, child_conn = ctx.Pipe(duplex=True)
        shared = ctx.RawArray("d", Beacon.SLOTS)
        beacon = Beacon(shared)
        beacon.reset()
        forked = self.start_method == "fork"
        cfg = self._config
        proc = ctx.Process(  # type: ignore[attr-defined]
            target=worker_main,
            args=(
                child_conn,
                shared,
                cfg.ignore_signals,
                cfg.initializer,
                cfg.initargs,
                self.preload,
                parent_conn if forked else None,
                os.getpid(),
            ),
            name=f"parmap-worker-{wid}",
        )
        try:
            proc.start()
        finally:
            child_conn.close()
        entry = _Proc(proc, parent_conn, proc.sentinel, beacon)
        self._procs[wid] = entry
        self._by_waitable[parent_conn] = wid
        self._by_waitable[entry.sentinel] = wid

    def send(self, wid: int, payload: bytes) -> None:
        """Send a chunk; a dead worker is noticed through its sentinel instead."""
        entry = self._procs.get(wid)
        if entry is None:
            return
        with contextlib.suppress(OSError):
            entry.conn.send_bytes(payload)

    def kill(self, wid: int) -> None:
        """Kill worker ``wid`` and reap it."""
        entry = self._discard(wid, tell=False)
        if entry is not None:
            stop_process(entry.process, force=True)

    def retire(self, wid: int) -> None:
        """Ask idle worker ``wid`` to exit; it is reaped later, without waiting now."""
        entry = self._discard(wid, tell=True)
        if entry is not None:
            self._retiring.append(entry.process)
        self._reap_retired()

    def _reap_retired(self) -> None:
        still = []
        for proc in self._retiring:
            if proc.exitcode is None:  # exitcode polls without blocking
                still.append(proc)
            else:
                stop_process(proc, force=False)
        self._retiring = still

    def _discard(self, wid: int, *, tell: bool) -> _Proc | None:
        entry = self._procs.pop(wid, None)
        if entry is None:
            return None
        gone = [w for w in (entry.conn, entry.sentinel) if w in self._by_waitable]
        for w in gone:
            del self._by_waitable[w]
        self.on_discard(gone)
        if tell:
            # "Stop"; only idle workers are told, a busy one would not listen.
            with contextlib.suppress(OSError):
                entry.conn.send_bytes(b"")
        entry.conn.close()
        return entry

    def close(self) -> None:
        """Stop every worker (the scheduler already retired or killed them)."""
        for wid in list(self._procs):
            self.kill(wid)
        retiring, self._retiring = self._retiring, []
        for proc in retiring:
            stop_process(proc, force=False)

    # --------------------------------------------------------------- reading
    def waitables(self) -> list[Waitable]:
        """Pipes and sentinels to watch."""
        return list(self._by_waitable)

    def beacon(self, wid: int) -> BeaconReading:
        """Read worker ``wid``'s beacon (see ``_worker.Beacon``)."""
        entry = self._procs.get(wid)
        return None if entry is None else entry.beacon.read()

    def handle(self, waitable: Waitable, sched: Scheduler, now: float) -> None:
        """Process what became ready on ``waitable``."""
        wid = self._by_waitable.get(waitable)
        if wid is None:
            return
        entry = self._procs[wid]
        if waitable is entry.conn:
            self._read(wid, entry, sched, now)
            return
        # The process exited: read what it sent before dying, then report.
        while not entry.eof and wid in self._procs and entry.conn.poll():
            self._read(wid, entry, sched, now)
        if wid in self._procs:
            entry.process.join(KILL_REAP_TIMEOUT)
            sched.on_exit(wid, entry.process.exitcode, now)

    def _read(self, wid: int, entry: _Proc, sched: Scheduler, now: float) -> None:
        try:
            data = entry.conn.recv_bytes()
        except (EOFError, OSError):
            # The worker closed its end: it is exiting. Stop watching the pipe
            # (it would stay readable) and let the sentinel report the exit.
            entry.eof = True
            if entry.conn in self._by_waitable:
                del self._by_waitable[entry.conn]
                self.on_discard([entry.conn])
            return
        message = pickle.loads(data)
        tag = message[0]
        if tag == BATCH:
            _, values, raw_errors, pickled, busy = message
            errors: dict[int, BaseException] | None = None
            if raw_errors:
                errors = {pos: rebuild_error(payload) for pos, payload in raw_errors.items()}
            if pickled:
                for pos in pickled:
                    try:
                        values[pos] = pickle.loads(values[pos])
                    # SystemExit too: a result's __reduce__ may raise it, and
                    # it must fail that item, not end the caller's program.
                    except (Exception, SystemExit) as exc:
                        values[pos] = None
                        errors = errors or {}
                        error = pickle.UnpicklingError(
                            f"the result could not be unpickled in the parent "
                            f"({type(exc).__name__}: {exc})"
                        )
                        error.__cause__ = exc
                        errors[pos] = error
            sched.on_batch(wid, values, errors, busy, now)
        elif tag == READY:
            sched.on_ready(wid)
        elif tag == UNDECODABLE:
            sched.on_undecodable(wid, rebuild_error(message[1]), now)
        elif tag == INIT_FAILED:
            sched.on_init_failed(wid, rebuild_error(message[1]))
