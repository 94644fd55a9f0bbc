"""A worker's mappings of large segments, kept from one chunk to the next.

A broadcast buffer (see ``_shm.Broadcast``) received again is then not
mapped and faulted in afresh for every chunk; a mapping that a task wrote to
is never handed to a later chunk (see ``written``).
"""

from __future__ import annotations

import ctypes
import mmap
import os
from collections.abc import Sequence

from ._shm import AVAILABLE, PROT, map_fd

#: Segments at least this large stay mapped in a worker between chunks
#: (``MappingCache``); smaller ones cost less to map again than to check.
CACHE_MIN_SIZE = 4 << 20

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
        mapping = mmap.mmap(fd, 2 * mmap.PAGESIZE, flags=mmap.MAP_PRIVATE, prot=PROT)
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
        """Like ``_shm.map_segments``, reusing unwritten mappings of the last chunk."""
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
                    maps.append(map_fd(fd, size))
                    continue
                key = (st.st_dev, st.st_ino, size)
                mapping = kept.get(key)
                if mapping is None:
                    mapping = self._entries.get(key)
                    if mapping is not None and written(mapping) is not False:
                        mapping = None
                if mapping is None:
                    fresh = map_fd(fd, size)
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
