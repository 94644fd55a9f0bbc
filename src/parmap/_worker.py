"""The worker process: receive a chunk, run each item, send outcomes back.

Protocol on the worker's own socket (frames, see ``_wire``; each body is
one pickled tuple, large buffers travel beside it in shared memory, see
``_shm``):

* parent → worker: ``(job_id, function, star, timed, threshold, args,
  arg_refs)``, a chunk. ``function`` is ``None`` or ``(stream, refs,
  segments)``, sent once per job and cached; its ``segments`` first
  descriptors are its own, the rest belong to the arguments. ``timed`` says
  the map has a timeout (the watch thread then dates its items);
  ``threshold`` is the map's ``shared_memory_threshold`` for results. The
  arguments are pickled on their own. An empty body means stop; ``RELEASE``
  followed by a job id says that map is over (the worker lets go of its
  function and of the segment mappings it kept for the map's next chunk,
  ``_shm.MappingCache``).
  A worker may be sent its next chunk while it runs one: it runs them in order.
* worker → parent: ``(READY,)`` once started; ``(INIT_FAILED, error)`` if the
  initializer raised; ``(BATCH, values, errors, pickled, busy, slices)`` with
  the next outcomes of the current chunk, in order (values at the positions in
  ``pickled`` are ``(stream, refs)`` into the frame's segments; ``slices``
  are ``(t0, t1, count)`` of the slices that ran them, for ``MapStats``).

Outcomes are batched for at most ``FLUSH_SECONDS`` so that tiny items do not
pay a message each. The *beacon* (``Beacon``, a few numbers in shared memory)
tells the parent at any moment how many items this worker has started and
since when the current one runs, which is what per-item deadlines and crash
blame read.
"""

from __future__ import annotations

import contextlib
import copyreg
import io
import math
import os
import pickle
import select
import signal
import socket
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from . import _shm, _sockio
from ._events import BeaconReading
from ._results import ErrorPayload, rebuild_error
from ._scheduler import FUNCTION_CACHE
from ._wire import Frame, Inbox

READY, BATCH, INIT_FAILED, UNDECODABLE = 0, 1, 2, 3
FLUSH_SECONDS = 0.005
#: While items come and go, the watch thread looks this often for an item
#: whose start time the beacon does not give yet (see ``Beacon``) and for
#: outcomes held back by a long item.
STAMP_SECONDS = 0.005
#: The longest it sleeps while nothing changes (one long item, or no work).
QUIET_SECONDS = 0.5
PROTOCOL = 5
#: The body of "map ``job_id`` is over" starts with this (a pickle never does).
RELEASE = b"release "
#: A worker runs its chunk in slices that take about this long.
SLICE_SECONDS = 0.001
MAX_SLICE = 4096
_SIMPLE = frozenset({int, float, str, bytes, bool, type(None), complex})


