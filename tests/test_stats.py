"""MapStats and the SVG timeline, checked against maps of known work.

The maps run in ``tests.stats_cases``, in a subprocess with a hard time limit
(they involve timeouts and crashes), which prints the figures as JSON.
"""

from __future__ import annotations

import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from parmap import MapResult, MapStats, Outcome, WorkerCrashedError, _stats
from parmap._stats import MEMORY, OK, RAISED, TIMED_OUT, Bar, failure_kind
from parmap._timeline import WIDTH, render

from . import stats_cases
from .checks import run_limited
from .test_cli import records, run_cli

ROOT = Path(__file__).parent.parent
LIMIT = 120.0
SVG = stats_cases.SVG


def run_case(case: str, tmp_path: Path) -> dict[str, Any]:
    """Run one case of ``tests.stats_cases``; a hang fails the test."""
    svg = tmp_path / f"{case}.svg"
    proc = run_limited([sys.executable, "-m", "tests.stats_cases", case, str(svg)], limit=LIMIT)
    assert proc.returncode == 0, proc.stderr
    report: dict[str, Any] = json.loads(proc.stdout)
    ET.parse(svg)  # the picture is well-formed XML
    stats = report["stats"]
    assert stats["items"] == stats["succeeded"] + stats["failed"]
    assert stats["failed"] == sum(stats[k] for k in ("raised", "timed_out", "crashed", "memory"))
    assert 0.0 <= stats["utilization"] <= 1.0
    return report


def test_the_known_slow_item_is_the_slowest(tmp_path: Path) -> None:
    report = run_case("slow_item", tmp_path)
    stats = report["stats"]
    assert stats["items"] == stats["succeeded"] == 30
    assert stats["failed"] == 0
    index, seconds = stats["slowest"][0]
    assert index == stats_cases.SLOW_INDEX
    assert 0.5 <= seconds < 0.5 + 0.4
    assert len(stats["slowest"]) == 5
    assert all(s < seconds for _, s in stats["slowest"][1:])
    assert stats["max"] == seconds
    assert 0.02 <= stats["min"] <= stats["median"] < 0.5
    assert stats["total"] >= 29 * 0.02 + 0.5
    assert stats["wall"] >= 0.5
    assert stats["workers"] == stats["workers_started"] == 2
    assert stats["workers_replaced"] == 0
    assert report["svg"]["lanes"] == 2
    assert report["svg"]["bars"] == report["svg"]["titled"] == 30


def test_cpu_bound_work_keeps_the_workers_busy(tmp_path: Path) -> None:
    stats = run_case("cpu", tmp_path)["stats"]
    assert stats["items"] == 40
    assert stats["utilization"] > 0.7
    assert stats["total"] >= 40 * 0.05
    assert stats["parent_seconds"] < stats["wall"]


def test_a_slow_input_starves_the_workers(tmp_path: Path) -> None:
    stats = run_case("starved", tmp_path)["stats"]
    assert stats["items"] == 10
    assert stats["wall"] >= 10 * 0.1
    assert stats["utilization"] < 0.2
    # The input generator's own time is not the parent's overhead.
    assert stats["parent_seconds"] < 0.5


def test_parent_seconds_count_pickling_and_unpickling(tmp_path: Path) -> None:
    stats = run_case("parent", tmp_path)["stats"]
    # 30 arguments and 30 results, each costing the parent 5 ms of CPU.
    assert stats["parent_seconds"] >= 60 * stats_cases.PARENT_BURN
    assert stats["parent_seconds"] <= stats["wall"]


def test_failures_are_counted_by_kind_and_kills_replace_workers(tmp_path: Path) -> None:
    report = run_case("mix", tmp_path)
    stats = report["stats"]
    kinds = list(report["errors"].values())
    raised = kinds.count("ValueError")
    assert raised == sum(1 for line in stats_cases.mixed_lines() if line.startswith("raise"))
    assert kinds.count("TaskTimeoutError") == 2
    assert kinds.count("WorkerCrashedError") == 1
    assert stats["raised"] == raised
    assert stats["timed_out"] == 2
    assert stats["crashed"] == 1
    assert stats["memory"] == 0
    assert stats["failed"] == len(kinds)
    assert stats["items"] == 40
    assert stats["succeeded"] == 40 - len(kinds)
    # Two timeouts and one crash: three workers killed, three replacements.
    assert stats["workers_replaced"] == 3
    assert stats["workers_started"] == 2 + 3
    svg = report["svg"]
    assert svg["lanes"] == 2  # replacements take their predecessor's lane
    assert svg["kills"] == 3
    assert svg["spawns"] == 3
    assert svg["bars"] == svg["titled"]
    assert svg["covered"] == 40
    assert len(svg["fills"]) == 4  # succeeded, raised, timed out, crashed


