"""Large buffers out of band: pickle protocol 5 with buffers in memfd segments.

``dumps`` pickles an object and hands every buffer of at least ``threshold``
bytes (numpy arrays, ``bytearray``, ``memoryview``, ``pickle.PickleBuffer``,
and whatever exposes its data through them) to a *segment* instead of the
pickle stream. A segment is an anonymous ``memfd_create`` file: it has no
name, so nothing can leak when a process is SIGKILLed, and it does not live
in ``/dev/shm``, so a small ``/dev/shm`` does not matter. Its descriptor
travels over the worker's socket (``SCM_RIGHTS``); the receiver maps it
copy-on-write and rebuilds the object around the mapping, so a numpy array
arrives without a copy and may still be written to without touching anyone
else's data.

All buffers of one message share one new segment; a buffer that an earlier
message of the same map already sent (``Broadcast``) is referred to in its
old segment instead of being copied again.

A worker keeps its mappings of large segments from one chunk to the next
(``_shm_cache``).

Where ``os.memfd_create`` does not exist (macOS), every buffer stays in the
pickle stream.
"""

from __future__ import annotations

import io
import mmap
import os
import pickle
import sys
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

PROTOCOL = 5
DEFAULT_THRESHOLD = 1 << 20
#: Offsets of buffers inside a segment are aligned like this (SIMD loads).
ALIGN = 64
#: Buffers a map remembers having sent, to send them once (see ``Broadcast``).
BROADCAST_ENTRIES = 8
#: The size of each of the three windows compared before a remembered
#: buffer is sent again by reference (a cheap guard against an object that
#: was changed in place between two chunks).
_PROBE = 4096

AVAILABLE = hasattr(os, "memfd_create")
#: Before Python 3.13 a mapping keeps a descriptor open (see ``map_fd``).
MAX_TRACKED_MAPS = 256
PROT = mmap.PROT_READ | mmap.PROT_WRITE
_live_maps: weakref.WeakSet[mmap.mmap] = weakref.WeakSet()

BufferRef = tuple[int, int, int, bool]
"""Where an out-of-band buffer lies: (segment number in the message, offset,
length, whether the receiver rebuilds a ``bytearray`` from it)."""

_BYTEARRAY8 = b"\x96"
_NEXT_BUFFER = b"\x97"
_HEADER = 9  # BYTEARRAY8 and its 8-byte length


class Segment:
    """An anonymous shared-memory file that owns its descriptor."""

    __slots__ = ("__weakref__", "fd", "size")

    def __init__(self, size: int) -> None:
        self.fd = os.memfd_create("parmap", os.MFD_CLOEXEC)
        self.size = size
        try:
            os.ftruncate(self.fd, size)
        except BaseException:
            self.close()
            raise
        _open_segments.add(self)

    def write(self, offset: int, data: memoryview) -> None:
        """Copy ``data`` into the segment at ``offset``."""
        view = data.cast("B") if data.format != "B" or data.ndim != 1 else data
        while view.nbytes:
            written = os.pwrite(self.fd, view, offset)
            offset += written
            view = view[written:]

    def close(self) -> None:
        """Close the descriptor (idempotent); mappings made from it stay valid."""
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def __del__(self) -> None:
        self.close()


_open_segments: weakref.WeakSet[Segment] = weakref.WeakSet()


def _close_inherited() -> None:
    # A forked child holds copies of the parent's segment descriptors, which
    # would keep the parent's buffers alive for as long as the child lives.
    for segment in list(_open_segments):
        segment.close()


if AVAILABLE:
    os.register_at_fork(after_in_child=_close_inherited)


@dataclass(frozen=True, slots=True)
class Pickled:
    """A pickle stream and the out-of-band buffers it refers to."""

    data: bytes
    refs: tuple[BufferRef, ...] = ()
    segments: tuple[Segment, ...] = ()

    @property
    def nbytes(self) -> int:
        """What the object weighs in transit: the stream and its buffers."""
        return len(self.data) + sum(ref[2] for ref in self.refs)


