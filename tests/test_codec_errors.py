"""Error payloads of exceptions that fight back, tracebacks dropped through
cycles and groups, and the function cache's size."""

from __future__ import annotations

from typing import TypeVar

from parmap._codec import FunctionCache, drop_tracebacks, encode_error


class _Hostile(Exception):
    def __str__(self) -> str:
        raise KeyboardInterrupt

    @property
    def __notes__(self) -> list[str]:  # type: ignore[override] # traceback.format_exception reads it unguarded
        raise RuntimeError("no notes")


E = TypeVar("E", bound=BaseException)


def _raised(exc: E) -> E:
    try:
        raise exc
    except BaseException:
        return exc


def test_an_error_whose_str_raises_keyboard_interrupt_is_still_described() -> None:
    exc = _raised(_Hostile())
    data, name, message, tb = encode_error(exc)
    assert name.endswith("_Hostile")
    assert message == "<str() of the exception failed>"
    assert tb.startswith("Traceback (most recent call last):\n")
    assert "_raised" in tb
    assert tb.endswith(f"{name}: {message}\n")
    assert data is not None  # it pickles all the same


def test_drop_tracebacks_follows_cycles_and_groups() -> None:
    a = _raised(ValueError("a"))
    b = _raised(KeyError("b"))
    a.__context__ = b
    b.__context__ = a  # a cycle: visited once each
    inner = _raised(OSError("inner"))
    group = _raised(ExceptionGroup("g", [inner, a]))
    assert inner.__traceback__ is not None
    assert drop_tracebacks(group) is group
    for e in (group, inner, a, b):
        assert e.__traceback__ is None


def test_function_cache_forgets_the_oldest_beyond_its_size() -> None:
    cache: FunctionCache[int] = FunctionCache(2)
    cache.put(1, len)
    cache.put(2, abs)
    cache.put(3, repr)
    assert len(cache) == 2
    assert cache.get(1) is None
    assert cache.get(3) is repr
    cache.forget(3)
    assert len(cache) == 1
