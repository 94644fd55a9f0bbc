"""Hypothesis over item sizes and function speeds, run as a script.

``python -m tests.transport_hypothesis`` draws maps whose items and results
range from empty to a few megabytes and whose items take from nothing to a
few milliseconds, and checks every result. The test runs it in a subprocess
with a hard time limit, so that a map that hangs fails instead of stalling.
"""

from __future__ import annotations

import time
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from parmap import Pool

SIZES = st.sampled_from([0, 1, 100, 4_000, 70_000, 300_000, 1 << 20, 3 << 20])


def resize(item: tuple[int, int, float]) -> bytes:
    """Return ``out`` bytes derived from the input, after ``delay`` seconds."""
    seed, out, delay = item
    if delay:
        time.sleep(delay)
    return bytes([seed % 251]) * out


def main() -> None:
    pool = Pool(workers=2)

    @settings(max_examples=40, deadline=None, database=None)
    @given(
        items=st.lists(
            st.tuples(st.integers(0, 10_000), SIZES, st.sampled_from([0.0, 0.0, 0.0005, 0.003])),
            min_size=1,
            max_size=120,
        ),
        pad=SIZES,
        chunksize=st.sampled_from([None, 1, 7]),
        ordered=st.booleans(),
    )
    def check(items: list[Any], pad: int, chunksize: int | None, ordered: bool) -> None:
        padded = [(seed, out, delay, b"p" * pad) for seed, out, delay in items]
        outs = list(pool.imap(_resize_padded, padded, chunksize=chunksize, ordered=ordered))
        assert sorted(out.index for out in outs) == list(range(len(items)))
        for out in outs:
            seed, size, _ = items[out.index]
            assert out.unwrap() == bytes([seed % 251]) * size

    try:
        check()
    finally:
        pool.close()
    print("ok")


def _resize_padded(item: tuple[int, int, float, bytes]) -> bytes:
    return resize(item[:3])


if __name__ == "__main__":
    main()
