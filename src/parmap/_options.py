"""Options: validated once, in frozen objects, with messages that name the option.

Options split in two: those that shape the pool of workers (``PoolConfig``)
and those that shape one map (``MapConfig``). A decorator or ``Pool`` holds
defaults for both; a call's keyword arguments override them.
"""

from __future__ import annotations

import math
import multiprocessing
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal, TypedDict

from typing_extensions import Unpack

from ._memory import parse_size, rss_supported

OnError = Literal["raise", "collect"]
StartMethod = Literal["fork", "spawn", "forkserver"]


class MapOptions(TypedDict, total=False):
    """Options of one map (accepted by every map call)."""

    timeout: float | None
    on_error: OnError
    retries: int
    retry_on: type[BaseException] | tuple[type[BaseException], ...]
    chunksize: int | None
    buffer: int | None
    progress: Any
    shared_memory_threshold: int | None
    checkpoint: str | os.PathLike[str] | None


class PoolOptions(TypedDict, total=False):
    """Options that shape the pool of workers."""

    workers: int | None
    initializer: Callable[..., object] | None
    initargs: tuple[Any, ...]
    ignore_signals: bool
    start_method: StartMethod | None
    max_tasks_per_worker: int | None
    max_memory_per_worker: int | str | None
    backend: Any


class Options(MapOptions, PoolOptions, total=False):
    """Every option: what ``parallel`` and the module-level maps accept."""