def ignore_signals() -> None:
    """Ignore SIGINT and SIGTERM: Ctrl-C is the parent's to handle."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def encode_error(exc: BaseException) -> ErrorPayload:
    """Make any exception safe to send: pickled if it round-trips, plus text.

    Never raises, whatever the exception does: its ``__str__`` may raise
    (even ``KeyboardInterrupt``), its class may refuse attribute writes (a
    frozen dataclass). An outcome that cannot be described would cost the
    worker its life and the item a ``WorkerCrashedError`` it did not earn.
    """
    cls = type(exc)
    module = getattr(cls, "__module__", None)
    qualname = getattr(cls, "__qualname__", cls.__name__)
    name = qualname if module in ("builtins", None) else f"{module}.{qualname}"
    try:
        message = str(exc)
    except BaseException:
        message = "<str() of the exception failed>"
    try:
        tb_text = "".join(traceback.format_exception(exc))
    except BaseException:
        # Formatting calls str() again (and that of every chained error).
        try:
            frames = "".join(traceback.format_tb(exc.__traceback__))
            tb_text = f"Traceback (most recent call last):\n{frames}{name}: {message}\n"
        except BaseException:
            tb_text = f"{name}: {message}\n"
    data: bytes | None = None
    # Only ordinary exceptions travel as themselves: SystemExit or
    # KeyboardInterrupt re-raised in the parent would stop the parent.
    if isinstance(exc, Exception):
        # The text above has the traceback; frames must not travel (a helper
        # such as tblib would otherwise pickle them and pin parent frames).
        _drop_tracebacks(exc)
        data = _round_trip(exc)
    return (data, name, message, tb_text)


def _round_trip(exc: BaseException) -> bytes | None:
    """The pickle of ``exc`` if it unpickles, else None (never raises).

    A reducer that a library registered for every exception class (tblib's,
    which dask installs) rebuilds an exception by setting its attributes, and
    that fails for a frozen dataclass; the class's own ``__reduce__`` is then
    tried without such reducers.
    """
    try:
        data = pickle.dumps(exc, PROTOCOL)
        pickle.loads(data)
    except BaseException:
        pass
    else:
        return data
    try:
        buffer = io.BytesIO()
        pickler = pickle.Pickler(buffer, PROTOCOL)
        pickler.dispatch_table = {
            cls: reducer
            for cls, reducer in copyreg.dispatch_table.items()
            if not (isinstance(cls, type) and issubclass(cls, BaseException))
        }
        pickler.dump(exc)
        data = buffer.getvalue()
        pickle.loads(data)
    except BaseException:
        return None
    return data


def _drop_tracebacks(exc: BaseException) -> None:
    """Clear the tracebacks of ``exc``, of its causes and contexts, and of a group's members.

    Through ``object.__setattr__``, as the interpreter itself sets them: a
    frozen dataclass exception refuses ``exc.__traceback__ = None``.
    """
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        with contextlib.suppress(Exception):
            object.__setattr__(current, "__traceback__", None)
        for linked in (current.__cause__, current.__context__):
            if isinstance(linked, BaseException):
                todo.append(linked)
        if isinstance(current, BaseExceptionGroup):
            todo.extend(e for e in current.exceptions if isinstance(e, BaseException))


class _NotPlain(Exception):
    pass


class _PlainPickler(pickle.Pickler):
    """Pickles only values that cannot fail to unpickle in the parent.

    The C pickler writes ``None``, ``bool``, ``int``, ``float``, ``str``,
    ``bytes`` and lists, tuples, dicts and sets of them itself; anything else
    reaches ``reducer_override``, which gives up, and the batch is encoded
    value by value instead (``encode_outcomes``), so that one bad value fails
    only its own item.
    """

    def reducer_override(self, obj: Any) -> Any:
        raise _NotPlain


class _Failed:
    """Marks an outcome slot that holds an error instead of a value."""

    __slots__ = ("payload",)

    def __init__(self, payload: ErrorPayload) -> None:
        self.payload = payload


def _raiser(exc: BaseException) -> Callable[..., Any]:
    def fail(*args: Any) -> Any:
        raise exc

    return fail


class Beacon:
    """A worker's beacon: five numbers in shared memory, read by the parent.

    Reading the clock for every item would cost a map of tiny items a third
    of its speed, so the worker runs items in *slices* and reads it once per
    slice; per item it only stores a count. The slots:

    ``START``    start of the running slice (-1.0 between slices)
    ``STARTED``  items started since the worker was born (the running one included)
    ``FIRST``    the count of the slice's first item, whose start is ``START``
    ``STAMP``    a time by which item ``STAMPED`` had surely started (-1.0
                 while being written): while a timed chunk runs, the watch
                 thread stamps each item it sees running that is not the
                 first of its slice, within ``STAMP_SECONDS``
    ``STAMPED``  the count that ``STAMP`` is about

    The running item's start time is therefore exact for the first item of a
    slice (items of a millisecond or more run one per slice), and otherwise
    known to within ``STAMP_SECONDS`` unless the item holds the GIL; the
    scheduler then falls back on when it first saw the item running. A
    deadline can be late by that much, never early.

    Each writer stores a time last (and invalidates it first), and the
    reader trusts only a reading whose two reads of that time agree.
    """

    SLOTS = 5
    START, STARTED, FIRST, STAMP, STAMPED = range(5)

    __slots__ = ("counts", "times")

    def __init__(self, shared: Any) -> None:
        raw = memoryview(shared).cast("B")
        # Times are doubles, counts int64s in the same slots (storing an int
        # through a "q" view is twice as fast as converting it into a double).
        self.times: memoryview[float] = raw.cast("d")
        self.counts: memoryview[int] = raw.cast("q")

    def reset(self) -> None:
        """Say "between items, nothing stamped" (the parent does this at spawn)."""
        self.times[self.START] = -1.0
        self.times[self.STAMP] = -1.0

    def read(self) -> BeaconReading:
        """What the worker is running, as the scheduler wants it (``BeaconReading``)."""
        times, counts = self.times, self.counts
        t1 = times[self.START]
        started = counts[self.STARTED]
        first = counts[self.FIRST]
        s1 = times[self.STAMP]
        stamped = counts[self.STAMPED]
        s2 = times[self.STAMP]
        if t1 != times[self.START]:
            return None  # a new slice began while we read
        if t1 < 0 or started < first:
            return (started, None)  # between items
        if started == first:
            return (started, t1)
        if stamped == started and s1 == s2 and s1 >= 0:
            return (started, s1)
        return (started, math.inf)

    def stamp(self, last: int) -> int:
        """Stamp the running item if it is new since ``last``; return the stamped count."""
        times, counts = self.times, self.counts
        t1 = times[self.START]
        started = counts[self.STARTED]
        first = counts[self.FIRST]
        if t1 != times[self.START] or t1 < 0 or started <= first or started == last:
            return last
        # Read after the count: the item had started by now.
        at = time.monotonic()
        times[self.STAMP] = -1.0
        counts[self.STAMPED] = started
        times[self.STAMP] = at
        return started


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
        buffer = io.BytesIO()
        try:
            # The common case, checked by the pickler itself at C speed.
            _PlainPickler(buffer, PROTOCOL).dump((BATCH, values, None, None, busy, slices))
        except Exception:
            collector = _shm.Collector(self.threshold)
            values, errors, pickled = encode_outcomes(values, collector)
            segments = collector.segments()
            body = pickle.dumps((BATCH, values, errors, pickled, busy, slices), PROTOCOL)
            _sockio.send(self.sock, body, [segment.fd for segment in segments])
            for segment in segments:
                segment.close()  # the descriptor in flight keeps it alive
        else:
            _sockio.send(self.sock, buffer.getbuffer())
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
        poller = select.poll()
        poller.register(self.wake_r, select.POLLIN)
        pidfd: int | None = None
        try:
            pidfd = os.pidfd_open(owner)
            poller.register(pidfd, select.POLLIN)
        except ProcessLookupError:
            os._exit(0)
        except (AttributeError, OSError):
            pidfd = None
        counts = self.beacon.counts
        stamped = last_count = -1
        delay = STAMP_SECONDS
        while True:
            self.dozing = delay > STAMP_SECONDS
            try:
                events = poller.poll(delay * 1000)
                self.dozing = False
                if os.getppid() != parent or _gone(owner, pidfd):
                    os._exit(0)
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
                if time.monotonic() - self.last_flush >= FLUSH_SECONDS and self.lock.acquire(
                    blocking=False
                ):
                    try:
                        self.flush(concurrent=True)
                    except BaseException:
                        pass
                    finally:
                        self.lock.release()
            delay = STAMP_SECONDS if active else min(2 * delay, QUIET_SECONDS)

    def forked_by_task(self) -> None:
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
        functions: dict[int, Callable[..., Any]] = {}
        started = 0
        inbox = Inbox()
        frames: list[Frame] = []
        mappings = _shm.MappingCache()
        while True:
            if not frames and not _sockio.receive(self.sock, inbox, frames):
                return
            body, fds = frames.pop(0)
            if not body:
                return
            if body.startswith(RELEASE):
                # Its function too: one bound to a large array holds a mapping.
                over = int(body[len(RELEASE) :])
                functions.pop(over, None)
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
        times, counts, out, lock = self.beacon.times, self.beacon.counts, self.out, self.lock
        start_slot, started_slot, first_slot = Beacon.START, Beacon.STARTED, Beacon.FIRST
        monotonic = time.monotonic
        total = len(chunk)
        pos = 0
        size = 1
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
                if self.is_copy:
                    os._exit(0)
                # The items before the raising one keep their outcomes; the
                # rest of the slice runs in the next turn.
                append(_Failed(encode_error(exc)))
                failed = True
            if self.is_copy:
                os._exit(0)
            times[start_slot] = -1.0
            t1 = monotonic()
            started += len(done)  # the items run, and the one that raised
            pos += len(done)
            if t1 - t0 < SLICE_SECONDS:
                size = min(size * 2, MAX_SLICE)
            elif size > 1:
                size //= 2
            with lock:
                out.extend(done)
                self.busy += t1 - t0
                self.slices.append((t0, t1, len(done)))
                if failed or t1 - self.last_flush >= FLUSH_SECONDS:
                    self.flush()
                elif pos < total:
                    # Outcomes wait for the next slice: if it runs long, the
                    # watch thread must send them.
                    self.nudge()
        return started

    @staticmethod
    def _function(
        functions: dict[int, Callable[..., Any]],
        job_id: int,
        function: tuple[bytes, tuple[_shm.BufferRef, ...], int] | None,
        maps: list[Any],
        preload: Callable[..., Any] | None,
    ) -> Callable[..., Any]:
        if function is not None:
            fn: Callable[..., Any]
            try:
                fn = _shm.loads(function[0], function[1], maps)
            except BaseException as exc:
                fn = _raiser(exc)
            # A decorated function runs its original function here.
            fn = getattr(fn, "__parmap_inline__", fn)
            if len(functions) >= FUNCTION_CACHE:
                functions.pop(next(iter(functions)))
            functions[job_id] = fn
            return fn
        known = functions.get(job_id) or preload
        if known is not None:
            return known
        return _raiser(RuntimeError("parmap: the function of this map never reached the worker"))


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
    _lead_own_group()
    if die_with_parent:
        _set_parent_death_signal(parent)
    if owner != parent:
        _watch_owner_from_a_process(owner)
    sock.setblocking(True)
    if ignore:
        ignore_signals()
    else:
        # Python's own Ctrl-C handler, not whatever the parent had in place
        # while it forked us (it defers SIGINT then, see ``_sigmask``).
        signal.signal(signal.SIGINT, signal.default_int_handler)
    # The parent holds SIGINT back while it forks us (see ProcessBackend.spawn).
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
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


def _lead_own_group() -> None:
    # The worker and whatever its task starts form one process group, so that
    # killing the worker for a timeout stops its task's children too.
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)


def _set_parent_death_signal(parent: int) -> None:
    if not sys.platform.startswith("linux"):
        return  # elsewhere the watch thread notices, once it gets the GIL
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before the request took effect
        os._exit(0)


def _watch_owner_from_a_process(owner: int) -> None:
    """Under forkserver: a tiny process that kills this worker when the owner dies.

    The kernel's parent-death signal follows the forkserver, which lives as
    long as its children do, and the watch thread cannot run while a task
    holds the GIL in one long C call. A forked watchdog blocks on the
    owner's pidfd instead, and dies with the worker (Linux only).
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        pidfd = os.pidfd_open(owner)
    except ProcessLookupError:
        os._exit(0)
    except (AttributeError, OSError):
        return
    worker = os.getpid()
    if os.fork() == 0:  # the watchdog: still single-threaded here, so safe
        try:
            # Hold nothing of the worker's (its socket, its sentinel).
            os.closerange(3, pidfd)
            os.closerange(pidfd + 1, 1 << 16)
            _set_parent_death_signal(worker)
            poller = select.poll()
            poller.register(pidfd, select.POLLIN)
            while not poller.poll():
                pass
            os.killpg(worker, signal.SIGKILL)
        finally:
            os._exit(0)
    os.close(pidfd)


