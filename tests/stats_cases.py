"""Maps of known work whose ``MapStats`` the tests check, run as a script.

``python -m tests.stats_cases CASE SVG_PATH`` runs one case and prints one
JSON line: the map's ``stats.to_dict()`` plus what its SVG timeline holds.
The tests run it in a subprocess with a hard time limit, so that a map that
hangs (timeouts and crashes are involved) fails its test instead of the suite.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from parmap import MapResult, MapStats, Pool, aimap, imap, pmap

SVG = "{http://www.w3.org/2000/svg}"
SLOW_INDEX = 13


def sleep_record(line: str) -> str:
    """A JSON record says how long to sleep; the result is its name, upper-cased."""
    record = json.loads(line)
    time.sleep(record["sleep"])
    return str(record["name"]).upper()


def burn(seconds: float) -> int:
    """Keep a CPU busy for ``seconds``."""
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end:
        n += 1
    return n


def length(data: bytes) -> int:
    return len(data)


def mixed(text: str) -> str:
    """Text lines that say what to do: raise, hang past the timeout, crash, or work."""
    if text.startswith("raise"):
        raise ValueError(text)
    if text.startswith("hang"):
        time.sleep(60)
    if text.startswith("crash"):
        os._exit(7)
    time.sleep(0.01)
    return text[::-1]


PARENT_BURN = 0.005


def burn_cpu(seconds: float) -> None:
    """Spend ``seconds`` of this thread's CPU time."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


class CostlyInParent:
    """Costs the parent CPU time to pickle (as an argument) and to unpickle
    (as a result); cheap in the worker."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __reduce__(self) -> tuple[Any, ...]:
        if os.getpid() == PARENT_PID:
            burn_cpu(PARENT_BURN)  # pickling an argument, in the parent
            return (CostlyInParent, (self.text,))
        return (rebuild_in_parent, (self.text,))


def rebuild_in_parent(text: str) -> CostlyInParent:
    burn_cpu(PARENT_BURN)  # unpickling a result, in the parent
    return CostlyInParent(text)


def shout(item: CostlyInParent) -> CostlyInParent:
    return CostlyInParent(item.text.upper())


PARENT_PID = os.getpid()


def always_raise(x: int) -> int:
    raise KeyError(x)


def every_third_raises(word: str) -> str:
    if len(word) % 3 == 0:
        raise ValueError(word)
    return word.upper()


def mixed_lines() -> list[str]:
    lines = []
    for i in range(40):
        if i in (5, 22):
            lines.append(f"hang {i}")
        elif i == 30:
            lines.append(f"crash {i}")
        elif i % 6 == 1:
            lines.append(f"raise {i}")
        else:
            lines.append(f"line {i}: the quick brown fox")
    return lines


def slow_source(count: int, every: float) -> Iterator[bytes]:
    for i in range(count):
        time.sleep(every)
        yield b"x" * (i + 1)


def title_counts(title: str) -> list[tuple[str, int]]:
    """``(outcome, items)`` that one bar's title names."""
    one = re.match(r"item \d+: ([a-z ]+),", title)
    if one:
        return [(one.group(1), 1)]
    many = re.match(r"\d+ items \(\d+ … \d+\): (.*);", title)
    assert many, title
    return [(outcome, int(n)) for n, outcome in re.findall(r"(\d+) ([a-z ]+)", many.group(1))]


def svg_facts(path: str) -> dict[str, Any]:
    """What a person sees in the timeline: lanes, bars with titles, marks."""
    root = ET.parse(path).getroot()
    lanes = root.findall(f"{SVG}g[@class='lane']")
    bars = root.findall(f"{SVG}rect[@class='bar']")
    titled = [bar for bar in bars if bar.find(f"{SVG}title") is not None]
    covered = 0
    by_outcome: dict[str, int] = {}
    for bar in bars:
        for outcome, items in title_counts(bar.findtext(f"{SVG}title") or ""):
            covered += items
            by_outcome[outcome] = by_outcome.get(outcome, 0) + items
    return {
        "lanes": len(lanes),
        "bars": len(bars),
        "titled": len(titled),
        "covered": covered,
        "by_outcome": by_outcome,
        "fills": sorted({bar.get("fill", "") for bar in bars}),
        "kills": len(root.findall(f"{SVG}g[@class='kill']")),
        "spawns": len(root.findall(f"{SVG}g[@class='spawn']")),
    }


