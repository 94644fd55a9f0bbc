"""Chaos with real processes: many items, some raising, hanging, exiting or SIGKILLing themselves.

Collect mode must return exactly one outcome per input, of the right kind,
and leave no process behind (the autouse fixture checks the process tree).
``PARMAP_CHAOS_ITEMS`` raises the number of items (the issue's full size is
20,000; the default keeps the suite fast on two cores).
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter

import pytest

from parmap import Pool, TaskTimeoutError, WorkerCrashedError, imap, pmap
from parmap._options import StartMethod

from . import jobs

ITEMS = int(os.environ.get("PARMAP_CHAOS_ITEMS", "20000"))
TIMEOUT = 0.5
WORKERS = 4


def chaos_plan(n: int, seed: int, *, hangs: int) -> list[str]:
    """What each input does: mostly return; a few raise, exit, SIGKILL or hang.

    Hanging is the costly kind (each one holds a worker for ``TIMEOUT``), so
    there is a fixed number of them rather than a fraction.
    """
    rng = random.Random(seed)
    plan = []
    for _ in range(n):
        r = rng.random()
        kind = "raise" if r < 0.02 else "os_exit" if r < 0.023 else "sigkill" if r < 0.026 else "ok"
        plan.append(kind)
    for index in rng.sample(range(n), min(hangs, n)):
        plan[index] = "hang"
    return plan


def check_outcome(index: int, kind: str, value: object, error: BaseException | None) -> None:
    where = f"input {index} ({kind}): {value!r} / {error!r}"
    if kind == "ok":
        assert error is None and value == 2 * index, where
    elif kind == "raise":
        assert type(error) is RuntimeError and str(error) == f"chaos item {index} raised", where
        assert f"parmap: raised for input index {index}" in error.__notes__, where
    elif kind == "hang":
        assert isinstance(error, TaskTimeoutError), where
        assert error.index == index and error.timeout == TIMEOUT, where
    elif kind == "os_exit":
        assert isinstance(error, WorkerCrashedError), where
        assert error.index == index and error.exitcode == 7 and error.signal is None, where
    else:
        assert isinstance(error, WorkerCrashedError), where
        assert error.index == index and error.signal == signal.SIGKILL, where


@pytest.mark.timeout(300)
def test_chaos_collect_mode_gives_one_right_outcome_per_input() -> None:
    plan = chaos_plan(ITEMS, seed=20_000, hangs=max(4, ITEMS // 1000))
    seen: Counter[int] = Counter()
    started = time.monotonic()
    for out in imap(
        jobs.hard_chaos, range(ITEMS), plan, workers=WORKERS, timeout=TIMEOUT, on_error="collect"
    ):
        seen[out.index] += 1
        check_outcome(out.index, plan[out.index], out.value, out.error)
    elapsed = time.monotonic() - started
    duplicated = [i for i, count in seen.items() if count > 1]
    assert not duplicated, f"inputs with more than one outcome: {duplicated[:20]}"
    missing = set(range(ITEMS)) - set(seen)
    assert not missing, f"inputs without an outcome: {sorted(missing)[:20]}"
    print(f"chaos: {ITEMS} items, {Counter(plan)} in {elapsed:.1f} s")


@pytest.mark.timeout(120)
def test_chaos_ordered_with_retries_on_one_reused_pool() -> None:
    """Ordered output, retries of crashes and timeouts, and the pool survives for the next map."""
    n = max(500, ITEMS // 10)
    plan = chaos_plan(n, seed=7, hangs=3)
    with Pool(workers=WORKERS) as pool:
        indexes = []
        for out in pool.imap(
            jobs.hard_chaos,
            range(n),
            plan,
            ordered=True,
            timeout=TIMEOUT,
            on_error="collect",
            retries=1,
            retry_on=(WorkerCrashedError,),
        ):
            indexes.append(out.index)
            # A crash is retried once and crashes again: the error is still a crash.
            check_outcome(out.index, plan[out.index], out.value, out.error)
        assert indexes == list(range(n))
        # The pool is healthy afterwards: every worker was replaced.
        assert pool.pmap(jobs.square, range(50)).values == [x * x for x in range(50)]


@pytest.mark.timeout(120)
def test_chaos_raise_mode_stops_at_a_failure_and_leaves_nothing() -> None:
    plan = ["ok"] * 300
    plan[150] = "sigkill"
    plan[10] = "hang"
    started = time.monotonic()
    with pytest.raises((WorkerCrashedError, TaskTimeoutError)) as info:
        pmap(jobs.hard_chaos, range(300), plan, workers=WORKERS, timeout=TIMEOUT)
    assert getattr(info.value, "index", None) in (10, 150)
    assert time.monotonic() - started < 30


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
@pytest.mark.timeout(120)
def test_chaos_with_slow_starting_workers(method: StartMethod) -> None:
    """Replacements that take a while to start (spawn, forkserver) still get the work right."""
    rng = random.Random(method)
    plan = ["ok"] * 400
    kinds = ["os_exit", "sigkill"] * 3 + ["hang"] * 2
    for index, kind in zip(rng.sample(range(400), len(kinds)), kinds, strict=True):
        plan[index] = kind
    with Pool(workers=3, start_method=method) as pool:
        result = pool.pmap(jobs.hard_chaos, range(400), plan, timeout=TIMEOUT, on_error="collect")
    assert len(result) == 400
    for index, kind in enumerate(plan):
        check_outcome(index, kind, result.values[index], result.errors.get(index))