def _gone(pid: int, pidfd: int | None) -> bool:
    """Whether process ``pid`` has exited (its pidfd is readable then)."""
    if pidfd is not None:
        return bool(select.select([pidfd], [], [], 0)[0])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


# ------------------------------------------------------- chunks run elsewhere
# An executor's or dask's worker runs a chunk as one call in a process or
# thread that parmap does not own: no pipe and no beacon, so the outcomes come
# back together as the call's return value. The rules are the worker loop's:
# every exception is caught and made safe to send, and every result that is
# not a plain value is pickled on its own, so one bad item fails only itself.

Batch = tuple[list[Any], dict[int, ErrorPayload] | None, list[int] | None, float]
"""The body of a ``BATCH`` message: values, error payloads by position, the
positions of values pickled on their own, and the seconds spent running."""

_LOADED: dict[bytes, Callable[..., Any]] = {}
_LOADED_LOCK = threading.Lock()


def encode_outcomes(
    values: list[Any], collector: _shm.Collector | None = None
) -> tuple[list[Any], dict[int, ErrorPayload] | None, list[int] | None]:
    """Make outcomes safe to send: ``_Failed`` markers become error payloads,
    values that are not plain are pickled one by one (in place), each as
    ``(stream, refs)`` with its large buffers in ``collector``'s segment."""
    errors: dict[int, ErrorPayload] | None = None
    pickled: list[int] | None = None
    for i, value in enumerate(values):
        kind = type(value)
        if kind in _SIMPLE:
            continue
        if kind is _Failed:
            errors = errors or {}
            errors[i] = value.payload
            values[i] = None
            continue
        try:
            if collector is None:
                values[i] = (pickle.dumps(value, PROTOCOL), ())
            else:
                values[i] = collector.dumps(value)
        except BaseException as exc:
            error = pickle.PicklingError(
                f"the result could not be pickled ({type(exc).__name__}: {exc})"
            )
            errors = errors or {}
            errors[i] = encode_error(error)
            values[i] = None
        else:
            pickled = pickled or []
            pickled.append(i)
    return values, errors, pickled


