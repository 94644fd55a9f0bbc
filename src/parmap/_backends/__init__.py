"""Where items run: worker processes, threads, the caller, an Executor, dask.

=================  =============================  ===================  =========================
backend            a timed-out item               must be picklable    choose it for
=================  =============================  ===================  =========================
``"process"``      its worker is killed           function, args,      CPU-bound Python
                                                  results (fork: not
                                                  the function)
``"thread"``       abandoned (runs on, result     nothing              I/O-bound or unpicklable
                   discarded)                                          work
``"serial"``       reported after it ends         nothing              debugging (pdb, tracebacks)
Executor           cancelled if queued, else      as the executor      an executor you already
                   abandoned                      needs                have
dask ``Client``    cancelled if queued, else      function, args,      more than one machine
                   abandoned                      results
=================  =============================  ===================  =========================
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from .._options import PoolConfig
from .base import Backend


def make_backend(config: PoolConfig, *, preload: Callable[..., Any] | None = None) -> Backend:
    """Build the backend that ``config.backend`` names.

    Raises ``TypeError`` for an object that is neither a backend name, an
    ``Executor`` nor a dask ``Client``, and ``ValueError`` for an option the
    backend cannot honour (an ``initializer`` for an executor or dask).
    """
    backend = config.backend
    if isinstance(backend, str):
        if backend == "process":
            from .process import ProcessBackend

            return ProcessBackend(config, preload=preload)
        if backend == "thread":
            from .thread import ThreadBackend

            return ThreadBackend(config, preload=preload)
        if backend == "serial":
            from .serial import SerialBackend

            return SerialBackend(config, preload=preload)
    from .dask import DaskBackend, is_dask_client

    if is_dask_client(backend):
        return DaskBackend(backend, config, preload=preload)
    if isinstance(backend, Executor):
        from .executor import ExecutorBackend

        return ExecutorBackend(backend, config, preload=preload)
    raise TypeError(
        "backend must be 'process', 'thread', 'serial', a concurrent.futures.Executor "
        f"or a dask Client, got {backend!r}"
    )
