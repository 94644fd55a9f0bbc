"""Worker processes, each with its own socket and its own beacon.

Everything here is about processes and sockets; what to run where is the
scheduler's business. One socket per worker (not a shared queue) means
killing a worker can never leave a lock held that the others need.

The parent never blocks on a worker's socket: chunks wait in the worker's
``Outbox`` and are written as the socket accepts them (the drivers watch
``writables()``), while results go on being read. A worker whose outbox is
above ``HIGH_WATER`` is reported as backlogged, and the scheduler sends it no
chunk ahead of time until it drains below ``LOW_WATER``.

Nor does the parent ever wait for a killed worker: after SIGKILL the worker
is *dying*, its exit descriptor (a pidfd, else its sentinel) is watched like
any other, and it is reaped when that fires. A blocking map's end waits a
moment for the workers it killed (``reap(wait=True)``) and ``close`` for all,
each within a bound.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import signal
import time
from collections.abc import Callable
from multiprocessing.connection import wait as mp_wait
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any

from .. import _shm, _sockio
from .._codec import BATCH, INIT_FAILED, PROTOCOL, READY, RELEASE, UNDECODABLE, decode_batch
from .._events import (
    Batch,
    BeaconReading,
    ChunkMessage,
    Event,
    Exited,
    InitFailed,
    Ready,
    Undecodable,
)
from .._memory import OomWatch
from .._options import PoolConfig
from .._results import rebuild_error
from .._wire import Encoded, ProtocolError
from .base import Capabilities, Waitable
from .process_life import Dying as _Dying
from .process_life import Proc as _Proc
from .process_life import exit_fd, kill_group, reaped, start_worker
from .process_life import wait_for_exit as _wait_for_exit

#: How long an idle worker gets to exit after being told to stop.
RETIRE_GRACE = 2.0
#: How long a process whose sentinel fired gets to become reapable.
EXIT_GRACE = 0.1
#: How long ``close`` waits, for all of them together, for killed workers to exit.
KILL_REAP_TIMEOUT = 10.0
#: How long a blocking map's end waits for the workers it killed to exit.
SETTLE_TIMEOUT = 1.0
#: How often a wait looks again at a worker that exited but cannot be reaped yet.
HELD_POLL = 0.05
#: Outbox levels (bytes) between which a worker counts as backlogged.
HIGH_WATER = 1 << 20
LOW_WATER = 1 << 16


class ProcessBackend:
    """Starts, feeds, watches and stops worker processes."""

    def __init__(self, config: PoolConfig, *, preload: Callable[..., Any] | None = None) -> None:
        self._config = config
        self._ctx: BaseContext = multiprocessing.get_context(config.start_method)
        self._start_method = self._ctx.get_start_method()
        self.capabilities = Capabilities(
            workers=config.resolved_workers,
            can_kill=True,
            item_beacon=True,
            # Workers read chunks in order from their own socket: one may be
            # sent its next chunk while it runs the current one.
            prefetch=True,
            in_process=False,
            start_method=self._start_method,
            # Only forked workers have the parent's function without pickling.
            preload=preload if self._start_method == "fork" else None,
        )
        self._procs: dict[int, _Proc] = {}
        self._by_waitable: dict[Waitable, int] = {}
        self._retiring: list[BaseProcess] = []
        self._dying: dict[Waitable, _Dying] = {}  # by exit descriptor
        # Buffers each running map already put in shared memory.
        self._broadcasts: dict[int, _shm.Broadcast] = {}
        # Maps that sent segments: their end is told to the workers, which
        # keep mappings for the next chunk (``_shm.MappingCache``).
        self._shared: set[int] = set()
        self.on_discard: Callable[[list[Waitable]], None] = lambda waitables: None
        self._oom = OomWatch()  # names the OOM killer in a SIGKILL nobody sent

    # ------------------------------------------------------------- lifecycle
    def encode(self, message: ChunkMessage) -> Encoded:
        """Pickle a chunk message for the socket, large buffers out of band."""
        job_id, fn, star, args = message.job_id, message.fn, message.star, message.args
        timed, threshold = message.timed, message.threshold
        broadcast = self._broadcasts.get(job_id)
        if broadcast is None and threshold is not None:
            broadcast = self._broadcasts[job_id] = _shm.Broadcast()
        collector = _shm.Collector(threshold, broadcast)
        # The arguments are pickled on their own, so that a worker that cannot
        # unpickle them still learns the function (its next chunk, already
        # sent, may come without it).
        data, refs = collector.dumps(args)
        segments = collector.segments()
        weight = len(data) + sum(ref[2] for ref in refs)
        function: tuple[bytes, tuple[_shm.BufferRef, ...], int] | None = None
        if fn is not None:
            pickled = fn if isinstance(fn, _shm.Pickled) else _shm.Pickled(fn)
            function = (pickled.data, pickled.refs, len(pickled.segments))
            segments = pickled.segments + segments
        body = pickle.dumps((job_id, function, star, timed, threshold, data, refs), PROTOCOL)
        if segments:
            self._shared.add(job_id)
        return Encoded(body, segments, weight)

    def forget(self, job_id: int) -> None:
        """A map is over: let go of the buffers it shared, and tell the workers."""
        broadcast = self._broadcasts.pop(job_id, None)
        if broadcast is not None:
            broadcast.clear()
        if job_id in self._shared:
            self._shared.discard(job_id)
            release = RELEASE + str(job_id).encode()
            for entry in self._procs.values():
                if not entry.stopped:
                    entry.outbox.put(release, [])
                    self._write(entry)

    def spawn(self, wid: int) -> None:
        """Start worker ``wid``."""
        self._reap_retired()
        entry = start_worker(self._ctx, self._config, self.capabilities.preload, wid)
        self._procs[wid] = entry
        self._by_waitable[entry.fd] = wid
        self._by_waitable[entry.sentinel] = wid

    def send(self, wid: int, payload: Encoded) -> None:
        """Queue a chunk and write what the socket takes now; never blocks."""
        entry = self._procs.get(wid)
        if entry is None:
            return
        entry.outbox.put(payload.body, [seg.fd for seg in payload.segments], payload.segments)
        self._write(entry)

    def writables(self) -> list[Waitable]:
        """Sockets with output waiting."""
        return [entry.fd for entry in self._procs.values() if entry.outbox]

    def on_writable(self, waitable: Waitable) -> bool:
        """Write more to the worker whose socket became writable.

        Returns True when that ended the worker's backlog (see ``backlogged``).
        """
        wid = self._by_waitable.get(waitable)
        entry = self._procs.get(wid) if wid is not None else None
        if entry is None or waitable != entry.fd:
            return False
        was = entry.backlogged
        self._write(entry)
        return was and not entry.backlogged

    def backlogged(self, wid: int) -> bool:
        """Whether worker ``wid`` has so much unwritten that it should get no more now."""
        entry = self._procs.get(wid)
        return entry is not None and entry.backlogged

    @staticmethod
    def _write(entry: _Proc) -> None:
        try:
            _sockio.write_ready(entry.sock, entry.outbox)
        except OSError:
            # The worker is gone; its sentinel will say so.
            entry.outbox.clear()
        pending = entry.outbox.pending
        if pending > HIGH_WATER:
            entry.backlogged = True
        elif pending < LOW_WATER:
            entry.backlogged = False

    def kill(self, wid: int) -> None:
        """SIGKILL worker ``wid``; it is reaped once its exit is signalled, not waited for."""
        entry = self._discard(wid, tell=False)
        if entry is not None and not entry.stopped:
            self._bury(entry.process)

    def _bury(self, proc: BaseProcess) -> int | None:
        """SIGKILL ``proc`` unless it has exited; reap it now if it has, else
        watch it as dying. Returns its exit code if it was reaped."""
        code = reaped(proc)
        if code is None:
            kill_group(proc)
            code = reaped(proc)
        if code is None:
            fd, own = exit_fd(proc)
            self._dying[fd] = _Dying(proc, fd, own)
        return code

    def _sweep(self) -> None:
        """Reap the dying workers that can be reaped by now (never waits)."""
        for dying in list(self._dying.values()):
            if dying.process.exitcode is not None:
                self._let_go(dying)
                dying.process.close()

    def _let_go(self, dying: _Dying) -> None:
        del self._dying[dying.fd]
        if not dying.held:  # still watched
            self.on_discard([dying.fd])
        if dying.own_fd:
            os.close(dying.fd)

    def _hold(self, dying: _Dying) -> None:
        dying.held = True
        self.on_discard([dying.fd])

    def reap(self, *, wait: bool) -> None:
        """Reap the killed workers that have exited; with ``wait`` (a blocking
        map ends), first give those still dying up to ``SETTLE_TIMEOUT``."""
        self._sweep()
        if wait:
            waiting = [d for d in self._dying.values() if not (d.held or d.waited)]
            for dying in waiting:
                dying.waited = True  # a worker that never exits delays one map only
            self._wait_dying(waiting, SETTLE_TIMEOUT)

    def _wait_dying(self, dying: list[_Dying], seconds: float) -> None:
        """Wait up to ``seconds`` for ``dying`` to exit, reaping them as they do."""
        deadline = time.monotonic() + seconds
        while True:
            self._sweep()
            left = [d for d in dying if self._dying.get(d.fd) is d]
            remaining = deadline - time.monotonic()
            if not left or remaining <= 0:
                return
            watched = [d.fd for d in left if not d.held]
            if not watched:
                time.sleep(min(remaining, HELD_POLL))
                continue
            ready = set(mp_wait(watched, remaining))
            self._sweep()
            for d in left:
                if d.fd in ready and self._dying.get(d.fd) is d:
                    self._hold(d)

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
                proc.close()
        self._retiring = still

    def _discard(self, wid: int, *, tell: bool) -> _Proc | None:
        entry = self._procs.pop(wid, None)
        if entry is None:
            return None
        gone: list[Waitable] = [w for w in (entry.fd, entry.sentinel) if w in self._by_waitable]
        for w in gone:
            del self._by_waitable[w]
        self.on_discard(gone)
        if tell and not entry.outbox:
            # "Stop"; only idle workers are told, a busy one would not listen.
            # A worker is idle only when everything sent was written.
            with contextlib.suppress(OSError):
                _sockio.send_nowait(entry.sock, b"")
        entry.outbox.clear()
        for fd in entry.inbox.take_stray_fds():
            with contextlib.suppress(OSError):
                os.close(fd)
        entry.sock.close()
        return entry

    def close(self) -> None:
        """Stop every worker (the scheduler already retired or killed them).

        Retiring workers get ``RETIRE_GRACE`` to exit on their own, then
        SIGKILL; then every killed worker gets ``KILL_REAP_TIMEOUT`` to be
        reaped (one that cannot be, in uninterruptible sleep, is left).
        """
        for wid in list(self._procs):
            self.kill(wid)
        self._broadcasts.clear()
        self._shared.clear()
        retiring, self._retiring = self._retiring, []
        deadline = time.monotonic() + RETIRE_GRACE
        alive = [p for p in retiring if p.exitcode is None]
        while alive and (left := deadline - time.monotonic()) > 0:
            mp_wait([p.sentinel for p in alive], left)
            alive = [p for p in alive if p.exitcode is None]
        for proc in retiring:
            self._bury(proc)
        self._wait_dying(list(self._dying.values()), KILL_REAP_TIMEOUT)
        for dying in list(self._dying.values()):  # pragma: no cover - unreaped after 10 s
            self._let_go(dying)
            # close() refuses a process that is still running.
            with contextlib.suppress(ValueError):
                dying.process.close()

    # --------------------------------------------------------------- reading
    def waitables(self) -> list[Waitable]:
        """Sockets and sentinels to watch for reading, and dying workers' exit descriptors."""
        return [*self._by_waitable, *(fd for fd, d in self._dying.items() if not d.held)]

    def pid(self, wid: int) -> int | None:
        """Process id of worker ``wid`` (for reading its memory), or None."""
        entry = self._procs.get(wid)
        return None if entry is None else entry.process.pid

    def beacon(self, wid: int) -> BeaconReading:
        """Read worker ``wid``'s beacon (see ``process_beacon.Beacon``)."""
        entry = self._procs.get(wid)
        return None if entry is None else entry.beacon.read()

    def handle(self, waitable: Waitable, now: float) -> list[Event]:
        """What became ready on ``waitable``, as events."""
        events: list[Event] = []
        if self._dying:
            self._sweep()  # held workers are looked at again on every event
            dying = self._dying.get(waitable)
            if dying is not None:  # it exited, yet cannot be reaped
                self._hold(dying)
                return events
        wid = self._by_waitable.get(waitable)
        if wid is None:
            return events
        entry = self._procs[wid]
        if waitable == entry.fd:
            self._read(wid, entry, events, now)
            return events
        # The process exited: read what it sent before dying, then report.
        while not entry.eof and wid in self._procs:
            if not self._read(wid, entry, events, now):
                break
        if wid in self._procs:
            events.append(self._exited(wid, entry, now))
        return events

    def _exited(self, wid: int, entry: _Proc, now: float) -> Exited:
        code = entry.process.exitcode  # polls without blocking
        if code is None:
            # The sentinel closes as the dying process's descriptors do, a
            # moment before the kernel lets it be reaped: wait that moment, so
            # that its own exit status (e.g. an OOM kill) is what we report.
            # (Not ``join``: with the sentinel closed it waits for the exit
            # itself, however long a task that closed its descriptors runs.)
            _wait_for_exit(entry.process, EXIT_GRACE)
            code = entry.process.exitcode
        if code is not None:
            return Exited(wid, code, now, entry.beacon.read(), self._oom.explain(code))
        # The sentinel fired but the process lives: the task closed the
        # descriptors it inherited. It cannot be watched any more.
        code = self._bury(entry.process)
        entry.stopped = True
        return Exited(
            wid,
            -signal.SIGKILL if code is None else code,
            now,
            entry.beacon.read(),
            "its task closed the descriptors the worker inherited (its socket to "
            "parmap among them), so parmap killed it",
        )

    def _read(self, wid: int, entry: _Proc, events: list[Event], now: float) -> bool:
        """Read and process what the worker sent; False when nothing came."""
        try:
            frames, closed = _sockio.read_ready(entry.sock, entry.inbox)
        except ProtocolError:
            frames, closed = [], True
        for body, fds in frames:
            if wid not in self._procs:
                for fd in fds:
                    os.close(fd)
                continue
            events.append(self._message(wid, body, fds, now))
        if closed and not entry.eof:
            # The worker closed its end: it is exiting. Stop watching the
            # socket (it would stay readable) and let the sentinel report.
            entry.eof = True
            if entry.fd in self._by_waitable:
                del self._by_waitable[entry.fd]
                self.on_discard([entry.fd])
        return bool(frames)

    @staticmethod
    def _message(wid: int, body: bytes | bytearray, fds: list[int], now: float) -> Event:
        maps = _shm.map_segments(fds) if fds else []
        message = pickle.loads(body)
        tag = message[0]
        if tag == BATCH:
            _, values, raw_errors, pickled, busy, slices = message
            values, errors = decode_batch(values, raw_errors, pickled, maps)
            return Batch(wid, values, errors, busy, now, slices)
        if tag == READY:
            return Ready(wid, now)
        if tag == UNDECODABLE:
            return Undecodable(wid, rebuild_error(message[1]), now)
        assert tag == INIT_FAILED  # the worker sends nothing else
        return InitFailed(wid, rebuild_error(message[1]))
