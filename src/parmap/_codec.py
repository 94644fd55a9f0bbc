"""What crosses between the parent and a worker, without I/O: tags, outcomes, errors.

Every backend whose items run in another process speaks this: the process
backend over its worker's socket (framed by ``_wire``, see
``_backends.process_worker``), an executor's or dask's worker as one call's
argument and return value (``run_chunk``). The parent decodes results in one
place (``decode_batch``), whichever backend brought them.

An outcome is a plain value, a value pickled on its own (``(stream, refs)``,
its large buffers in shared memory, see ``_shm``) or an error payload
(``encode_error``): one bad item fails only itself, never the batch.

On a process worker's socket each body is one pickled tuple:

* parent → worker: ``(job_id, function, star, timed, threshold, args,
  arg_refs)``, a chunk. ``function`` is ``None`` or ``(stream, refs,
  segments)``, sent once per job and cached (``FUNCTION_CACHE``); its
  ``segments`` first descriptors are its own, the rest belong to the
  arguments. ``timed`` says the map has a timeout (the worker then dates its
  items); ``threshold`` is the map's ``shared_memory_threshold`` for
  results. The arguments are pickled on their own. An empty body means stop;
  ``RELEASE`` followed by a job id says that map is over (the worker lets go
  of its function and of the segment mappings it kept for the map's next
  chunk, ``_shm_cache.MappingCache``).
* worker → parent: ``(READY,)`` once started; ``(INIT_FAILED, error)`` if the
  initializer raised; ``(UNDECODABLE, error)`` for a chunk it could not
  unpickle; ``(BATCH, values, errors, pickled, busy, slices)`` with the next
  outcomes of the current chunk, in order (``encode_batch``; values at the
  positions in ``pickled`` are ``(stream, refs)`` into the frame's segments;
  ``slices`` are ``(t0, t1, count)`` of the slices that ran them, for
  ``MapStats``).
"""

from __future__ import annotations

import contextlib
import copyreg
import io
import pickle
import threading
import time
import traceback
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Generic, NoReturn, TypeVar

from . import _shm
from ._results import ErrorPayload, rebuild_error

K = TypeVar("K", bound=Hashable)
E = TypeVar("E", bound=BaseException)

READY, BATCH, INIT_FAILED, UNDECODABLE = 0, 1, 2, 3
PROTOCOL = 5
#: The body of "map ``job_id`` is over" starts with this (a pickle never does).
RELEASE = b"release "
#: How many pickled functions an executor's or dask's worker keeps, by their
#: pickle: each chunk carries its function's pickle, which may be large.
PAYLOAD_CACHE = 16
_SIMPLE = frozenset({int, float, str, bytes, bool, type(None), complex})


# --------------------------------------------------------------- errors


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
        drop_tracebacks(exc)
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


def drop_tracebacks(exc: E) -> E:
    """Clear the tracebacks of ``exc``, of its causes and contexts, and of a group's members.

    A worker does this before pickling an error (its text has the traceback
    already), the parent after unpickling one: tracebacks that unpickling
    made up (``tblib``, which dask installs) are chained to the frames that
    unpickled them, which would pin whatever those held (a dask future, and
    so its task on the cluster) for as long as the error is kept.

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
    return exc


# ------------------------------------------------------------- outcomes


class NotPlain(Exception):
    pass


class PlainPickler(pickle.Pickler):
    """Pickles only values that cannot fail to unpickle in the parent.

    The C pickler writes ``None``, ``bool``, ``int``, ``float``, ``str``,
    ``bytes`` and lists, tuples, dicts and sets of them itself; anything else
    reaches ``reducer_override``, which gives up, and the batch is encoded
    value by value instead (``encode_outcomes``), so that one bad value fails
    only its own item.
    """

    def reducer_override(self, obj: Any) -> Any:
        raise NotPlain


def _not_plain(data: bytearray) -> NoReturn:
    raise NotPlain


class Failed:
    """Marks an outcome slot that holds an error instead of a value."""

    __slots__ = ("payload",)

    def __init__(self, payload: ErrorPayload) -> None:
        self.payload = payload


def encode_outcomes(
    values: list[Any], collector: _shm.Collector | None = None
) -> tuple[list[Any], dict[int, ErrorPayload] | None, list[int] | None]:
    """Make outcomes safe to send: ``Failed`` markers become error payloads,
    values that are not plain are pickled one by one (in place), each as
    ``(stream, refs)`` with its large buffers in ``collector``'s segment."""
    errors: dict[int, ErrorPayload] | None = None
    pickled: list[int] | None = None
    for i, value in enumerate(values):
        kind = type(value)
        if kind in _SIMPLE:
            continue
        if kind is Failed:
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


