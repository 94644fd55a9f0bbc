"""Where items run: worker processes, threads, the caller, an Executor, dask."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._options import PoolConfig
from .base import Backend


def make_backend(config: PoolConfig, *, preload: Callable[..., Any] | None = None) -> Backend:
    """Build the backend that ``config.backend`` names."""
    if config.backend == "process":
        from .process import ProcessBackend

        return ProcessBackend(config, preload=preload)
    raise NotImplementedError(f"backend {config.backend!r} is not available yet")