def run(case: str) -> tuple[MapStats, dict[str, Any]]:
    res: MapResult[Any]
    extra: dict[str, Any] = {}
    if case == "slow_item":
        lines = [
            json.dumps({"name": f"rec{i}", "sleep": 0.5 if i == SLOW_INDEX else 0.02})
            for i in range(30)
        ]
        res = pmap(sleep_record, lines, workers=2)
        assert res.values == [f"REC{i}" for i in range(30)]
        return res.stats, extra
    if case == "cpu":
        res = pmap(burn, [0.05] * 40, workers=2)
        return res.stats, extra
    if case == "starved":
        res = pmap(length, slow_source(10, 0.1), workers=2)
        assert res.values == list(range(1, 11))
        return res.stats, extra
    if case == "mix":
        res = pmap(mixed, mixed_lines(), workers=2, timeout=1.0, on_error="collect")
        extra["errors"] = {str(i): type(e).__name__ for i, e in res.errors.items()}
        return res.stats, extra
    if case == "tiny_raises":
        words = ["ab" + "c" * (i % 3) for i in range(3000)]  # lengths 2, 3, 4
        res = pmap(every_third_raises, words, workers=2, on_error="collect")
        assert len(res.errors) == 1000
        return res.stats, extra
    if case == "parent":
        items = [CostlyInParent(f"line {i}") for i in range(30)]
        res = pmap(shout, items, workers=2, chunksize=1)
        assert [r.text for r in res] == [f"LINE {i}" for i in range(30)]
        return res.stats, extra
    if case == "warm_crash":
        # On a warm pool, the first item of the map crashes its worker.
        with Pool(workers=2) as pool:
            pool.pmap(length, [b"warm", b"up"])
            res = pool.pmap(mixed, ["crash 0"] + ["line"] * 9, on_error="collect")
        return res.stats, extra
    if case == "retries":
        res = pmap(always_raise, range(4), workers=2, retries=2, on_error="collect")
        return res.stats, extra
    if case == "imap":
        it = imap(sleep_record, [json.dumps({"name": "a", "sleep": 0.01})] * 8, workers=2)
        next(it)
        extra["before"] = it.stats is None
        rest = list(it)
        extra["outcomes"] = 1 + len(rest)
        assert it.stats is not None
        return it.stats, extra
    if case == "imap_raise":
        raising = imap(always_raise, range(6), workers=2)
        try:
            list(raising)
        except KeyError as exc:
            extra["raised"] = exc.args[0]
        assert raising.stats is not None
        return raising.stats, extra
    if case == "aimap":

        async def main() -> MapStats:
            it = aimap(sleep_record, [json.dumps({"name": "a", "sleep": 0.01})] * 8, workers=2)
            extra["before"] = it.stats is None
            extra["outcomes"] = len([out async for out in it])
            assert it.stats is not None
            return it.stats

        return asyncio.run(main()), extra
    if case == "many":
        lines = [f"line {i}" for i in range(100_000)]
        res = pmap(str.upper, lines, workers=2)
        assert res.values[-1] == "LINE 99999"
        return res.stats, extra
    if case in ("thread", "serial"):
        with Pool(workers=2, backend=case) as pool:
            res = pmap_on(pool)
        return res.stats, extra
    if case == "executor":
        with ThreadPoolExecutor(2) as executor, Pool(workers=2, backend=executor) as pool:
            res = pmap_on(pool)
        return res.stats, extra
    raise SystemExit(f"unknown case {case!r}")


def pmap_on(pool: Pool) -> Any:
    lines = [json.dumps({"name": f"r{i}", "sleep": 0.2 if i == 3 else 0.01}) for i in range(8)]
    return pool.pmap(sleep_record, lines, on_error="collect")


def main() -> None:
    case, path = sys.argv[1], sys.argv[2]
    stats, extra = run(case)
    stats.timeline(path)
    report = {"stats": stats.to_dict(), "svg": svg_facts(path), "text": str(stats), **extra}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
