"""/ping latency of an aiohttp service while its workers are busy.

The service (``tests/service_app.py``) scores records in worker processes.
Four clients keep posting CPU-bound maps to ``/score`` while a fifth asks
``/ping`` every 20 ms and records how long each answer took. The same
service runs three ways, in the same run, interleaved and rotated round by
round:

* ``parmap+timeout``: ``await score.apmap(items)``, with ``timeout=30``
  (a service sets one), 2 workers;
* ``parmap``: the same without a timeout;
* ``executor``: the twin, ``loop.run_in_executor(ProcessPoolExecutor(2))``
  per record.

    python benchmarks/service_ping.py [--rounds 5] [--seconds 4] [--json out.json]

Per round and way: ping p50, p99 and worst, and how many pings took over
50 ms. The report gives the median over rounds and the median of the
per-round ratios of p99 against the executor; the target is parmap+timeout
≤ 1.2x the executor.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SERVICE = ROOT / "tests" / "service_app.py"
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src"))

from service_app import work  # noqa: E402

WAYS: dict[str, list[str]] = {
    "parmap+timeout": ["--mode", "parmap", "--timeout", "30"],
    "parmap": ["--mode", "parmap"],
    "executor": ["--mode", "executor"],
}
PING_EVERY = 0.020
CLIENTS = 4
RECORDS_PER_MAP = 6
TARGET_RATIO = 1.2


def calibrate(ms: float) -> int:
    """Rounds of ``work`` that take about ``ms`` milliseconds here."""
    record = {"text": "x" * 160, "rounds": 200}
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        work(record)
        best = min(best, time.perf_counter() - started)
    return max(1, round(200 * ms / 1000 / best))


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def start_server(args: list[str], workers: int) -> tuple[subprocess.Popen[str], str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")])
    proc = subprocess.Popen(
        [sys.executable, str(SERVICE), "--workers", str(workers), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
        start_new_session=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("listening on "):
        proc.kill()
        raise RuntimeError(f"the service did not start: {line!r}")
    return proc, line.split()[-1]


def stop_server(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


async def load(url: str, seconds: float, rounds: int) -> dict[str, float]:
    """Run the four posting clients and the pinger for ``seconds``; ping statistics."""
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        items = [{"text": "x" * 160, "rounds": rounds}] * RECORDS_PER_MAP
        async with session.post(f"{url}/score", json={"items": items}) as warm:
            assert warm.status == 200  # the workers exist before the window opens
        stop = time.monotonic() + seconds
        latencies: list[float] = []
        maps = 0

        async def client() -> None:
            nonlocal maps
            while time.monotonic() < stop:
                async with session.post(f"{url}/score", json={"items": items}) as response:
                    body = await response.json()
                    assert all("value" in out for out in body), body
                maps += 1

        async def pinger() -> None:
            while time.monotonic() < stop:
                started = time.monotonic()
                async with session.get(f"{url}/ping") as response:
                    await response.read()
                latencies.append(time.monotonic() - started)
                await asyncio.sleep(PING_EVERY)

        await asyncio.gather(pinger(), *(client() for _ in range(CLIENTS)))
    return {
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * _percentile(latencies, 0.99),
        "max_ms": 1000 * max(latencies),
        "over_50ms": float(sum(1 for x in latencies if x > 0.050)),
        "pings": float(len(latencies)),
        "maps": float(maps),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--ms", type=float, default=30.0, help="CPU per record")
    parser.add_argument("--json", help="write every measurement here")
    args = parser.parse_args()

    work_rounds = calibrate(args.ms)
    load_start = os.getloadavg()
    names = list(WAYS)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for r in range(args.rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            proc, url = start_server(WAYS[name], args.workers)
            try:
                stats = asyncio.run(load(url, args.seconds, work_rounds))
            finally:
                stop_server(proc)
            runs[name].append(stats)
            print(
                f"round {r + 1} {name:15} p99 {stats['p99_ms']:6.1f} ms, "
                f"worst {stats['max_ms']:6.1f} ms, >50 ms: {stats['over_50ms']:.0f}",
                file=sys.stderr,
                flush=True,
            )

    print(
        f"# /ping under load: {CLIENTS} clients posting maps of {RECORDS_PER_MAP} records "
        f"(~{args.ms:.0f} ms CPU each), a pinger every {PING_EVERY * 1000:.0f} ms\n"
    )
    print(
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, {platform.platform()}, "
        f"{args.workers} workers, {args.rounds} rounds of {args.seconds:.0f} s; load average "
        f"{load_start[0]:.2f} at start, {os.getloadavg()[0]:.2f} at end\n"
    )
    print(
        "| way | ping p50 | ping p99 | worst | pings > 50 ms | maps served "
        "| p99 / executor (median of rounds) | rounds over the target |"
    )
    print("|---|---|---|---|---|---|---|---|")
    ratios: dict[str, float] = {}
    for name in names:
        med = {key: statistics.median(s[key] for s in runs[name]) for key in runs[name][0]}
        ratio = statistics.median(
            s["p99_ms"] / max(e["p99_ms"], 1e-9)
            for s, e in zip(runs[name], runs["executor"], strict=True)
        )
        ratios[name] = ratio
        over = sum(
            1
            for s, e in zip(runs[name], runs["executor"], strict=True)
            if s["p99_ms"] > TARGET_RATIO * e["p99_ms"]
        )
        print(
            f"| {name} | {med['p50_ms']:.1f} ms | {med['p99_ms']:.1f} ms | {med['max_ms']:.1f} ms "
            f"| {med['over_50ms']:.0f} | {med['maps']:.0f} | {ratio:.2f}x | {over}/{args.rounds} |"
        )
    met = ratios["parmap+timeout"] <= TARGET_RATIO
    print(
        f"\nTarget: parmap+timeout p99 ≤ {TARGET_RATIO}x the executor's "
        f"(median of per-round ratios): {ratios['parmap+timeout']:.2f}x: "
        f"{'met' if met else 'MISSED'}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": runs, "ratios": ratios}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
