"""What is particular to the dask backend, against a real local cluster.

The behaviour every backend shares (order, errors, retries, laziness,
progress, timeouts, async) is in ``test_backends``; here: items really run on
the cluster's workers, the pool is sized from the cluster, cancelled work
leaves the cluster, and the client stays the caller's.

The cluster (two worker processes of one thread each, on 127.0.0.1) is
module-scoped: it is started before the leak fixture of the first test looks
at this process's children, and closed with its processes after the last.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from parmap import Pool, TaskTimeoutError, apmap, pmap

from . import jobs
from .checks import eventually
from .dask_cluster import local_client, wait_until_idle

distributed = pytest.importorskip("distributed")

SLOW, TIMEOUT = 1.5, 0.5


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    with local_client() as client:
        yield client


def parmap_tasks(client: Any) -> list[str]:
    """Keys of parmap's tasks the dask scheduler still knows about."""

    def keys(dask_scheduler: Any) -> list[str]:
        return [str(k) for k in dask_scheduler.tasks if str(k).startswith("parmap-chunk-")]

    found: list[str] = client.run_on_scheduler(keys)
    return found


def wait_until_forgotten(client: Any) -> None:
    eventually(
        lambda: not parmap_tasks(client),
        within=30,
        message=lambda: f"the scheduler still holds {parmap_tasks(client)}",
        every=0.05,
    )


def test_items_run_on_the_cluster_workers(client: Any) -> None:
    worker_pids = set(client.run(os.getpid).values())
    assert len(worker_pids) == 2
    res = pmap(jobs.getpid, range(40), chunksize=1, backend=client)
    assert set(res.values) <= worker_pids
    assert os.getpid() not in res.values
    wait_until_forgotten(client)  # finished chunks are released, not left on the cluster


def test_pool_size_defaults_to_the_cluster_threads(client: Any) -> None:
    with Pool(backend=client) as pool:
        assert pool._get_engine().sched.workers == 2
        assert pool.pmap(jobs.square, range(5)).values == [0, 1, 4, 9, 16]
    with Pool(backend=client, workers=5) as pool:
        assert pool._get_engine().sched.workers == 5


def test_the_same_parallel_function_moves_to_the_cluster(client: Any) -> None:
    # The README's example: the decorated function keeps its options
    # (workers=3, on_error="collect"); only the backend changes.
    task = jobs.backends_seed_task
    try:
        res = task.pmap(range(10), backend=client)
    finally:
        task.close()
    assert res.values == [None, 1, 2, None, 4, 5, None, 7, 8, None]
    assert sorted(res.errors) == [0, 3, 6, 9]
    assert jobs.decorated_square.pmap(range(4), backend=client).values == [0, 1, 4, 9]


def test_a_timed_out_task_is_cancelled_and_reported(client: Any) -> None:
    start = time.monotonic()
    res = pmap(
        jobs.backends_sleep_on,
        range(4),
        [1] * 4,
        [SLOW] * 4,
        timeout=TIMEOUT,
        on_error="collect",
        backend=client,
    )
    assert time.monotonic() - start < SLOW
    assert res.values == [0, None, 2, 3]
    assert isinstance(res.errors[1], TaskTimeoutError)
    wait_until_forgotten(client)  # the scheduler dropped it even while it still runs
    wait_until_idle(client)


def test_stopping_a_map_cancels_its_queued_tasks(client: Any, tmp_path: Path) -> None:
    # Six slots on two threads: four tasks wait on the cluster when the first
    # one fails; raise mode cancels them, so most never run.
    n = 6
    seconds = [0.0] + [SLOW] * (n - 1)
    with pytest.raises(ValueError, match="bad 0"):
        pmap(
            jobs.backends_fail_first_else_slow,
            range(n),
            seconds,
            [str(tmp_path)] * n,
            workers=n,
            backend=client,
        )
    wait_until_idle(client)
    ran = sorted(p.name for p in tmp_path.glob("*.done"))
    assert len(ran) < n - 1, ran
    wait_until_forgotten(client)


def test_apmap_on_the_cluster(client: Any) -> None:
    res = asyncio.run(apmap(jobs.fail_every_third, range(10), on_error="collect", backend=client))
    assert res.values == [None, 1, 2, None, 4, 5, None, 7, 8, None]
    assert "Traceback" in str(res.errors[3].__cause__)


def test_an_asynchronous_client_is_refused(client: Any) -> None:
    async def main() -> None:
        async with distributed.Client(client.scheduler.address, asynchronous=True) as aclient:
            with pytest.raises(TypeError, match="synchronous dask Client"):
                await apmap(jobs.square, [1], backend=aclient)

    asyncio.run(main())


def test_the_client_stays_open(client: Any) -> None:
    pmap(jobs.square, range(3), backend=client)
    with Pool(backend=client) as pool:
        pool.pmap(jobs.square, range(3))
    assert client.status == "running"
    assert client.submit(jobs.square, 3, pure=False).result(timeout=60) == 9
