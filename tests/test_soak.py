"""Soak: many consecutive maps leave the parent as they found it.

File descriptors, child processes, threads and resident memory of the parent
are measured after a warm-up and again at the end. Maps on one long-lived
pool are cheap, so that test runs the issue's full 2000 by default; a fresh
pool per map costs a few milliseconds of process start-up, so those tests run
fewer unless ``PARMAP_SOAK`` (the number of maps for every test) says more.
"""

from __future__ import annotations

import asyncio
import gc
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import psutil
import pytest

from parmap import Pool, imap, pmap

from . import jobs
from .procs import running_children

SOAK = os.environ.get("PARMAP_SOAK")
MAPS = int(SOAK or 2000)
POOL_MAPS = int(SOAK or 300)
WARMUP = 20
ITEMS = list(range(20))
SQUARES = [x * x for x in ITEMS]
#: Allocator noise; a leak of even 2 KiB per map shows above this at 2000 maps.
RSS_SLACK = 4 << 20


@dataclass(frozen=True)
class Usage:
    fds: int
    children: int
    threads: int
    rss: int


def usage() -> Usage:
    gc.collect()
    me = psutil.Process()
    children = len(running_children())
    return Usage(me.num_fds(), children, threading.active_count(), me.memory_info().rss)


def soak(one_map: Callable[[int], None], maps: int) -> tuple[Usage, Usage, float]:
    for i in range(WARMUP):
        one_map(i)
    start = usage()
    began = time.monotonic()
    for i in range(maps):
        one_map(i)
    took = time.monotonic() - began
    return start, usage(), took


def assert_flat(start: Usage, end: Usage, *, children: int, maps: int) -> None:
    assert end.fds <= start.fds, f"file descriptors grew: {start.fds} -> {end.fds}"
    assert start.children == end.children == children, (start, end)
    assert end.threads <= start.threads, f"threads grew: {start.threads} -> {end.threads}"
    grown = end.rss - start.rss
    assert grown <= RSS_SLACK, f"RSS grew by {grown / 2**20:.1f} MiB over {maps} maps"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_one_decorated_function_maps_many_times_without_leaking() -> None:
    task = jobs.decorated_square  # two workers, kept between maps

    def one_map(i: int) -> None:
        kind = i % 3
        if kind == 0:
            assert task.pmap(ITEMS).values == SQUARES
        elif kind == 1:
            assert sorted(out.unwrap() for out in task.imap(ITEMS)) == SQUARES
        else:
            assert asyncio.run(task.apmap(ITEMS)).values == SQUARES

    try:
        start, end, took = soak(one_map, MAPS)
    finally:
        task.close()
    print(f"{MAPS} maps on one @parallel function in {took:.1f} s: {start} -> {end}")
    assert_flat(start, end, children=2, maps=MAPS)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_fresh_pools_and_module_level_maps_leave_nothing_behind() -> None:
    def one_map(i: int) -> None:
        if i % 2:
            assert pmap(jobs.square, ITEMS, workers=2).values == SQUARES
            return
        with Pool(workers=2) as pool:
            assert pool.pmap(jobs.square, ITEMS).values == SQUARES
            assert [o.value for o in pool.imap(jobs.square, ITEMS, ordered=True)] == SQUARES

    start, end, took = soak(one_map, POOL_MAPS)
    print(f"{POOL_MAPS} fresh pools in {took:.1f} s: {start} -> {end}")
    assert_flat(start, end, children=0, maps=POOL_MAPS)


@pytest.mark.timeout(300)
def test_maps_that_fail_time_out_and_crash_leave_nothing_behind() -> None:
    """The error paths (kill, respawn, abort) leak nothing either."""
    plan = ["ok", "raise", "hang", "sigkill", "os_exit", "ok"]
    rounds = max(10, POOL_MAPS // 30)

    def one_map(i: int) -> None:
        with Pool(workers=3) as pool:
            res = pool.pmap(jobs.hard_chaos, range(6), plan, timeout=0.2, on_error="collect")
            assert sorted(res.errors) == [1, 2, 3, 4]
            # Whichever fast failure comes first (the raise, the SIGKILL or
            # the exit) stops the map: that depends on how items are chunked.
            with pytest.raises(RuntimeError, match=r"item [134]"):
                pool.pmap(jobs.hard_chaos, range(6), plan, timeout=0.2)
            for out in imap(jobs.square, range(10**9), workers=2):
                if out.index >= 5:
                    break

    for i in range(3):
        one_map(i)
    start = usage()
    for i in range(rounds):
        one_map(i)
    end = usage()
    print(f"{rounds} failing rounds: {start} -> {end}")
    assert_flat(start, end, children=0, maps=rounds)
