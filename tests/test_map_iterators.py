"""The generator protocol of imap's and aimap's iterators: send, throw (both
signatures) and close, and the stats they hold once the map is over."""

from __future__ import annotations

import asyncio

import pytest

from parmap import aimap, imap


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
