"""parmap behind a real aiohttp server on 127.0.0.1, driven by real HTTP clients.

The server (``service_app.py``) runs as its own process in a session of its
own, so that the test finds every worker it started, even after it exited.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest

from .procs import processes, wait_ended
from .service_app import work

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"
START_TIMEOUT = 60.0
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=120)


class Server:
    """A running ``service_app.py``: its process, its base URL."""

    def __init__(self, proc: subprocess.Popen[str], url: str) -> None:
        self.proc = proc
        self.url = url

    def session_members(self) -> list[psutil.Process]:
        found = []
        for proc in psutil.process_iter():
            with contextlib.suppress(psutil.Error, OSError):
                if os.getsid(proc.pid) == self.proc.pid and proc.pid != self.proc.pid:
                    found.append(proc)
        return found


@contextlib.contextmanager
def server(*args: str) -> Iterator[Server]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), str(TESTS)]))
    proc = subprocess.Popen(
        [sys.executable, str(TESTS / "service_app.py"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the server says where it listens
        assert line.startswith("listening on "), (line, proc.stderr and proc.stderr.read())
        yield Server(proc, line.split()[-1])
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(START_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        # Whatever the test did, nothing of the server's may be left.
        left = wait_ended(Server(proc, "").session_members(), 5)
        for p in left:
            with contextlib.suppress(psutil.Error):
                p.kill()
        if proc.stdout is not None:
            proc.stdout.close()
        if proc.stderr is not None:
            proc.stderr.close()
        assert not left, f"processes outlived the server: {left}"


def _records(count: int, seed: int) -> list[dict[str, Any]]:
    # About 20-50 ms of CPU each: real work, not a sleep.
    return [
        {"text": f"client {seed} record {i} " * 8, "rounds": 300 + 40 * i} for i in range(count)
    ]


async def _post(session: aiohttp.ClientSession, url: str, items: list[Any]) -> list[Any]:
    async with session.post(f"{url}/score", json={"items": items}) as response:
        assert response.status == 200, await response.text()
        data: list[Any] = await response.json()
        return data


def test_four_clients_map_while_a_fifth_pings(tmp_path: Path) -> None:
    async def scenario(url: str) -> tuple[list[list[Any]], list[float]]:
        async with aiohttp.ClientSession(timeout=REQUEST_TIMEOUT) as session:
            done = asyncio.Event()
            latencies: list[float] = []

            async def pinger() -> None:
                while not done.is_set():
                    started = time.monotonic()
                    async with session.get(f"{url}/ping") as response:
                        assert response.status == 200
                        assert await response.json() == {"pong": True}
                    latencies.append(time.monotonic() - started)
                    await asyncio.sleep(0.02)

            async def client(seed: int) -> list[Any]:
                return [await _post(session, url, _records(6, seed)) for _ in range(3)]

            ping = asyncio.create_task(pinger())
            try:
                results = await asyncio.gather(*(client(seed) for seed in range(4)))
            finally:
                done.set()
                await ping
            return results, latencies

    with server("--workers", "2", "--timeout", "30") as srv:
        results, latencies = asyncio.run(scenario(srv.url))
    for seed, rounds in enumerate(results):
        expected = [{"value": work(record)} for record in _records(6, seed)]
        assert rounds == [expected] * 3
    # The pinger ran throughout (its latency is a benchmark figure, not a test).
    assert len(latencies) >= 3
    print(f"pings: {len(latencies)}, worst {max(latencies) * 1000:.0f} ms")


def test_a_client_going_away_cancels_the_handler_and_stops_its_items(tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()

    async def scenario(url: str) -> tuple[set[int], dict[str, Any], list[Any]]:
        async with aiohttp.ClientSession(timeout=REQUEST_TIMEOUT) as session:
            request = asyncio.create_task(_post(session, url, [{"mark": str(marks)}] * 2))
            deadline = time.monotonic() + START_TIMEOUT
            while len(list(marks.iterdir())) < 2:
                assert time.monotonic() < deadline, "the items never started"
                await asyncio.sleep(0.02)
            pids = {int(p.name.split("-")[1]) for p in marks.iterdir()}
            request.cancel()  # closes the connection mid-request
            with contextlib.suppress(asyncio.CancelledError):
                await request
        async with aiohttp.ClientSession(timeout=REQUEST_TIMEOUT) as session:
            # The workers that ran the items end, long before their minute is up.
            assert wait_ended(processes(pids), 10) == []
            async with session.get(f"{url}/stats") as response:
                stats = await response.json()
            after = await _post(session, url, [{"text": "still serving", "rounds": 1}])
        return pids, stats, after

    with server("--workers", "2") as srv:
        pids, stats, after = asyncio.run(scenario(srv.url))
    assert len(pids) == 2
    assert stats == {"cancelled": 1}
    assert after == [{"value": work({"text": "still serving", "rounds": 1})}]


def test_an_item_that_raises_and_one_that_hangs_are_both_in_the_response() -> None:
    items: list[dict[str, Any]] = [
        {"text": "fine", "rounds": 2},
        {"raise": "record 1 is malformed"},
        {"hang": True},
        {"text": "also fine", "rounds": 2},
    ]

    async def scenario(url: str) -> list[Any]:
        async with aiohttp.ClientSession(timeout=REQUEST_TIMEOUT) as session:
            return await _post(session, url, items)

    with server("--workers", "2", "--timeout", "1") as srv:
        response = asyncio.run(scenario(srv.url))
    assert response[0] == {"value": work(items[0])}
    assert response[1] == {"error": {"type": "ValueError", "message": "record 1 is malformed"}}
    assert response[2]["error"]["type"] == "TaskTimeoutError"
    assert "its worker was killed" in response[2]["error"]["message"]
    assert response[3] == {"value": work(items[3])}


@pytest.mark.parametrize("busy", [False, True], ids=["idle", "mid-request"])
def test_sigterm_stops_the_server_promptly_and_leaves_no_worker(busy: bool, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()

    async def warm_up(url: str) -> None:
        async with aiohttp.ClientSession(timeout=REQUEST_TIMEOUT) as session:
            await _post(session, url, _records(4, 0))

    with server("--workers", "2") as srv:
        asyncio.run(warm_up(srv.url))  # the pool's workers exist now
        request = None
        if busy:
            # A client of its own process, so that this one is free to signal.
            body = json.dumps({"items": [{"mark": str(marks)}] * 2})
            post = (
                "import sys, urllib.request\n"
                "request = urllib.request.Request(sys.argv[1], data=sys.argv[2].encode())\n"
                "try:\n    urllib.request.urlopen(request, timeout=120)\n"
                "except Exception:\n    pass\n"
            )
            request = subprocess.Popen(
                [sys.executable, "-c", post, f"{srv.url}/score", body],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + START_TIMEOUT
            while len(list(marks.iterdir())) < 2:
                assert time.monotonic() < deadline, "the items never started"
                time.sleep(0.02)
        workers = srv.session_members()
        assert len(workers) >= 2
        started = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        code = srv.proc.wait(START_TIMEOUT)
        elapsed = time.monotonic() - started
        assert code == 0
        assert wait_ended(workers, 5) == []
        if request is not None:
            request.wait(START_TIMEOUT)
    print(f"stopped in {elapsed:.2f} s")
    # Promptly: a request still running gets the server's 1 s grace, then
    # its handler is cancelled, which kills its workers.
    assert elapsed < 10, elapsed
