"""Static typing of the public API, checked by `mypy --strict` in CI.

At run time (as a test module) the assert_type calls are no-ops; mypy is
what fails when a signature drifts.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator, Iterator
from concurrent.futures import Future
from typing import Any, assert_type

from parmap import (
    Executor,
    MapResult,
    MapStats,
    Outcome,
    Pool,
    WorkerCrashedError,
    WorkerMemoryError,
    imap,
    parallel,
    pmap,
)
from parmap._executor import ExecutorMapIterator
from parmap._iterators import AsyncMapIterator, MapIterator
from parmap._parallel import ParallelFunction


@parallel
def bare(x: int, scale: float = 1.0) -> str:
    return str(x * scale)


@parallel(workers=2, timeout=5, on_error="collect")
def configured(x: int) -> int:
    return x


def _length(s: str) -> int:
    return len(s)


def check_types() -> None:
    assert isinstance(bare, ParallelFunction)
    assert_type(bare(3), str)
    # The signature survives decoration: a wrong argument is a type error
    # (with warn_unused_ignores, this ignore fails the check if it is not).
    bare("3")  # type: ignore[arg-type]
    assert_type(bare(3, scale=2.0), str)
    assert_type(configured(1), int)
    assert_type(configured.pmap([1, 2]), MapResult[int])
    assert_type(configured.imap([1, 2], ordered=True), MapIterator[int])
    assert_type(configured.aimap([1, 2]), AsyncMapIterator[int])
    # What imap and aimap return are still generators of outcomes.
    it: Generator[Outcome[int], None, None] = configured.imap([1, 2])
    ait: AsyncGenerator[Outcome[int], None] = configured.aimap([1, 2])
    assert_type(it, Generator[Outcome[int], None, None])
    assert_type(ait, AsyncGenerator[Outcome[int], None])
    assert_type(configured.imap([1, 2]).stats, MapStats | None)
    assert_type(configured.imap([1, 2]).values(), Iterator[int])
    assert_type(pmap(_length, ["a"], workers=2), MapResult[int])
    assert_type(imap(_length, ["a"]), MapIterator[int])
    with Pool(workers=1) as pool:
        assert_type(pool.pmap(_length, ["a"], timeout=1.0), MapResult[int])
    res = pmap(_length, ["a"])
    assert_type(res[0], int)
    assert_type(res.values, list[int | None])
    assert_type(res.errors, dict[int, BaseException])
    assert_type(res.unwrap(), list[int])
    with Executor(max_workers=1, timeout=2.0) as ex:
        assert_type(ex.submit(_length, "a"), Future[int])
        assert_type(ex.map(_length, ["a"], chunksize=2, buffersize=4), ExecutorMapIterator[int])
        checkpointed = ex.map(_length, ["a"], checkpoint="map.ckpt")
        assert_type(checkpointed.resumed, int)
        assert_type(next(checkpointed), int)
        ex.submit(_length, 3)  # type: ignore[arg-type]
    assert_type(res.resumed, int)
    # max_memory_per_worker takes bytes or a size string, everywhere.
    with Pool(workers=1, max_memory_per_worker="512MB") as pool:
        assert_type(pool.pmap(_length, ["a"]), MapResult[int])
    assert_type(pmap(_length, ["a"], max_memory_per_worker=1 << 30), MapResult[int])
    error = res.errors.get(0)
    if isinstance(error, WorkerMemoryError):
        crashed: WorkerCrashedError = error
        assert_type(crashed.index, int)
        assert_type(error.limit, int)
        assert_type(error.rss, int)
    assert_type(res.stats, MapStats)
    assert_type(res.stats.slowest, tuple[tuple[int, float], ...])
    assert_type(res.stats.to_dict(), dict[str, Any])
    res.stats.timeline("map.svg")
