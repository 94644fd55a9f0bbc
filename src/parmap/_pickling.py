"""Sending the mapped function to workers."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any

from . import _shm
from ._callables import callable_name
from ._worker import PROTOCOL


def dump_function(
    fn: Callable[..., Any], start_method: str | None, threshold: int | None = None
) -> bytes | _shm.Pickled:
    """Pickle ``fn`` for a worker, by reference where possible.

    Lambdas, closures and notebook functions cannot be pickled by reference;
    ``cloudpickle`` sends them by value when it is installed. With a
    ``threshold``, large buffers bound into the function (a partial's array)
    go to shared memory once, for every worker of the map.
    """
    if threshold is not None and _shm.AVAILABLE:
        try:
            return _shm.dumps(fn, threshold)
        except Exception:
            pass
        try:
            import cloudpickle  # type: ignore[import-untyped, unused-ignore]

            return _shm.dumps(fn, threshold, dump=cloudpickle.dumps)
        except Exception:
            pass  # the plain path below raises the clear error
    return _dump_function(fn, start_method)


def _dump_function(fn: Callable[..., Any], start_method: str | None) -> bytes:
    try:
        return pickle.dumps(fn, PROTOCOL)
    except Exception as exc:
        try:
            import cloudpickle  # type: ignore[import-untyped, unused-ignore]
        except ImportError:
            name = callable_name(fn, module=False)
            how = f"worker processes ({start_method!r} start method)" if start_method else "workers"
            raise TypeError(
                f"cannot send function {name} to {how}: it cannot be pickled "
                f"({type(exc).__name__}: {exc}). Define it at module level, install "
                "cloudpickle (pip install 'parmap[cloudpickle]'), or, on Linux, call the "
                "module-level pmap/imap or a @parallel function with start_method='fork'"
            ) from exc
        try:
            data: bytes = cloudpickle.dumps(fn, protocol=PROTOCOL)
        except Exception as again:
            name = callable_name(fn, module=False)
            raise TypeError(
                f"cannot send function {name} to worker processes: neither pickle nor "
                f"cloudpickle can serialize it ({type(again).__name__}: {again}). Define "
                "it at module level, or use backend='thread'"
            ) from again
        return data
