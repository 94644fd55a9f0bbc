"""Framing on a worker's socket, without I/O: messages in, bytes out, and back.

A *frame* is a 12-byte header (body length, number of descriptors) and the
body. Descriptors (shared-memory segments, see ``_shm``) travel beside the
bytes as ``SCM_RIGHTS`` ancillary data, attached to the write that carries
the first byte of their frame; a receiver therefore always holds a frame's
descriptors by the time it has the frame's header.

``Outbox`` queues frames and tells the caller what to write next, so a
writer that may not block (the parent) writes whatever the socket accepts
and comes back when it is writable again, while it goes on reading. That is
what keeps a worker that is busy writing results and a parent that has more
chunks to send from waiting on each other forever. ``Inbox`` takes bytes as
they arrive and returns whole frames; it hands out the buffer to read into,
so that a large body is read straight into its final place.

Nothing here touches a descriptor: the drivers move bytes when the socket
is ready (``_sockio``).
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

HEADER = struct.Struct("<QI")
#: Above this, a body is read straight into a buffer of its own size.
LARGE_BODY = 1 << 16
#: What one read takes at most into the shared scratch buffer.
READ_CHUNK = 1 << 18
#: What one write offers the kernel at most.
WRITE_CHUNK = 1 << 22
#: Descriptors one frame may carry: a map's function and arguments refer to
#: a bounded number of segments (see ``_shm``).
MAX_FDS = 64

Frame = tuple[bytes | bytearray, list[int]]
"""A received message: its body and the descriptors that came with it."""


@dataclass(frozen=True, slots=True)
class Encoded:
    """A chunk ready to send: its body, the segments whose descriptors go with
    it, and what its arguments weigh (stream and buffers), which sizes chunks."""

    body: bytes
    segments: tuple[Any, ...]
    nbytes: int


@dataclass(slots=True)
class _Out:
    header: bytes
    body: memoryview
    fds: list[int]
    keep: object  # what owns ``fds`` (segments), kept alive until they are sent
    sent: int = 0  # bytes of header + body written so far

    @property
    def size(self) -> int:
        return len(self.header) + self.body.nbytes


@dataclass(slots=True)
class Outbox:
    """Frames waiting to be written, oldest first."""

    pending: int = 0  # bytes not yet written
    _queue: deque[_Out] = field(default_factory=deque)

    def put(
        self, body: bytes | bytearray | memoryview, fds: Sequence[int] = (), keep: object = None
    ) -> None:
        """Queue a frame; ``keep`` is held until its descriptors have been written."""
        if len(fds) > MAX_FDS:
            raise ValueError(f"a frame carries at most {MAX_FDS} descriptors, got {len(fds)}")
        view = memoryview(body).cast("B") if not isinstance(body, bytes) else memoryview(body)
        out = _Out(HEADER.pack(view.nbytes, len(fds)), view, list(fds), keep)
        self._queue.append(out)
        self.pending += out.size

    def __bool__(self) -> bool:
        return bool(self._queue)

    def next_write(self) -> tuple[list[memoryview], list[int]]:
        """What to write next: buffers and the descriptors to attach to them.

        A write never runs past the start of a later frame that carries
        descriptors, so that each frame's descriptors ride with its own bytes.
        """
        buffers: list[memoryview] = []
        fds: list[int] = []
        budget = WRITE_CHUNK
        for i, out in enumerate(self._queue):
            if i and out.fds:
                break
            if i == 0 and out.sent == 0:
                fds = out.fds
            header_left = len(out.header) - out.sent
            if header_left > 0:
                buffers.append(memoryview(out.header)[out.sent :])
                buffers.append(out.body[:budget])
            else:
                buffers.append(out.body[-header_left : -header_left + budget])
            budget -= min(budget, out.size - out.sent)
            if budget <= 0:
                break
        return buffers, fds

    def wrote(self, n: int) -> None:
        """``n`` bytes of what ``next_write`` offered were written."""
        self.pending -= n
        queue = self._queue
        while n:
            out = queue[0]
            if out.fds and out.sent == 0:
                out.fds, out.keep = [], None  # the kernel has them now
            take = min(n, out.size - out.sent)
            out.sent += take
            n -= take
            if out.sent == out.size:
                queue.popleft()

    def clear(self) -> None:
        """Drop everything unwritten (the peer is gone)."""
        self._queue.clear()
        self.pending = 0


class ProtocolError(Exception):
    """The peer sent something that is not a frame."""


class Inbox:
    """Bytes and descriptors as they arrive; whole frames out."""

    def __init__(self) -> None:
        self._scratch = bytearray(READ_CHUNK)
        self._partial = b""  # the start of a frame whose rest has not arrived
        self._body: bytearray | None = None  # a large body being filled in place
        self._filled = 0
        self._body_fds = 0
        self._fds: deque[int] = deque()

    def buffer(self) -> memoryview:
        """Where the next read should put its bytes."""
        if self._body is not None:
            return memoryview(self._body)[self._filled :]
        return memoryview(self._scratch)

    def received(self, n: int, fds: Sequence[int] = ()) -> list[Frame]:
        """``n`` bytes were read into ``buffer()``, with ``fds``; return complete frames."""
        self._fds.extend(fds)
        frames: list[Frame] = []
        if self._body is not None:
            self._filled += n
            if self._filled < len(self._body):
                return frames
            frames.append((self._body, self._take_fds(self._body_fds)))
            self._body = None
            return frames
        data: bytes | memoryview
        if self._partial:
            data = self._partial + self._scratch[:n]
            self._partial = b""
        else:
            data = memoryview(self._scratch)[:n]
        self._parse(memoryview(data), frames)
        return frames

    def _parse(self, data: memoryview, frames: list[Frame]) -> None:
        pos, end, size = 0, data.nbytes, HEADER.size
        while end - pos >= size:
            length, nfds = HEADER.unpack_from(data, pos)
            if nfds > MAX_FDS:
                raise ProtocolError(f"a frame claims {nfds} descriptors")
            start = pos + size
            if end - start >= length:
                frames.append((bytes(data[start : start + length]), self._take_fds(nfds)))
                pos = start + length
                continue
            if length >= LARGE_BODY:
                body = bytearray(length)
                have = end - start
                body[:have] = data[start:end]
                self._body, self._filled, self._body_fds = body, have, nfds
                return
            break
        if pos < end:
            self._partial = bytes(data[pos:end])

    def _take_fds(self, n: int) -> list[int]:
        if n > len(self._fds):
            raise ProtocolError(f"a frame claims {n} descriptors, {len(self._fds)} arrived")
        return [self._fds.popleft() for _ in range(n)]

    def take_stray_fds(self) -> list[int]:
        """Descriptors received but not claimed by a frame (to close them)."""
        fds = list(self._fds)
        self._fds.clear()
        return fds
