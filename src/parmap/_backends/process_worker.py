"""The process worker: receive a chunk, run each item, send outcomes back.

Its messages are ``_codec``'s (on the worker's own socket, framed by
``_wire``). It runs its chunks in order, and may be sent the next one while
it runs one.

Outcomes are batched for at most ``FLUSH_SECONDS`` so that tiny items do not
pay a message each. The *beacon* (``process_beacon.Beacon``, a few numbers in
shared memory) tells the parent at any moment how many items this worker has
started and since when the current one runs, which is what per-item
deadlines and crash blame read.

``worker_main`` is the target of every worker process (pickled by reference
under spawn and forkserver): it must stay at this module path.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from .. import _shm, _sockio
from .._codec import (
    INIT_FAILED,
    PROTOCOL,
    READY,
    RELEASE,
    UNDECODABLE,
    Failed,
    FunctionCache,
    encode_batch,
    encode_error,
    raiser,
)
from .._events import FUNCTION_CACHE
from .._shm_cache import MappingCache
from .._wire import Frame, Inbox
from . import process_child
from .process_beacon import Beacon
from .process_child import gone

FLUSH_SECONDS = 0.005
#: While items come and go, the watch thread looks this often for an item
#: whose start time the beacon does not give yet (see ``Beacon``) and for
#: outcomes held back by a long item.
STAMP_SECONDS = 0.005
#: The longest it sleeps while nothing changes (one long item, or no work).
QUIET_SECONDS = 0.5
#: A worker runs its chunk in slices that take about this long.
SLICE_SECONDS = 0.001
MAX_SLICE = 4096


class _Worker:
    def __init__(self, sock: socket.socket, beacon: Any) -> None:
        self.sock = sock
        self.beacon = Beacon(beacon)
        self.timed = False  # a timed chunk is running: stamp its items
        self.threshold: int | None = None  # the running map's shared_memory_threshold
        # The main thread appends here without the lock (deque appends are
        # atomic); whoever flushes holds ``lock``.
        self.out: deque[Any] = deque()
        self.lock = threading.Lock()
        self.busy = 0.0
        self.slices: list[tuple[float, float, int]] = []  # since the last flush
        self.last_flush = time.monotonic()
        # The watch thread sleeps on this pipe while it backs off (``nudge``).
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        self.dozing = False
        self.is_copy = False  # see ``forked_by_task``
        # The slice size reached, kept for the next chunk of the same map:
        # starting every chunk again at one item cost a chunk of 1,000 tiny
        # items ten slices, and those were most of a worker's time per chunk.
        self.slice_job = -1
        self.slice_size = 1

    def send(self, message: tuple[Any, ...]) -> None:
        _sockio.send(self.sock, pickle.dumps(message, PROTOCOL))

    def flush(self, *, concurrent: bool = False) -> None:
        """Send the buffered outcomes (caller holds ``lock``).

        With ``concurrent`` the main thread may be appending meanwhile (the
        watch thread flushes), so outcomes are taken one by one.
        """
        out = self.out
        if not out:
            return
        if concurrent:
            values = [out.popleft() for _ in range(len(out))]
        else:
            values = list(out)
            out.clear()
        busy, self.busy = self.busy, 0.0
        slices, self.slices = self.slices, []
        body, segments = encode_batch(values, busy, slices, self.threshold)
        if segments:
            _sockio.send(self.sock, body, [segment.fd for segment in segments])
            for segment in segments:
                segment.close()  # the descriptor in flight keeps it alive
        else:
            _sockio.send(self.sock, body)
        self.last_flush = time.monotonic()

    def watch(self, parent: int, owner: int) -> None:
        """Exit when the pool's owner dies; date running items; flush held-back outcomes.

        ``parent`` is our parent process; ``owner`` the process that owns the
        pool. They differ under forkserver, whose server outlives the owner
        while its children (us) live, so the owner is watched directly.

        The thread stays quiet: it waits on the owner's pidfd and its wake-up
        pipe, wakes every ``STAMP_SECONDS`` only while items come and go, and
        backs off to ``QUIET_SECONDS`` while one item runs long (it is dated
        already) or nothing runs, so that it takes no CPU from the work.
        """
        poller, pidfd = self._poller(owner)
        counts = self.beacon.counts
        stamped = last_count = -1
        delay = STAMP_SECONDS
        while True:
            self.dozing = delay > STAMP_SECONDS
            try:
                events = poller.poll(delay * 1000)
                self.dozing = False
                if os.getppid() != parent or gone(owner, pidfd):
                    os._exit(0)  # pragma: no cover - ends in os._exit: never measured
                if events:
                    os.read(self.wake_r, 512)
            except OSError:
                # The task closed our descriptors. The parent saw our sentinel
                # close, and kills us with the reason: nothing left to watch.
                return
            count = counts[Beacon.STARTED]
            active = count != last_count
            last_count = count
            if self.timed:
                stamped = self.beacon.stamp(stamped)
            if self.out:
                active = True
                self._flush_held_back()
            delay = STAMP_SECONDS if active else min(2 * delay, QUIET_SECONDS)

    def _poller(self, owner: int) -> tuple[select.poll, int | None]:
        """What the watch thread waits on: its wake-up pipe and the owner's pidfd.

        Exits at once if the owner is gone already; the pidfd is None where
        the system has none (``gone`` then asks with a signal 0).
        """
        poller = select.poll()
        poller.register(self.wake_r, select.POLLIN)
        pidfd: int | None = None
        try:
            pidfd = os.pidfd_open(owner)
            poller.register(pidfd, select.POLLIN)
        except ProcessLookupError:
            os._exit(0)  # pragma: no cover - ends in os._exit: never measured
        except (AttributeError, OSError):
            pidfd = None
        return poller, pidfd

    def _flush_held_back(self) -> None:
        """From the watch thread: send outcomes that a long item holds back.

        Only if the main thread is not flushing itself (it holds the lock).
        """
        if time.monotonic() - self.last_flush >= FLUSH_SECONDS and self.lock.acquire(
            blocking=False
        ):
            try:
                self.flush(concurrent=True)
            except BaseException:
                pass
            finally:
                self.lock.release()

    def forked_by_task(self) -> None:  # pragma: no cover - its process ends in os._exit
        """In a child that a task forked: this process is not the worker.

        Such a child may return into the worker's loop (a task that calls
        ``os.fork()`` and returns in both processes). It must not touch the
        beacon or the socket, which it shares with the real worker: the
        beacon's views are released (the next item's count raises), and the
        loop exits at its next step without writing anything.
        """
        self.is_copy = True
        with contextlib.suppress(Exception):
            self.beacon.counts.release()
            self.beacon.times.release()

    def nudge(self) -> None:
        """Wake the watch thread if it is backing off (the main thread needs it soon)."""
        if self.dozing:
            self.dozing = False
            with contextlib.suppress(OSError):
                os.write(self.wake_w, b"x")

    def run(self, preload: Callable[..., Any] | None) -> None:
        functions: FunctionCache[int] = FunctionCache(FUNCTION_CACHE)
        started = 0
        inbox = Inbox()
        frames: list[Frame] = []
        mappings = MappingCache()
        while True:
            if not frames and not _sockio.receive(self.sock, inbox, frames):
                return
            body, fds = frames.pop(0)
            if not body:
                return
            if body.startswith(RELEASE):
                # Its function too: one bound to a large array holds a mapping.
                over = int(body[len(RELEASE) :])
                functions.forget(over)
                mappings.release(over)
                continue
            try:
                job_id, function, star, timed, threshold, args, refs = pickle.loads(body)
                maps = mappings.map_segments(fds, job_id)
                fds = []
                own = 0 if function is None else function[2]
                fn = self._function(functions, job_id, function, maps[:own], preload)
                chunk = _shm.loads(args, refs, maps[own:])
                # What needs a mapping holds it now; an idle worker must not.
                del maps
            except BaseException as exc:
                for fd in fds:
                    os.close(fd)
                # An argument that cannot be unpickled here: say so, and
                # stay alive for the next chunk.
                self.send((UNDECODABLE, encode_error(exc)))
                continue
            # The watch thread names the running item's start time while
            # a timed chunk runs (see ``watch``).
            self.timed = timed
            self.threshold = threshold
            if timed:
                self.nudge()
            if job_id != self.slice_job:
                self.slice_job, self.slice_size = job_id, 1
            started = self._run_chunk(fn, star, chunk, started)
            del chunk, fn  # an idle worker holds neither (see RELEASE)
            self.timed = False
            with self.lock:
                self.flush()

    def _run_chunk(self, fn: Callable[..., Any], star: bool, chunk: list[Any], started: int) -> int:
        """Run a chunk in slices, with as few steps per item as possible.

        Per item only the count goes into the beacon; the clock is read once
        per slice (see ``Beacon``). A slice grows while it takes under
        ``SLICE_SECONDS``, so that long items still go one by one, each with
        an exact start time, and their outcomes are not held back. Before
        outcomes are sent the beacon says "between items".
        """
        times, counts = self.beacon.times, self.beacon.counts
        start_slot, started_slot, first_slot = Beacon.START, Beacon.STARTED, Beacon.FIRST
        monotonic = time.monotonic
        total = len(chunk)
        pos = 0
        size = self.slice_size
        while pos < total:
            failed = False
            part = chunk[pos : pos + size]
            done: list[Any] = []
            append = done.append
            counts[first_slot] = started + 1
            t0 = monotonic()
            times[start_slot] = t0
            try:
                if star:
                    for counts[started_slot], args in enumerate(part, started + 1):
                        append(fn(*args))
                else:
                    for counts[started_slot], args in enumerate(part, started + 1):
                        append(fn(args))
            except BaseException as exc:
                # The items before the raising one keep their outcomes; the
                # rest of the slice runs in the next turn.
                append(self._failure(exc))
                failed = True
            if self.is_copy:
                os._exit(0)  # pragma: no cover - ends in os._exit: never measured
            times[start_slot] = -1.0
            t1 = monotonic()
            started += len(done)  # the items run, and the one that raised
            pos += len(done)
            if t1 - t0 < SLICE_SECONDS:
                size = min(size * 2, MAX_SLICE)
            elif size > 1:
                size //= 2
            self._end_slice(done, t0, t1, failed, pos < total)
        self.slice_size = size
        return started

    def _failure(self, exc: BaseException) -> Failed:
        """The outcome of an item that raised ``exc`` (a task's forked child exits here)."""
        if self.is_copy:
            os._exit(0)  # pragma: no cover - ends in os._exit: never measured
        return Failed(encode_error(exc))

    def _end_slice(self, done: list[Any], t0: float, t1: float, failed: bool, more: bool) -> None:
        """Hand a slice's outcomes over: send them now, or let the next slice add to them."""
        with self.lock:
            self.out.extend(done)
            self.busy += t1 - t0
            self.slices.append((t0, t1, len(done)))
            if failed or t1 - self.last_flush >= FLUSH_SECONDS:
                self.flush()
            elif more:
                # Outcomes wait for the next slice: if it runs long, the
                # watch thread must send them.
                self.nudge()

    @staticmethod
    def _function(
        functions: FunctionCache[int],
        job_id: int,
        function: tuple[bytes, tuple[_shm.BufferRef, ...], int] | None,
        maps: list[Any],
        preload: Callable[..., Any] | None,
    ) -> Callable[..., Any]:
        """The function of map ``job_id``: the one its chunk brought, else the one kept."""
        if function is not None:
            fn: Callable[..., Any]
            try:
                fn = _shm.loads(function[0], function[1], maps)
            except BaseException as exc:
                fn = raiser(exc)
            # A decorated function runs its original function here.
            fn = getattr(fn, "__parmap_inline__", fn)
            functions.put(job_id, fn)
            return fn
        known = functions.get(job_id) or preload
        if known is not None:
            return known
        return raiser(RuntimeError("parmap: the function of this map never reached the worker"))


def worker_main(
    sock: socket.socket,
    beacon: Any,
    ignore: bool,
    initializer: Callable[..., object] | None,
    initargs: tuple[Any, ...],
    preload: Callable[..., Any] | None,
    inherited: socket.socket | None,
    owner: int,
    die_with_parent: bool,
) -> None:
    """Entry point of a worker process; ``owner`` is the pid of the pool's owner.

    ``die_with_parent`` asks the kernel to SIGKILL us when our parent exits
    (Linux): it works even while a task holds the GIL in one long C call,
    which keeps the watch thread from noticing. The parent asks for it only
    when it starts workers from a thread that lives as long as they do (the
    signal follows the *thread* that forked us).
    """
    if inherited is not None:
        # Under fork we inherit the parent's end of our own socket; holding it
        # would hide the parent's death from us.
        inherited.close()
    parent = os.getppid()
    process_child.prepare(parent, owner, die_with_parent, ignore_signals=ignore)
    sock.setblocking(True)
    worker = _Worker(sock, beacon)
    os.register_at_fork(after_in_child=worker.forked_by_task)
    threading.Thread(target=worker.watch, args=(parent, owner), daemon=True).start()
    if initializer is not None:
        try:
            initializer(*initargs)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                worker.send((INIT_FAILED, encode_error(exc)))
            return
    try:
        worker.send((READY,))
        worker.run(getattr(preload, "__parmap_inline__", preload))
    except (BrokenPipeError, ConnectionResetError):
        return
    finally:
        # Pools a task opened here (a nested map, a @parallel function) must
        # stop with us; multiprocessing would otherwise wait for their workers.
        engine = sys.modules.get("parmap._engine")
        if engine is not None:
            engine._close_all()
