"""Moving frames over a worker's socket: the few calls that touch descriptors.

The parent's side never blocks (``write_ready``, ``read_ready``: do what the
socket allows now, report the rest); the worker's side blocks (``send``,
``receive``), which is safe because the parent always reads.
"""

from __future__ import annotations

import array
import contextlib
import os
import socket
from collections.abc import Sequence

from ._wire import HEADER, MAX_FDS, Frame, Inbox, Outbox, ProtocolError

_ANC_SPACE = socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)
#: What one ``read_ready`` call takes at most, so that one busy worker
#: cannot keep the parent from the others (the socket stays readable).
READ_BUDGET = 1 << 23


def _rights(fds: Sequence[int]) -> list[tuple[int, int, bytes]]:
    if not fds:
        return []
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]


def _fds_of(ancdata: list[tuple[int, int, bytes]], flags: int) -> list[int]:
    fds = array.array("i")
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    if flags & socket.MSG_CTRUNC:
        for fd in fds:
            _close(fd)
        raise ProtocolError("descriptors were lost in transit (control data truncated)")
    return list(fds)


def _close(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def write_ready(sock: socket.socket, outbox: Outbox) -> None:
    """Write what a non-blocking ``sock`` accepts now.

    Raises ``OSError`` (other than "would block") when the peer is gone.
    """
    while outbox:
        buffers, fds = outbox.next_write()
        try:
            n = sock.sendmsg(buffers, _rights(fds))
        except (BlockingIOError, InterruptedError):
            return
        outbox.wrote(n)


def read_ready(sock: socket.socket, inbox: Inbox) -> tuple[list[Frame], bool]:
    """Read what a non-blocking ``sock`` has now; return frames, and whether it closed."""
    frames: list[Frame] = []
    taken = 0
    while taken < READ_BUDGET:
        view = inbox.buffer()
        try:
            n, ancdata, flags, _ = sock.recvmsg_into([view], _ANC_SPACE)
        except (BlockingIOError, InterruptedError):
            return frames, False
        except (ConnectionResetError, OSError):
            return frames, True
        fds = _fds_of(ancdata, flags) if ancdata else []
        if n == 0:
            for fd in fds:
                _close(fd)
            return frames, True
        frames.extend(inbox.received(n, fds))
        taken += n
    return frames, False


def send(
    sock: socket.socket, body: bytes | bytearray | memoryview, fds: Sequence[int] = ()
) -> None:
    """Write one frame on a blocking ``sock`` (the worker's side)."""
    view = memoryview(body)
    header = HEADER.pack(view.nbytes, len(fds))
    n = sock.sendmsg([header, view], _rights(fds))
    total = len(header) + view.nbytes
    if n < len(header):
        sock.sendall(header[n:])
        n = len(header)
    if n < total:
        sock.sendall(view[n - len(header) :])


def send_nowait(sock: socket.socket, body: bytes) -> None:
    """Write one small frame on a non-blocking ``sock`` if it fits now."""
    with contextlib.suppress(BlockingIOError, InterruptedError):
        sock.send(HEADER.pack(len(body), 0) + body)


def receive(sock: socket.socket, inbox: Inbox, frames: list[Frame]) -> bool:
    """Block until at least one frame is in ``frames``; False when the peer closed."""
    while not frames:
        view = inbox.buffer()
        try:
            n, ancdata, flags, _ = sock.recvmsg_into([view], _ANC_SPACE)
        except InterruptedError:
            continue
        except (ConnectionResetError, OSError):
            return False
        fds = _fds_of(ancdata, flags) if ancdata else []
        if n == 0:
            for fd in fds:
                _close(fd)
            return False
        frames.extend(inbox.received(n, fds))
    return True
