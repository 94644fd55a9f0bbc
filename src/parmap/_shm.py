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

A worker keeps its mappings of large segments (``MappingCache``) from one
chunk to the next, so that a broadcast buffer received again is not mapped
and faulted in afresh for every chunk; a mapping that a task wrote to is
never handed to a later chunk (see ``written``).

Where ``os.memfd_create`` does not exist (macOS), every buffer stays in the
pickle stream.
"""

from __future__ import annotations

import ctypes
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
#: Before Python 3.13 a mapping keeps a descriptor open (see ``_map``).
MAX_TRACKED_MAPS = 256
_PROT = mmap.PROT_READ | mmap.PROT_WRITE
#: Segments at least this large stay mapped in a worker between chunks
#: (``MappingCache``); smaller ones cost less to map again than to check.
CACHE_MIN_SIZE = 4 << 20
_live_maps: weakref.WeakSet[mmap.mmap] = weakref.WeakSet()

BufferRef = tuple[int, int, int]
"""Where an out-of-band buffer lies: (segment number in the message, offset, length)."""


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
        return len(self.data) + sum(length for _, _, length in self.refs)


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


def _as_bytearray(obj: Any) -> bytearray:
    return bytearray(obj)


class _Pickler(pickle.Pickler):
    """Sends ``bytearray`` and ``memoryview`` through buffers too.

    The C pickler writes both in-band; reducing them to a ``PickleBuffer``
    lets large ones go out of band like numpy's arrays.
    """

    def __init__(self, file: io.BytesIO, threshold: int, callback: Callable[[Any], bool]) -> None:
        super().__init__(file, PROTOCOL, buffer_callback=callback)
        self._threshold = threshold

    def reducer_override(self, obj: Any) -> Any:
        kind = type(obj)
        if kind is bytearray and len(obj) >= self._threshold:
            return _as_bytearray, (pickle.PickleBuffer(obj),)
        if kind is memoryview and obj.nbytes >= self._threshold and obj.contiguous:
            return _as_memoryview, (pickle.PickleBuffer(obj),)
        return NotImplemented


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

    def _callback(self, buffer: pickle.PickleBuffer) -> bool:
        try:
            view = buffer.raw()
        except BufferError:  # not contiguous: pickled in-band
            return True
        threshold = self._threshold
        if threshold is None or view.nbytes < threshold:
            return True
        owner = view.obj
        known = self._broadcast.find(owner, view) if self._broadcast is not None else None
        if known is not None:
            segment, offset = known
            number = self._numbers.get(id(segment))
            if number is None:
                self._reused.append(segment)
                number = self._numbers[id(segment)] = len(self._reused)
            self._refs.append((number, offset, view.nbytes))
        else:
            self._refs.append((0, self._size, view.nbytes))
            self._views.append((view, owner, self._size))
            self._size += -(-view.nbytes // ALIGN) * ALIGN
        return False

    def dumps(
        self, obj: Any, dump: Callable[..., bytes] | None = None
    ) -> tuple[bytes, tuple[BufferRef, ...]]:
        """Pickle ``obj``; ``dump`` replaces ``pickle.dumps`` (``cloudpickle.dumps``)."""
        if self._threshold is None:
            if dump is not None:
                return dump(obj, protocol=PROTOCOL), ()
            return pickle.dumps(obj, PROTOCOL), ()
        self._refs: list[BufferRef] = []
        if dump is not None:
            data = dump(obj, protocol=PROTOCOL, buffer_callback=self._callback)
        else:
            stream = io.BytesIO()
            _Pickler(stream, self._threshold, self._callback).dump(obj)
            data = stream.getvalue()
        return data, tuple(self._refs)

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


def dumps(obj: Any, threshold: int | None, *, dump: Callable[..., bytes] | None = None) -> Pickled:
    """Pickle one object, its large buffers in a segment of their own."""
    collector = Collector(threshold)
    data, refs = collector.dumps(obj, dump)
    return Pickled(data, refs, collector.segments())


def _map(fd: int, size: int) -> mmap.mmap | bytearray:
    if sys.version_info >= (3, 13):
        return mmap.mmap(
            fd, size, flags=mmap.MAP_PRIVATE, prot=_PROT, trackfd=False
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
    mapping = mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE, prot=_PROT)
    _live_maps.add(mapping)
    return mapping


def map_segments(fds: Sequence[int]) -> list[mmap.mmap | bytearray | None]:
    """Map received segments copy-on-write and close their descriptors."""
    maps: list[mmap.mmap | bytearray | None] = []
    try:
        for fd in fds:
            size = os.fstat(fd).st_size
            maps.append(_map(fd, size) if size else None)
    finally:
        for fd in fds:
            os.close(fd)
    return maps


def loads(data: bytes | memoryview, refs: Sequence[BufferRef], maps: Sequence[Any]) -> Any:
    """Unpickle what ``dumps`` made, with its segments already mapped."""
    if not refs:
        return pickle.loads(data)
    buffers = [
        memoryview(maps[number])[offset : offset + length] for number, offset, length in refs
    ]
    return pickle.loads(data, buffers=buffers)


# ------------------------------------------------- mappings kept by a worker
_PAGEMAP = "/proc/self/pagemap"
# The top byte of a page's 64-bit pagemap entry: bit 63 "present", 62
# "swapped", 61 "file page or shared anonymous". In a private mapping of a
# shmem file a page the process wrote to is a private anonymous copy:
# present without bit 61, or swapped (shmem pages that are swapped out
# leave no swap entry in a private mapping, only anonymous ones do).
_PRESENT, _SWAPPED, _FILE = 0x80, 0x40, 0x20
_UNWRITTEN = bytes(b for b in range(256) if not b & _SWAPPED and (not b & _PRESENT or b & _FILE))


def _address(mapping: mmap.mmap) -> int:
    # A ctypes view of the buffer gives its address through the buffer
    # protocol; it is released at once, so the mapping can still be closed.
    view = ctypes.c_char.from_buffer(mapping)
    try:
        return ctypes.addressof(view)
    finally:
        del view


def written(mapping: mmap.mmap) -> bool | None:
    """Whether any page of a private segment mapping was written; None if unknown.

    Reads the mapping's entries of ``/proc/self/pagemap`` (8 bytes a page,
    1 MB for 512 MB): a page written here is a private copy, no longer the
    segment's own page.
    """
    try:
        fd = os.open(_PAGEMAP, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        pages = -(-len(mapping) // mmap.PAGESIZE)
        start = _address(mapping) // mmap.PAGESIZE * 8
        entries = bytearray(pages * 8)
        view = memoryview(entries)
        done = 0
        while done < len(entries):
            n = os.preadv(fd, [view[done:]], start + done)
            if n <= 0:
                return None
            done += n
    except (OSError, ValueError):  # ValueError: the mapping was closed
        return None
    finally:
        os.close(fd)
    return bool(entries[7::8].translate(None, _UNWRITTEN))


def _check_works() -> bool:
    """Whether ``written`` tells a read page from a written one on this system."""
    if not AVAILABLE:
        return False
    try:
        fd = os.memfd_create("parmap-probe", os.MFD_CLOEXEC)
    except OSError:
        return False
    try:
        os.ftruncate(fd, 2 * mmap.PAGESIZE)
        mapping = mmap.mmap(fd, 2 * mmap.PAGESIZE, flags=mmap.MAP_PRIVATE, prot=_PROT)
    except OSError:
        return False
    finally:
        os.close(fd)
    try:
        mapping[0] + mapping[mmap.PAGESIZE]  # both pages present, neither written
        clean = written(mapping)
        mapping[mmap.PAGESIZE] = 1
        return clean is False and written(mapping) is True
    finally:
        mapping.close()


class MappingCache:
    """A worker's mappings of the large segments of its last chunk, for the next.

    A segment received again (the same memfd: same device, inode and size;
    a broadcast buffer) reuses its mapping, whose pages are already faulted
    in, as long as no task wrote to it; otherwise it is mapped afresh, so a
    chunk never sees what an earlier one wrote into its input. Only the
    segments of the last chunk are kept, and ``release`` lets go of them
    when their map is over, so no memory or descriptor outlives the map.
    Without a working write check (see ``written``) nothing is kept.
    """

    def __init__(self) -> None:
        self._entries: dict[tuple[int, int, int], mmap.mmap] = {}
        self._job: int | None = None
        self._usable: bool | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def _enabled(self) -> bool:
        if self._usable is None:
            self._usable = _check_works()
        return self._usable

    def map_segments(self, fds: Sequence[int], job_id: int) -> list[mmap.mmap | bytearray | None]:
        """Like ``map_segments``, reusing unwritten mappings of the last chunk."""
        maps: list[mmap.mmap | bytearray | None] = []
        kept: dict[tuple[int, int, int], mmap.mmap] = {}
        try:
            for fd in fds:
                st = os.fstat(fd)
                size = st.st_size
                if not size:
                    maps.append(None)
                    continue
                if size < CACHE_MIN_SIZE or not self._enabled():
                    maps.append(_map(fd, size))
                    continue
                key = (st.st_dev, st.st_ino, size)
                mapping = kept.get(key)
                if mapping is None:
                    mapping = self._entries.get(key)
                    if mapping is not None and written(mapping) is not False:
                        mapping = None
                if mapping is None:
                    fresh = _map(fd, size)
                    if not isinstance(fresh, mmap.mmap):
                        maps.append(fresh)
                        continue
                    mapping = fresh
                kept[key] = mapping
                maps.append(mapping)
        finally:
            for fd in fds:
                os.close(fd)
        # The mappings of the chunks before are dropped here (those that
        # objects still use stay alive with them).
        self._entries = kept
        self._job = job_id
        return maps

    def release(self, job_id: int | None = None) -> None:
        """Let go of the kept mappings (of map ``job_id`` only, if given)."""
        if job_id is None or job_id == self._job:
            self._entries = {}
            self._job = None