class Broadcast:
    """Buffers a map already sent out of band, so that each is copied once.

    An entry keeps its buffer's owner alive (so that its ``id`` cannot be
    reused) and three small windows of its bytes; a buffer whose windows
    changed is sent again. Only the last ``BROADCAST_ENTRIES`` are kept.
    """

    def __init__(self) -> None:
        self._entries: OrderedDict[tuple[int, int], tuple[Any, bytes, Segment, int]] = OrderedDict()

    @staticmethod
    def _probe(view: memoryview) -> bytes:
        n = view.nbytes
        mid = n // 2
        return b"".join(
            (view[:_PROBE].tobytes(), view[mid : mid + _PROBE].tobytes(), view[-_PROBE:].tobytes())
        )

    def find(self, owner: Any, view: memoryview) -> tuple[Segment, int] | None:
        """The segment and offset where ``view`` was sent before, if unchanged."""
        entry = self._entries.get((id(owner), view.nbytes))
        if entry is None or entry[0] is not owner or entry[1] != self._probe(view):
            return None
        self._entries.move_to_end((id(owner), view.nbytes))
        return entry[2], entry[3]

    def remember(self, owner: Any, view: memoryview, segment: Segment, offset: int) -> None:
        """Note that ``view`` of ``owner`` now lies in ``segment`` at ``offset``."""
        self._entries[(id(owner), view.nbytes)] = (owner, self._probe(view), segment, offset)
        while len(self._entries) > BROADCAST_ENTRIES:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        """Forget everything (the map is over)."""
        self._entries.clear()


def _as_memoryview(obj: Any) -> memoryview:
    return memoryview(obj)


class _Pickler(pickle.Pickler):
    """Sends ``memoryview`` through buffers too.

    The C pickler cannot pickle a memoryview; reducing it to a
    ``PickleBuffer`` lets a large one go out of band like numpy's arrays.
    """

    def __init__(self, file: io.BytesIO, threshold: int, callback: Callable[[Any], bool]) -> None:
        super().__init__(file, PROTOCOL, buffer_callback=callback)
        self._threshold = threshold

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is memoryview and obj.nbytes >= self._threshold and obj.contiguous:
            return _as_memoryview, (pickle.PickleBuffer(obj),)
        return NotImplemented


class Stream(io.BytesIO):
    """A pickler's file that hands large ``bytearray`` objects to ``place``.

    The C pickler writes a ``bytearray`` itself: it never offers one to
    ``buffer_callback`` or ``reducer_override``. But it writes the bytes of a
    large one (64 KiB and up) to its file in a ``write`` call of their own,
    right after the 9-byte ``BYTEARRAY8`` header. ``place`` takes those
    bytes, the header becomes ``NEXT_BUFFER``, and the receiver gets the
    buffer back as a ``bytearray`` (``loads``). A pickler that wrote
    differently would leave the bytes in the stream, which is still right.
    """

    def __init__(self, threshold: int, place: Callable[[bytearray], None]) -> None:
        super().__init__()
        self._threshold = threshold
        self._place = place
        self._tail = b""

    def write(self, data: Any, /) -> int:
        if (
            type(data) is bytearray
            and len(data) >= self._threshold
            and self._tail == _BYTEARRAY8 + len(data).to_bytes(8, "little")
        ):
            self._place(data)
            self.seek(-_HEADER, io.SEEK_END)
            self.truncate()
            self._tail = b""
            return super().write(_NEXT_BUFFER)
        # A header comes in the pickler's own bytes, never in a payload.
        self._tail = data[-_HEADER:] if type(data) is bytes else b""
        return super().write(data)


