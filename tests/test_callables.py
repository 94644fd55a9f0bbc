"""The small facts parmap takes from a mapped callable: a key and a name (``_callables``)."""

from __future__ import annotations

import functools
import gc
import weakref
from typing import Any

import numpy as np

from parmap import parallel
from parmap._callables import callable_name, function_key

from . import jobs


def test_the_key_names_the_code_and_holds_nothing_of_the_callable() -> None:
    readings = np.linspace(0.0, 1.0, 1 << 16)
    first = functools.partial(jobs.array_sum, readings)
    key = function_key(first)
    assert key == function_key(functools.partial(jobs.array_sum, readings[:10]))
    assert key != function_key(jobs.square)
    assert function_key(parallel(first)) == key  # a decorated one: its function's key
    ref = weakref.ref(first)
    del first
    gc.collect()
    assert ref() is None  # the key kept nothing alive
    assert all(part is None or type(part) in (str, int) for part in key)


def test_every_callable_has_a_hashable_key() -> None:
    class Hostile:
        def __getattr__(self, name: str) -> Any:
            raise RuntimeError(f"no {name}")

        def __call__(self, x: int) -> int:
            return x

    callables: list[Any] = [
        jobs.Scale(2.0),  # unhashable
        jobs.Scale(2.0).__call__,
        "text".upper,
        pow,
        lambda x: x,
        Hostile(),
    ]
    keys = [function_key(fn) for fn in callables]
    assert len({hash(key) for key in keys}) == len(keys)
    # Instances of one class share a key, decorated or not.
    assert function_key(jobs.Scale(2.0)) == function_key(parallel(jobs.Scale(5.0)))


def test_a_name_is_short_and_never_raises() -> None:
    big = functools.partial(jobs.array_sum, np.zeros(1 << 20))
    assert callable_name(big) == "functools.partial(tests.jobs.array_sum, ...)"
    assert callable_name(jobs.square) == "tests.jobs.square"
    assert callable_name(jobs.square, module=False) == "square"
    assert callable_name(pow) == "pow"
    assert callable_name(jobs.Scale(2.5)) == "Scale(factor=2.5)"

    class BadRepr:
        def __repr__(self) -> str:
            raise ValueError("no repr")

    assert "BadRepr" in callable_name(BadRepr())
