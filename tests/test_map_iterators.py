"""The generator protocol of imap's and aimap's iterators: send, throw (both
signatures) and close, the stats they hold once the map is over, and
``values()``, the values without their outcomes."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from parmap import Outcome, Pool, aimap, imap, pmap

from . import jobs


def _inc(x: int) -> int:
    return x + 1


def test_send_takes_outcomes_and_ends_with_stats() -> None:
    it = imap(_inc, range(3), backend="serial")
    assert it.send(None).value == 1
    assert next(it).value == 2
    assert it.send(None).value == 3
    before = it.stats
    with pytest.raises(StopIteration):
        it.send(None)
    assert before is None
    after = it.stats
    assert after is not None
    assert after.items == 3


@pytest.mark.parametrize(
    ("typ", "val", "message"),
    [
        (ValueError, None, ""),
        (ValueError, "by value", "by value"),
        (ValueError, ValueError("an instance"), "an instance"),
        (ValueError("thrown"), None, "thrown"),
    ],
)
def test_throw_raises_inside_the_map(typ: object, val: object, message: str) -> None:
    it = imap(_inc, range(5), backend="serial")
    next(it)
    with pytest.raises(ValueError, match=f"^{message}$"):
        it.throw(typ, val)  # type: ignore[arg-type]
    with pytest.raises(StopIteration):
        next(it)


def test_close_stops_the_map() -> None:
    it = imap(_inc, range(5), backend="serial")
    next(it)
    it.close()
    with pytest.raises(StopIteration):
        next(it)


def test_async_iterator_throw_and_close() -> None:
    async def main() -> tuple[str, bool]:
        it = aimap(_inc, range(5), backend="serial")
        await it.asend(None)
        try:
            await it.athrow(KeyError, "inside")
        except KeyError as exc:
            text = str(exc)
        it2 = aimap(_inc, range(5), backend="serial")
        await it2.__anext__()
        await it2.aclose()
        try:
            await it2.__anext__()
        except StopAsyncIteration:
            return text, it2.stats is not None
        return text, False

    assert asyncio.run(main()) == ("'inside'", True)


# ------------------------------------------------------------- values()


def _lines(n: int) -> list[str]:
    return [f"{i:06d} the quick brown fox jumps over the lazy dog, naïve café" for i in range(n)]


@pytest.mark.parametrize("ordered", [True, False])
def test_values_are_the_outcomes_values_without_outcomes(ordered: bool) -> None:
    lines = _lines(20_000)
    with Pool(workers=2) as pool:
        it = pool.imap(str.upper, lines, ordered=ordered, chunksize=500)
        values = it.values()
        assert not isinstance(values, Outcome)
        got = list(values)
        assert it.stats is not None and it.stats.items == len(lines)
        expected = [s.upper() for s in lines]
        assert got == expected if ordered else sorted(got) == expected
        outcomes = [o.value for o in pool.imap(str.upper, lines, ordered=True)]
        assert outcomes == expected


def test_values_raise_each_error_in_place_and_go_on() -> None:
    it = imap(jobs.fail_every_third, range(30), workers=2, ordered=True, on_error="collect")
    values = it.values()
    got: list[object] = []
    while True:
        try:
            got.append(next(values))
        except StopIteration:
            break
        except RuntimeError as exc:
            got.append(str(exc))
    assert got == [f"task {i} failed" if i % 3 == 0 else i for i in range(30)]
    assert it.stats is not None and it.stats.failed == 10


def test_values_end_with_the_maps_error_and_stats() -> None:
    it = imap(jobs.fail_every_third, range(1, 30), workers=2, ordered=True, chunksize=1)
    with pytest.raises(RuntimeError, match="task 3 failed"):
        list(it.values())
    assert it.stats is not None


def test_values_and_outcomes_do_not_mix() -> None:
    it = imap(_inc, range(5), backend="serial")
    next(it)
    with pytest.raises(RuntimeError, match="before any outcome"):
        it.values()
    it.close()
    it = imap(_inc, range(5), backend="serial")
    values = it.values()
    with pytest.raises(RuntimeError, match="took its outcomes"):
        next(it)
    assert list(values) == [1, 2, 3, 4, 5]


def test_close_stops_values_and_cancels_the_rest() -> None:
    with Pool(workers=2) as pool:
        it = pool.imap(
            jobs.sleep_return, [0.0] * 400 + [30.0] * 4, range(404), chunksize=100, ordered=True
        )
        values = it.values()
        assert next(values) == 0
        it.close()
        # The rest of the segment already received is not given either.
        assert list(values) == []
        assert it.stats is None
        # The workers were freed: the next map does not wait 30 s behind it.
        assert pool.pmap(_inc, range(4), timeout=20).unwrap() == [1, 2, 3, 4]


def _leave_at(it: Iterator[object], n: int) -> None:
    for seen, _ in enumerate(it):
        if seen == n:
            raise KeyError("the consumer broke")


@pytest.mark.parametrize("take", ["outcomes", "values"])
def test_leaving_the_loop_frees_the_map_without_the_cycle_collector(
    take: str, tmp_path: Path
) -> None:
    # Nothing the iterator owns may refer back to it: dropped, it must stop
    # its map and release its checkpoint at once, not when gc gets to it.
    ck = tmp_path / "ck.sqlite"
    gc.disable()
    try:
        it = imap(jobs.square, range(300), workers=2, ordered=True, checkpoint=ck)
        with pytest.raises(KeyError):
            _leave_at(it.values() if take == "values" else it, 20)
        del it
        res = pmap(jobs.square, range(300), workers=2, checkpoint=ck)
    finally:
        gc.enable()
    assert res.values == [i * i for i in range(300)]
    assert res.resumed >= 21
