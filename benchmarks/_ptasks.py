"""``@parallel`` task functions for the benchmarks (imports parmap)."""

from __future__ import annotations

from parmap import parallel


@parallel(workers=2)
def psquare(x: int) -> int:
    return x * x
