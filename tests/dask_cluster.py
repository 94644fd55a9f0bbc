"""The one local dask cluster the tests use: real worker processes on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def local_client() -> Iterator[Any]:
    """A client of a two-process LocalCluster, closed (with its workers) on exit."""
    from distributed import Client, LocalCluster

    # dashboard_address=":0": None still opened the dashboard on port 8787,
    # which clashes between concurrent test runs.
    with (
        LocalCluster(  # type: ignore[no-untyped-call]  # distributed leaves it unannotated
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=":0",
        ) as cluster,
        Client(cluster) as client,  # type: ignore[no-untyped-call]  # as LocalCluster
    ):
        yield client


def wait_until_idle(client: Any) -> None:
    """Run a probe on every worker: returns once each has a free thread again
    (abandoned tasks keep a dask worker's thread until they end)."""
    from .jobs import square

    workers = list(client.scheduler_info()["workers"])
    probes = [client.submit(square, 2, workers=[w], pure=False) for w in workers]
    assert [probe.result(timeout=60) for probe in probes] == [4] * len(workers)