def load_function(payload: bytes) -> Callable[..., Any]:
    """Unpickle a map's function (cached: every chunk carries it again).

    A function that cannot be unpickled becomes one that raises why, so each
    item fails with the reason instead of the whole chunk.
    """
    with _LOADED_LOCK:
        known = _LOADED.get(payload)
    if known is not None:
        return known
    try:
        loaded = pickle.loads(payload)
    except BaseException as exc:
        return _raiser(exc)
    fn: Callable[..., Any] = getattr(loaded, "__parmap_inline__", loaded)
    with _LOADED_LOCK:
        if len(_LOADED) >= 16:
            _LOADED.pop(next(iter(_LOADED)))
        _LOADED[payload] = fn
    return fn


def run_chunk(data: bytes) -> Batch:
    """Run a pickled chunk right here and return its outcomes as a ``Batch``.

    ``data`` pickles ``(function_payload, star, [args, ...])``. An executor's
    or dask's worker calls this; it never raises for an item, only when
    ``data`` itself cannot be unpickled.
    """
    payload, star, chunk = pickle.loads(data)
    fn = load_function(payload)
    monotonic = time.monotonic
    values: list[Any] = []
    busy = 0.0
    for args in chunk:
        t0 = monotonic()
        try:
            value = fn(*args) if star else fn(args)
        except BaseException as exc:
            value = _Failed(encode_error(exc))
        busy += monotonic() - t0
        values.append(value)
    values, errors, pickled = encode_outcomes(values)
    return values, errors, pickled, busy