def test_tiny_items_that_raise_are_drawn_apart_from_their_slice(tmp_path: Path) -> None:
    report = run_case("tiny_raises", tmp_path)
    assert report["stats"]["raised"] == 1000
    assert report["svg"]["covered"] == 3000
    assert report["svg"]["by_outcome"] == {"succeeded": 2000, "raised": 1000}


def test_a_warm_pool_keeps_one_lane_per_worker_through_a_crash(tmp_path: Path) -> None:
    report = run_case("warm_crash", tmp_path)
    stats = report["stats"]
    assert stats["crashed"] == 1
    assert stats["workers_started"] == stats["workers_replaced"] == 1
    assert report["svg"]["lanes"] == 2
    assert report["svg"]["kills"] == 1


def test_retried_counts_the_extra_attempts(tmp_path: Path) -> None:
    stats = run_case("retries", tmp_path)["stats"]
    assert stats["retried"] == 4 * 2
    assert stats["raised"] == stats["failed"] == 4
    assert stats["resumed"] == 0
    indexes = [index for index, _ in stats["slowest"]]
    assert sorted(indexes) == [0, 1, 2, 3]  # each item once


@pytest.mark.parametrize("case", ["imap", "aimap"])
def test_iterators_carry_stats_once_exhausted(case: str, tmp_path: Path) -> None:
    report = run_case(case, tmp_path)
    assert report["before"] is True
    assert report["outcomes"] == 8
    assert report["stats"]["items"] == 8
    assert report["stats"]["min"] >= 0.01


def test_an_iterator_ended_by_the_maps_error_has_stats(tmp_path: Path) -> None:
    report = run_case("imap_raise", tmp_path)
    assert report["raised"] in range(6)
    assert report["stats"]["raised"] == report["stats"]["failed"] == 1


def test_a_hundred_thousand_items_draw_as_merged_runs(tmp_path: Path) -> None:
    report = run_case("many", tmp_path)
    assert report["stats"]["items"] == 100_000
    svg = report["svg"]
    assert svg["lanes"] == 2
    assert svg["bars"] == svg["titled"]
    assert svg["bars"] <= 2 * (WIDTH + 1)
    assert svg["covered"] == 100_000


@pytest.mark.parametrize("backend", ["thread", "serial", "executor"])
def test_other_backends_fill_in_what_they_measure(backend: str, tmp_path: Path) -> None:
    report = run_case(backend, tmp_path)
    stats = report["stats"]
    assert stats["items"] == stats["succeeded"] == 8
    index, seconds = stats["slowest"][0]
    assert index == 3
    assert seconds >= 0.2
    assert report["svg"]["lanes"] == stats["workers"]


def test_the_table_and_the_dict() -> None:
    stats = MapStats(wall=2.0, items=3, succeeded=2, failed=1, raised=1, slowest=((4, 0.5),))
    text = str(stats)
    assert text.splitlines()[0].split() == ["wall", "2.000", "s"]
    assert "raised 1" in text
    assert "#4 500.0 ms" in text
    data = json.loads(json.dumps(stats.to_dict()))
    assert data["slowest"] == [[4, 0.5]]
    assert "_bars" not in data
    assert set(data) >= {"wall", "utilization", "parent_seconds", "workers_replaced", "p95"}
    with pytest.raises(AttributeError):
        stats.wall = 1.0  # type: ignore[misc]


def test_a_result_built_by_hand_has_empty_stats() -> None:
    res = MapResult.from_outcomes([Outcome(0, "a")])
    assert res.stats == MapStats()
    assert res.stats.items == 0


def test_out_of_memory_is_recognised_by_name() -> None:
    class WorkerMemoryError(WorkerCrashedError):
        pass

    assert failure_kind(WorkerMemoryError(3, -9)) == MEMORY
    assert failure_kind(WorkerCrashedError(3, -9)) == "crashed"
    assert failure_kind(ValueError()) == RAISED


