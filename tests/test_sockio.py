"""The socket calls of the transport on a real socketpair: partial writes,
lost descriptors, a peer that closed, a socket that is gone."""

from __future__ import annotations

import array
import os
import socket
import threading
from collections.abc import Iterator

import pytest

from parmap import _sockio
from parmap._wire import HEADER, MAX_FDS, Frame, Inbox, Outbox, ProtocolError


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def test_send_in_pieces_arrives_whole(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    # A timeout makes the socket non-blocking underneath: one sendmsg takes
    # what the buffer holds, and send() writes the rest itself.
    a.settimeout(30)
    body = bytes(range(256)) * (4 << 12)  # 4 MiB, far beyond a socket buffer
    got: list[Frame] = []
    reader = threading.Thread(target=_sockio.receive, args=(b, Inbox(), got))
    reader.start()
    _sockio.send(a, body)
    reader.join(30)
    assert not reader.is_alive()
    assert len(got) == 1
    assert bytes(got[0][0]) == body
    assert got[0][1] == []


def test_descriptors_travel_with_their_frame(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    r, w = os.pipe()
    try:
        _sockio.send(a, b"with a pipe", [w])
        frames: list[Frame] = []
        assert _sockio.receive(b, Inbox(), frames)
        body, fds = frames[0]
        assert bytes(body) == b"with a pipe"
        assert len(fds) == 1
        os.write(fds[0], b"x")
        os.close(fds[0])
        assert os.read(r, 1) == b"x"
    finally:
        os.close(r)
        os.close(w)


def test_truncated_descriptors_are_closed_and_refused(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    r, w = os.pipe()
    try:
        many = [w] * (MAX_FDS * 2)  # more than the reader makes room for
        a.sendmsg(
            [b"\0" * 12],
            [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", many).tobytes())],
        )
        b.setblocking(False)
        with pytest.raises(ProtocolError, match="truncated"):
            _sockio.read_ready(b, Inbox())
        # The copies that did arrive were closed: only our own ``w`` holds the
        # pipe open, so closing it ends the reader's stream.
        os.close(w)
        w = -1
        assert os.read(r, 1) == b""
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def test_receive_reports_a_closed_peer(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    a.close()
    frames: list[Frame] = []
    assert _sockio.receive(b, Inbox(), frames) is False
    assert frames == []


def test_receive_and_read_on_a_closed_socket(pair: tuple[socket.socket, socket.socket]) -> None:
    _, b = pair
    b.close()
    assert _sockio.receive(b, Inbox(), []) is False
    assert _sockio.read_ready(b, Inbox()) == ([], True)


def test_nonblocking_pump_moves_frames_both_ways(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    a.setblocking(False)
    b.setblocking(False)
    outbox = Outbox()
    big = b"y" * (3 << 20)  # more than one write and one read can hold
    outbox.put(big)
    outbox.put(b"small")
    inbox = Inbox()
    frames: list[Frame] = []
    blocked_writes = 0
    while len(frames) < 2:
        if outbox:
            _sockio.write_ready(a, outbox)
            blocked_writes += bool(outbox)
        got, closed = _sockio.read_ready(b, inbox)
        assert not closed
        frames.extend(got)
    assert not outbox
    assert bytes(frames[0][0]) == big
    assert frames[1] == (b"small", [])
    assert blocked_writes >= 1
    a.close()
    assert _sockio.read_ready(b, inbox) == ([], True)


def test_send_nowait_drops_what_does_not_fit(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    a.setblocking(False)
    _sockio.send_nowait(a, b"ping")
    # Fill the buffer until a write would block; send_nowait then returns quietly.
    filled = 0
    while True:
        try:
            filled += a.send(b"z" * 65536)
        except BlockingIOError:
            break
    assert filled > 0
    _sockio.send_nowait(a, b"lost")
    assert b.recv(16) == HEADER.pack(4, 0) + b"ping"


def test_close_ignores_a_descriptor_already_closed() -> None:
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    _sockio._close(r)  # no OSError escapes
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(r)
