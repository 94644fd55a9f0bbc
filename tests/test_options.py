"""Bad options are refused at the call, with a message naming the option."""

from __future__ import annotations

import re
from typing import Any

import pytest

from parmap import Pool, parallel, pmap
from parmap._options import Defaults, MapConfig, PoolConfig, usable_cpus

from .jobs import square

BAD: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"workers": 0}, ValueError, "workers must be >= 1, got 0"),
    ({"workers": 1.5}, TypeError, "workers must be an int"),
    ({"timeout": -1}, ValueError, "timeout must be > 0, got -1"),
    ({"timeout": 0}, ValueError, "timeout must be > 0, got 0"),
    ({"timeout": float("inf")}, ValueError, "timeout must be > 0"),
    ({"timeout": "5"}, TypeError, "timeout must be a number"),
    ({"on_error": "ignore"}, ValueError, "on_error must be 'raise' or 'collect', got 'ignore'"),
    ({"retries": -1}, ValueError, "retries must be >= 0, got -1"),
    ({"retry_on": ValueError("x")}, TypeError, "retry_on must be an exception type"),
    ({"retry_on": (ValueError, int)}, TypeError, "retry_on must be an exception type"),
    ({"chunksize": 0}, ValueError, "chunksize must be >= 1, got 0"),
    ({"buffer": 0}, ValueError, "buffer must be >= 1, got 0"),
    ({"progress": "yes"}, TypeError, "progress must be"),
    ({"initializer": 3}, TypeError, "initializer must be callable"),
    ({"start_method": "teleport"}, ValueError, "start_method must be one of"),
    ({"max_tasks_per_worker": 0}, ValueError, "max_tasks_per_worker must be >= 1, got 0"),
    ({"backend": "gpu"}, ValueError, "backend must be 'process'"),
    ({"ignore_signals": "no"}, TypeError, "ignore_signals must be a bool"),
    ({"colour": "blue"}, TypeError, "unexpected option 'colour'"),
]


@pytest.mark.parametrize(("options", "error", "message"), BAD)
def test_bad_options_are_refused_by_every_entry_point(
    options: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=re.escape(message)):
        pmap(square, [1], **options)
    with pytest.raises(error, match=re.escape(message)):
        parallel(**options)
    with pytest.raises(error, match=re.escape(message)):
        Pool(**options)


def test_pool_methods_refuse_options_of_the_pool() -> None:
    with (
        Pool(workers=1) as pool,
        pytest.raises(TypeError, match="workers is an option of the pool"),
    ):
        pool.pmap(square, [1], workers=2)  # type: ignore[call-arg]


def test_call_options_override_defaults() -> None:
    defaults = Defaults.build(workers=3, timeout=5, on_error="collect")
    merged = defaults.merged({"timeout": 1, "retries": 2})
    assert merged.map == MapConfig(timeout=1, on_error="collect", retries=2)
    assert merged.pool == PoolConfig(workers=3)


def test_defaults() -> None:
    config = PoolConfig()
    assert config.resolved_workers == usable_cpus() >= 1
    assert config.ignore_signals is True and config.backend == "process"
    assert MapConfig().on_error == "raise" and MapConfig().retry_on == (Exception,)
    # A single class, as the public options allow; MapConfig makes it a tuple.
    assert MapConfig(retry_on=KeyError).retry_on == (KeyError,)  # type: ignore[arg-type]


def test_bad_function_and_inputs() -> None:
    with pytest.raises(TypeError, match="must be callable"):
        pmap(None, [1])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="input 1 must be an iterable, got int"):
        pmap(square, 5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="at least one iterable"):
        pmap(square)
    with pytest.raises(TypeError, match="needs a callable"):
        parallel(3)  # type: ignore[call-overload]