def usable_cpus() -> int:
    """CPUs this process may run on (affinity-aware where the OS says)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - no sched_getaffinity (macOS)
        return max(1, os.cpu_count() or 1)


def _int_option(name: str, value: object, minimum: int, *, optional: bool) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        kind = "an int or None" if optional else "an int"
        raise TypeError(f"{name} must be {kind}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")


def _normalize_retry_on(value: object) -> tuple[type[BaseException], ...]:
    types = value if isinstance(value, tuple) else (value,)
    for t in types:
        if not (isinstance(t, type) and issubclass(t, BaseException)):
            raise TypeError(f"retry_on must be an exception type or a tuple of them, got {value!r}")
    return types


def _check_progress(value: object) -> None:
    if isinstance(value, bool | Mapping):
        return
    if callable(getattr(value, "update", None)) and callable(getattr(value, "close", None)):
        return
    raise TypeError(
        f"progress must be True/False, a dict of tqdm arguments or a tqdm instance, got {value!r}"
    )


def _check_checkpoint(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, str | os.PathLike):
        path = os.fspath(value)
        if isinstance(path, str) and path:
            return path
    raise TypeError(f"checkpoint must be a path (str or os.PathLike) or None, got {value!r}")


@dataclass(frozen=True, slots=True)
class MapConfig:
    """The validated options of one map."""

    timeout: float | None = None
    on_error: OnError = "raise"
    retries: int = 0
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    chunksize: int | None = None
    buffer: int | None = None
    progress: Any = False
    #: Buffers of at least this many bytes cross through shared memory.
    shared_memory_threshold: int | None = 1 << 20
    checkpoint: str | os.PathLike[str] | None = None  # a str once validated

    def __post_init__(self) -> None:
        t = self.timeout
        if t is not None:
            if isinstance(t, bool) or not isinstance(t, int | float):
                raise TypeError(f"timeout must be a number of seconds or None, got {t!r}")
            if not (t > 0 and math.isfinite(t)):
                raise ValueError(f"timeout must be > 0, got {t!r}")
        if self.on_error not in ("raise", "collect"):
            raise ValueError(f"on_error must be 'raise' or 'collect', got {self.on_error!r}")
        _int_option("retries", self.retries, 0, optional=False)
        object.__setattr__(self, "retry_on", _normalize_retry_on(self.retry_on))
        _int_option("chunksize", self.chunksize, 1, optional=True)
        _int_option("buffer", self.buffer, 1, optional=True)
        _check_progress(self.progress)
        _int_option("shared_memory_threshold", self.shared_memory_threshold, 0, optional=True)
        object.__setattr__(self, "checkpoint", _check_checkpoint(self.checkpoint))


@dataclass(frozen=True, slots=True)
class PoolConfig:
    """The validated options of a pool of workers."""

    workers: int | None = None
    initializer: Callable[..., object] | None = None
    initargs: tuple[Any, ...] = ()
    ignore_signals: bool = True
    start_method: StartMethod | None = None
    max_tasks_per_worker: int | None = None
    #: Bytes (a string such as "512MB" is parsed into them when validated).
    max_memory_per_worker: int | str | None = None
    backend: Any = "process"
    resolved_workers: int = field(init=False, default=0, compare=False)

    def __post_init__(self) -> None:
        _int_option("workers", self.workers, 1, optional=True)
        object.__setattr__(self, "resolved_workers", self.workers or usable_cpus())
        if self.initializer is not None and not callable(self.initializer):
            raise TypeError(f"initializer must be callable or None, got {self.initializer!r}")
        initargs: Any = self.initargs  # untyped callers pass lists, or worse
        if not isinstance(initargs, tuple):
            try:
                object.__setattr__(self, "initargs", tuple(initargs))
            except TypeError:
                raise TypeError(f"initargs must be a tuple, got {self.initargs!r}") from None
        if not isinstance(self.ignore_signals, bool):
            raise TypeError(f"ignore_signals must be a bool, got {self.ignore_signals!r}")
        methods = multiprocessing.get_all_start_methods()
        if self.start_method is not None and self.start_method not in methods:
            raise ValueError(
                f"start_method must be one of {', '.join(map(repr, methods))} or None, "
                f"got {self.start_method!r}"
            )
        _int_option("max_tasks_per_worker", self.max_tasks_per_worker, 1, optional=True)
        backend = self.backend
        if isinstance(backend, str):
            if backend not in ("process", "thread", "serial"):
                raise ValueError(
                    "backend must be 'process', 'thread', 'serial', a "
                    f"concurrent.futures.Executor or a dask Client, got {backend!r}"
                )
        elif not callable(getattr(backend, "submit", None)):
            raise TypeError(
                "backend must be 'process', 'thread', 'serial', a "
                f"concurrent.futures.Executor or a dask Client, got {backend!r}"
            )
        self._check_memory_limit()

    def _check_memory_limit(self) -> None:
        limit = parse_size(self.max_memory_per_worker)
        object.__setattr__(self, "max_memory_per_worker", limit)
        if limit is None:
            return
        if not (isinstance(self.backend, str) and self.backend == "process"):
            # Only worker processes can be measured and killed one by one.
            raise ValueError(
                "max_memory_per_worker needs the process backend (its workers can be "
                f"measured and killed), got backend={self.backend!r}"
            )
        if not rss_supported():
            raise ValueError(
                "max_memory_per_worker needs /proc (Linux) or psutil to read the "
                "workers' memory; neither is available here"
            )

    @property
    def memory_limit(self) -> int | None:
        """``max_memory_per_worker`` in bytes."""
        limit = self.max_memory_per_worker
        assert not isinstance(limit, str)  # parsed by __post_init__
        return limit


MAP_OPTIONS = frozenset(f.name for f in fields(MapConfig))
POOL_OPTIONS = frozenset(f.name for f in fields(PoolConfig) if f.init)


@dataclass(frozen=True, slots=True)
class Defaults:
    """Defaults for both kinds of option, as a decorator or ``Pool`` holds them."""

    pool: PoolConfig = PoolConfig()
    map: MapConfig = MapConfig()

    @classmethod
    def build(cls, **options: Unpack[Options]) -> Defaults:
        """Validate ``options`` into a new ``Defaults``."""
        return cls().merged(options)

    def merged(self, options: Mapping[str, Any], *, pool_options: bool = True) -> Defaults:
        """Return these defaults overridden by ``options``.

        With ``pool_options=False`` (the methods of a ``Pool``, whose workers
        already exist) an option of the pool is rejected with a clear error.
        """
        unknown = set(options) - MAP_OPTIONS - POOL_OPTIONS
        if unknown:
            name = sorted(unknown)[0]
            raise TypeError(f"unexpected option {name!r}")
        pool_part = {k: v for k, v in options.items() if k in POOL_OPTIONS}
        if pool_part and not pool_options:
            name = sorted(pool_part)[0]
            raise TypeError(
                f"{name} is an option of the pool, not of one map; pass it to Pool(...)"
            )
        map_part = {k: v for k, v in options.items() if k in MAP_OPTIONS}
        pool = replace(self.pool, **pool_part) if pool_part else self.pool
        map_ = replace(self.map, **map_part) if map_part else self.map
        return Defaults(pool, map_)