def _without_frames(exc: BaseException) -> BaseException:
    """Drop tracebacks that unpickling made up (``tblib``, which dask installs).

    Their frames are chained to the frames that unpickled them, which pin
    whatever those held (a dask future, and so its task on the cluster) for
    as long as the error is kept. The remote traceback stays, as text, in
    ``__cause__``. Set through ``object.__setattr__``: a frozen dataclass
    exception refuses ``exc.__traceback__ = None``.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        with contextlib.suppress(Exception):
            object.__setattr__(current, "__traceback__", None)
        context = current.__context__
        current = context if isinstance(context, BaseException) else None
    return exc


def decode_batch(
    values: list[Any],
    errors: dict[int, ErrorPayload] | None,
    pickled: list[int] | None,
    maps: Sequence[Any] = (),
) -> tuple[list[Any], dict[int, BaseException] | None]:
    """The parent's half of a ``Batch``: rebuild the errors, unpickle the values.

    ``maps`` are the batch's shared-memory segments, mapped. A value that
    cannot be unpickled here fails its own item with ``pickle.UnpicklingError``
    (also when its ``__reduce__`` raises ``SystemExit``: that must fail the
    item, not end the caller's program).
    """
    rebuilt: dict[int, BaseException] | None = None
    if errors:
        rebuilt = {pos: _without_frames(rebuild_error(payload)) for pos, payload in errors.items()}
    for pos in pickled or ():
        try:
            data, refs = values[pos]
            values[pos] = _shm.loads(data, refs, maps)
        except (Exception, SystemExit) as exc:
            values[pos] = None
            error = pickle.UnpicklingError(
                f"the result could not be unpickled in the parent ({type(exc).__name__}: {exc})"
            )
            error.__cause__ = exc
            rebuilt = rebuilt or {}
            rebuilt[pos] = error
    return values, rebuilt
