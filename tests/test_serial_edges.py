"""The serial backend's edges: an initializer interrupted by Ctrl-C, a pool
used after it was closed."""

from __future__ import annotations

import pytest

from parmap import Pool


def _interrupt() -> None:
    raise KeyboardInterrupt


def _inc(x: int) -> int:
    return x + 1


def test_ctrl_c_in_a_serial_initializer_reaches_the_caller() -> None:
    with Pool(backend="serial", initializer=_interrupt) as pool, pytest.raises(KeyboardInterrupt):
        pool.pmap(_inc, range(3))


def test_a_closed_pool_refuses_maps() -> None:
    pool = Pool(backend="serial")
    assert pool.pmap(_inc, range(2)).values == [1, 2]
    pool.close()
    with pytest.raises(RuntimeError, match="closed"):
        pool.pmap(_inc, range(2))
