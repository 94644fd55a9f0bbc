"""A dask cluster, through the caller's ``distributed.Client`` (``backend=client``).

This is how a map goes beyond one machine: point it at
``Client("tcp://scheduler:8786")`` and each chunk runs as one dask task on
the cluster's workers. parmap never closes the client. Results come back in
input order with captured exceptions, exactly as from worker processes:
chunks are pickled by parmap (the function with ``cloudpickle`` when plain
pickle cannot send it), run by ``_codec.run_chunk`` on a dask worker, and
their outcomes decoded here. ``parmap`` (and ``cloudpickle`` for lambdas and
closures) must be installed on the workers, and the mapped function importable
there.

Everything else is the executor backend's (see ``executor``): a map with a
``timeout`` sends one item per task and measures it from submission (time
queued on a busy cluster counts); a timed-out task is cancelled, which drops
it from the cluster's queue but cannot stop a dask worker thread already
running it: that work is abandoned, its result discarded. A task that fails
as a whole (``KilledWorker`` after dask's own retries) fails its item.

The pool has one slot per dask worker thread (``client.nthreads()``, asked
once when the pool starts) unless ``workers`` says otherwise. Submitting and
cancelling never wait for the cluster, and results are fetched in dask's
callback thread, so ``apmap`` does not block the event loop. The client must
be a synchronous one (not created with ``asynchronous=True``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from .._options import PoolConfig
from .executor import ExecutorBackend


def is_dask_client(obj: object) -> bool:
    """True for a ``distributed.Client`` (without importing dask otherwise)."""
    import sys

    distributed = sys.modules.get("distributed")
    return distributed is not None and isinstance(obj, distributed.Client)


class DaskBackend(ExecutorBackend):
    """Worker slots whose chunks run as tasks on a dask cluster."""

    kind = "a dask Client"

    def __init__(
        self, client: Any, config: PoolConfig, *, preload: Callable[..., Any] | None = None
    ) -> None:
        if getattr(client, "asynchronous", False):
            raise TypeError(
                "backend must be a synchronous dask Client; this one was created with "
                "asynchronous=True (create another with Client(address) for parmap)"
            )
        super().__init__(client, config, preload=preload)

    @staticmethod
    def _runs_here(target: Any) -> bool:
        return False

    @staticmethod
    def _initializer_advice() -> str:
        return "set up dask workers with a WorkerPlugin (client.register_plugin(...))"

    def _default_workers(self, config: PoolConfig) -> int:
        if config.workers is not None:
            return config.workers
        threads: dict[str, int] = self._target.nthreads()
        return max(1, sum(threads.values()))

    def _submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self._target.submit(fn, *args, pure=False, key=f"parmap-chunk-{uuid.uuid4().hex}")

    def _cancel(self, futures: list[Any]) -> None:
        # At interpreter exit the client may be closed before our pools are;
        # its tasks are gone with it then.
        with suppress(Exception):
            self._target.cancel(futures)