class Collector:
    """Pickles objects whose large buffers go out of band, into one new segment.

    Every ``dumps`` returns a stream and the references of its buffers;
    ``segments`` then writes the new segment and returns the segments the
    references point into: the new one first, then those that ``broadcast``
    said already hold some of the buffers.
    """

    def __init__(self, threshold: int | None, broadcast: Broadcast | None = None) -> None:
        self._threshold = threshold if AVAILABLE else None
        self._broadcast = broadcast
        self._views: list[tuple[memoryview, Any, int]] = []  # view, owner, offset
        self._size = 0
        self._reused: list[Segment] = []
        self._numbers: dict[int, int] = {}  # id(reused segment) -> its number

    def _place(self, view: memoryview, as_bytearray: bool) -> None:
        owner = view.obj
        known = self._broadcast.find(owner, view) if self._broadcast is not None else None
        if known is not None:
            segment, offset = known
            number = self._numbers.get(id(segment))
            if number is None:
                self._reused.append(segment)
                number = self._numbers[id(segment)] = len(self._reused)
            self._refs.append((number, offset, view.nbytes, as_bytearray))
        else:
            self._refs.append((0, self._size, view.nbytes, as_bytearray))
            self._views.append((view, owner, self._size))
            self._size += -(-view.nbytes // ALIGN) * ALIGN

    def _callback(self, buffer: pickle.PickleBuffer) -> bool:
        try:
            view = buffer.raw()
        except BufferError:  # not contiguous: pickled in-band
            return True
        threshold = self._threshold
        if threshold is None or view.nbytes < threshold:
            return True
        self._place(view, False)
        return False

    def _place_bytearray(self, data: bytearray) -> None:
        self._place(memoryview(data), True)

    def dumps(
        self, obj: Any, pickler: type[pickle.Pickler] | None = None
    ) -> tuple[bytes, tuple[BufferRef, ...]]:
        """Pickle ``obj``; ``pickler`` replaces the default (``cloudpickle.Pickler``)."""
        threshold = self._threshold
        if threshold is None:
            if pickler is None:
                return pickle.dumps(obj, PROTOCOL), ()
            plain = io.BytesIO()
            pickler(plain, PROTOCOL).dump(obj)
            return plain.getvalue(), ()
        self._refs: list[BufferRef] = []
        stream = Stream(threshold, self._place_bytearray)
        if pickler is not None:
            pickler(stream, PROTOCOL, buffer_callback=self._callback).dump(obj)
        else:
            _Pickler(stream, threshold, self._callback).dump(obj)
        return stream.getvalue(), tuple(self._refs)

    def segments(self) -> tuple[Segment, ...]:
        """Write the new segment; return it and the reused ones, in reference order."""
        if not self._views and not self._reused:
            return ()
        fresh = Segment(self._size)
        for view, owner, offset in self._views:
            fresh.write(offset, view)
            if self._broadcast is not None:
                self._broadcast.remember(owner, view, fresh, offset)
        self._views.clear()
        return (fresh, *self._reused)


def dumps(
    obj: Any, threshold: int | None, *, pickler: type[pickle.Pickler] | None = None
) -> Pickled:
    """Pickle one object, its large buffers in a segment of their own."""
    collector = Collector(threshold)
    data, refs = collector.dumps(obj, pickler)
    return Pickled(data, refs, collector.segments())


def map_fd(fd: int, size: int) -> mmap.mmap | bytearray:
    if sys.version_info >= (3, 13):
        return mmap.mmap(
            fd, size, flags=mmap.MAP_PRIVATE, prot=PROT, trackfd=False
        )  # pragma: no cover - Python 3.13+
    if len(_live_maps) >= MAX_TRACKED_MAPS:
        # Before 3.13 every mapping holds a duplicate of its descriptor: past
        # this many, copy instead of mapping, so that keeping thousands of
        # results cannot exhaust the process's descriptors.
        data = bytearray(size)
        view = memoryview(data)
        done = 0
        while done < size:
            done += os.preadv(fd, [view[done:]], done)
        return data
    mapping = mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE, prot=PROT)
    _live_maps.add(mapping)
    return mapping


def map_segments(fds: Sequence[int]) -> list[mmap.mmap | bytearray | None]:
    """Map received segments copy-on-write and close their descriptors."""
    maps: list[mmap.mmap | bytearray | None] = []
    try:
        for fd in fds:
            size = os.fstat(fd).st_size
            maps.append(map_fd(fd, size) if size else None)
    finally:
        for fd in fds:
            os.close(fd)
    return maps


def loads(data: bytes | memoryview, refs: Sequence[BufferRef], maps: Sequence[Any]) -> Any:
    """Unpickle what ``dumps`` made, with its segments already mapped."""
    if not refs:
        return pickle.loads(data)
    buffers: list[memoryview | bytearray] = []
    for number, offset, length, as_bytearray in refs:
        view = memoryview(maps[number])[offset : offset + length]
        # A bytearray cannot wrap a mapping: this is its one copy.
        buffers.append(bytearray(view) if as_bytearray else view)
    return pickle.loads(data, buffers=buffers)
