"""A small aiohttp service that scores records in worker processes.

The server that ``tests/test_service.py`` drives and that
``benchmarks/service_ping.py`` measures, run as its own program:

    python tests/service_app.py [--mode parmap|executor] [--workers 2] [--timeout S]

It prints ``listening on http://127.0.0.1:PORT`` once it serves, and stops
cleanly on SIGTERM or SIGINT. Endpoints:

* ``POST /score`` with ``{"items": [record, ...]}``: one entry per record, in
  order, ``{"value": ...}`` or ``{"error": {"type": ..., "message": ...}}``.
  ``--mode parmap`` awaits ``score.apmap(items)`` on a ``@parallel``
  function; ``--mode executor`` is the classic twin, one
  ``loop.run_in_executor(ProcessPoolExecutor)`` per record.
* ``GET /ping``: answers at once, from the event loop (its latency is what
  a loaded service's other clients feel).
* ``GET /stats``: how many ``/score`` handlers were cancelled (their client
  went away).

A record is ``{"text": str, "rounds": int}`` (CPU-bound scoring),
``{"raise": message}``, ``{"hang": true}``, or ``{"mark": directory}``, which
writes ``directory/started-PID`` and then works for up to a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from aiohttp import web

from parmap import RemoteError, parallel


def work(record: dict[str, Any]) -> int:
    """Score one record (runs in a worker)."""
    if "raise" in record:
        raise ValueError(record["raise"])
    if record.get("hang"):
        time.sleep(3600)
    if "mark" in record:
        Path(record["mark"], f"started-{os.getpid()}").touch()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            sum(range(10_000))
        return 0
    text: str = record.get("text", "")
    h = 0
    for _ in range(int(record.get("rounds", 1))):
        for ch in text:
            h = (h * 31 + ord(ch)) % 1_000_000_007
    return h


def _error(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, RemoteError):
        return {"type": exc.type_name, "message": exc.message}
    return {"type": type(exc).__name__, "message": str(exc)}


class Service:
    """The handlers and the worker pool behind them."""

    def __init__(self, mode: str, workers: int, timeout: float | None) -> None:
        self.mode = mode
        self.timeout = timeout
        self.cancelled = 0
        self.score = parallel(workers=workers, timeout=timeout, on_error="collect")(work)
        self.executor = ProcessPoolExecutor(workers) if mode == "executor" else None

    async def score_items(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if self.executor is None:
            res = await self.score.apmap(items)
            return [
                {"error": _error(res.errors[i])} if i in res.errors else {"value": value}
                for i, value in enumerate(res.values)
            ]
        loop = asyncio.get_running_loop()
        futures = [
            asyncio.wait_for(loop.run_in_executor(self.executor, work, item), self.timeout)
            for item in items
        ]
        done = await asyncio.gather(*futures, return_exceptions=True)
        return [
            {"error": _error(out)} if isinstance(out, BaseException) else {"value": out}
            for out in done
        ]

    async def handle_score(self, request: web.Request) -> web.Response:
        body = await request.json()
        try:
            results = await self.score_items(body["items"])
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return web.json_response(results)

    async def handle_ping(self, request: web.Request) -> web.Response:
        return web.json_response({"pong": True})

    async def handle_stats(self, request: web.Request) -> web.Response:
        return web.json_response({"cancelled": self.cancelled})

    def close(self) -> None:
        self.score.close()
        if self.executor is not None:
            self.executor.shutdown(cancel_futures=True)


async def serve(mode: str, workers: int, timeout: float | None) -> None:
    service = Service(mode, workers, timeout)
    app = web.Application()
    app.add_routes(
        [
            web.post("/score", service.handle_score),
            web.get("/ping", service.handle_ping),
            web.get("/stats", service.handle_stats),
        ]
    )
    # handler_cancellation: a client that goes away cancels its handler (off
    # by default since aiohttp 3.7). shutdown_timeout: at SIGTERM, requests
    # still running get this long, then are cancelled.
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    host, port = runner.addresses[0][:2]
    print(f"listening on http://{host}:{port}", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        service.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--mode", choices=["parmap", "executor"], default="parmap")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=None)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.mode, args.workers, args.timeout))
    print("stopped", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