def encode_batch(
    values: list[Any], busy: float, slices: list[tuple[float, float, int]], threshold: int | None
) -> tuple[bytes | memoryview, tuple[_shm.Segment, ...]]:
    """A process worker's ``BATCH`` message of ``values`` (taken over), and its segments.

    Large buffers of at least ``threshold`` bytes go to one new segment,
    whose descriptor the caller sends with the body and then closes.
    """
    # A large bytearray is plain, but must go out of band: met, it sends the
    # batch down the slow path like a value that is not plain.
    buffer = io.BytesIO() if threshold is None else _shm.Stream(threshold, _not_plain)
    try:
        # The common case, checked by the pickler itself at C speed.
        PlainPickler(buffer, PROTOCOL).dump((BATCH, values, None, None, busy, slices))
    except Exception:
        collector = _shm.Collector(threshold)
        values, errors, pickled = encode_outcomes(values, collector)
        segments = collector.segments()
        return pickle.dumps((BATCH, values, errors, pickled, busy, slices), PROTOCOL), segments
    return buffer.getbuffer(), ()


Batch = tuple[list[Any], dict[int, ErrorPayload] | None, list[int] | None, float]
"""The body of a ``BATCH`` message: values, error payloads by position, the
positions of values pickled on their own, and the seconds spent running."""


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
        rebuilt = {pos: drop_tracebacks(rebuild_error(payload)) for pos, payload in errors.items()}
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


# ------------------------------------------------------------ functions


def raiser(exc: BaseException) -> Callable[..., Any]:
    """A function that raises ``exc``: a map's function that could not be loaded."""

    def fail(*args: Any) -> Any:
        raise exc

    return fail


class FunctionCache(Generic[K]):
    """The functions of the last ``size`` keys, the oldest forgotten first.

    First in, first out (not least recently used), because the scheduler
    mirrors a process worker's cache (``FUNCTION_CACHE``) and must know which
    function the worker forgot. Safe to share between threads.
    """

    __slots__ = ("_functions", "_lock", "_size")

    def __init__(self, size: int) -> None:
        self._functions: dict[K, Callable[..., Any]] = {}
        self._lock = threading.Lock()
        self._size = size

    def __len__(self) -> int:
        return len(self._functions)

    def get(self, key: K) -> Callable[..., Any] | None:
        """The function stored under ``key``, or None."""
        with self._lock:
            return self._functions.get(key)

    def put(self, key: K, fn: Callable[..., Any]) -> None:
        """Store ``fn`` under ``key``, forgetting the oldest beyond ``size``."""
        with self._lock:
            if len(self._functions) >= self._size:
                self._functions.pop(next(iter(self._functions)))
            self._functions[key] = fn

    def forget(self, key: K) -> None:
        """Let go of the function under ``key`` (its map is over)."""
        with self._lock:
            self._functions.pop(key, None)


_LOADED: FunctionCache[bytes] = FunctionCache(PAYLOAD_CACHE)


def load_function(payload: bytes) -> Callable[..., Any]:
    """Unpickle a map's function (cached: every chunk carries it again).

    A function that cannot be unpickled becomes one that raises why, so each
    item fails with the reason instead of the whole chunk.
    """
    known = _LOADED.get(payload)
    if known is not None:
        return known
    try:
        loaded = pickle.loads(payload)
    except BaseException as exc:
        return raiser(exc)
    fn: Callable[..., Any] = getattr(loaded, "__parmap_inline__", loaded)
    _LOADED.put(payload, fn)
    return fn


# ------------------------------------------------- chunks run elsewhere
# An executor's or dask's worker runs a chunk as one call in a process or
# thread that parmap does not own: no pipe and no beacon, so the outcomes come
# back together as the call's return value. The rules are the worker loop's:
# every exception is caught and made safe to send, and every result that is
# not a plain value is pickled on its own, so one bad item fails only itself.


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
            value = Failed(encode_error(exc))
        busy += monotonic() - t0
        values.append(value)
    values, errors, pickled = encode_outcomes(values)
    return values, errors, pickled, busy