def _titles(svg: str) -> list[str]:
    root = ET.fromstring(svg)
    return [bar.findtext(f"{SVG}title") or "" for bar in root.iter(f"{SVG}rect")]


def _covered(titles: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for title in titles:
        for outcome, items in stats_cases.title_counts(title):
            out[outcome] = out.get(outcome, 0) + items
    return out


def test_render_draws_each_visible_item_with_its_index() -> None:
    bars: list[Bar] = [(i % 2, i * 0.1, i * 0.1 + 0.09, i, 1, OK) for i in range(10)]
    bars[4] = (0, 0.4, 0.49, 4, 1, TIMED_OUT)
    titles = [t for t in _titles(render(bars, [(0, 0.49, "kill")], 0.0, 1.0)) if t]
    assert len(titles) == 10
    assert "item 4: timed out, 90.0 ms" in titles
    indexes = {int(m.group(1)) for t in titles if (m := re.match(r"item (\d+)", t))}
    assert indexes == set(range(10))


def test_render_merges_bars_narrower_than_a_pixel() -> None:
    n = 100_000
    bars: list[Bar] = [(0, i * 1e-5, i * 1e-5 + 9e-6, i, 1, OK) for i in range(n)]
    for i in range(0, n, 3):  # a third fail, interleaved: runs hold both
        bars[i] = (0, i * 1e-5, i * 1e-5 + 9e-6, i, 1, RAISED)
    svg = render(bars, [], 0.0, 1.0)
    titles = [t for t in _titles(svg) if t]
    assert len(titles) <= WIDTH + 3
    assert _covered(titles) == {"succeeded": n - 33_334, "raised": 33_334}
    root = ET.fromstring(svg)
    # Runs of mostly successes show their failures as a strip.
    assert len(root.findall(f"{SVG}rect[@class='minor']")) == len(titles)


def test_a_lone_failure_among_long_items_keeps_its_own_bar() -> None:
    bars: list[Bar] = [
        (0, 0.0, 0.4, 0, 1, OK),
        (0, 0.4, 0.4, 1, 1, RAISED),
        (0, 0.4, 1.0, 2, 1, OK),
    ]
    titles = [t for t in _titles(render(bars, [], 0.0, 1.0)) if t]
    assert titles[1].startswith("item 1: raised")


def test_cli_prints_the_table_and_writes_the_timeline(tmp_path: Path) -> None:
    svg = tmp_path / "map.svg"
    proc = run_cli(
        "run",
        "cli_tasks:upper",
        "--workers",
        "2",
        "--stats",
        "--timeline",
        str(svg),
        stdin="alpha\nbeta\ngamma\n",
    )
    assert proc.returncode == 0, proc.stderr
    assert [r["value"] for r in records(proc.stdout)] == ["ALPHA", "BETA", "GAMMA"]
    assert re.search(r"^items\s+3: 3 succeeded, 0 failed", proc.stderr, re.M), proc.stderr
    assert re.search(r"^utilization\s+\d+%", proc.stderr, re.M)
    root = ET.parse(svg).getroot()
    assert len(root.findall(f"{SVG}g[@class='lane']")) == 2


def test_an_endless_stream_keeps_a_bounded_timeline() -> None:
    rec = _stats.Recorder()
    t = rec.t0
    n = 3 * _stats.MAX_BARS
    for i in range(n):
        # One-item slices of 1 ms, the 777th slowest (5 ms), every 10th on lane 1.
        seconds = 0.005 if i == 777 else 0.001
        rec.batch(1 if i % 10 == 0 else 0, i, 1, None, 0.0, [(t, t + seconds, 1)], 0.0)
        t += seconds
    assert len(rec.bars) <= _stats.MAX_BARS
    stats = rec.snapshot(workers=2)
    assert stats.slowest[0][0] == 777 and stats.slowest[0][1] == pytest.approx(0.005)
    assert stats.min == pytest.approx(0.001)
    assert stats.total == pytest.approx((n - 1) * 0.001 + 0.005)
    assert stats.median == pytest.approx(0.001, rel=0.05)
    titles = [t for t in _titles(render(stats._bars, [], stats._t0, t - stats._t0)) if t]
    assert sum(n for _, n in (x for t in titles for x in stats_cases.title_counts(t))) == n
