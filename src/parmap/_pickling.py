"""Sending the mapped function to workers.

A function normally travels by reference (module and name) and the worker
imports it. That fails in two ways:

* plain pickle refuses the function (a lambda, a closure): ``cloudpickle``
  sends it by value when it is installed;
* plain pickle accepts it, but the worker cannot look the name up. This is
  the case of a ``__main__`` that has no file (a Jupyter or IPython session,
  ``python -c``, a script read from stdin): the user's namespace *is*
  ``sys.modules["__main__"]``, so pickle finds the function there, while a
  spawned or forkserver worker has no such ``__main__`` to import. Only a
  forked worker, which inherits the parent's memory, has it.

So a function that refers to such a ``__main__`` goes by value too, and
without cloudpickle it fails at once, not item by item in the workers.

Large buffers bound into the function (a partial's array) go to shared
memory once per map when a threshold is given (see ``_shm``).
"""

from __future__ import annotations

import io
import pickle
import sys
import types
from collections.abc import Callable
from typing import Any

from . import _shm
from ._callables import callable_name
from ._codec import PROTOCOL


def main_has_no_file() -> bool:
    """Whether ``__main__`` is a namespace no worker can import (notebook, ``-c``)."""
    main = sys.modules.get("__main__")
    return main is not None and getattr(main, "__file__", None) is None


def _from_main(obj: object) -> bool:
    return getattr(obj, "__module__", None) == "__main__"


class _ReferencePickler(pickle.Pickler):
    """Plain pickle that notes whether anything is looked up in ``__main__``.

    ``reducer_override`` sees every function, class and instance on the way
    (not ints, strings and plain containers), so a ``__main__`` function
    nested in a ``functools.partial`` or an instance of a ``__main__`` class
    is noticed too. Large buffers are left out of the stream: this pass only
    decides how the function travels.
    """

    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file, PROTOCOL, buffer_callback=lambda buffer: False)
        self.uses_main = False

    def reducer_override(self, obj: Any) -> Any:
        from ._parallel import ParallelFunction  # _parallel imports this module

        decorated = isinstance(obj, ParallelFunction)
        if (decorated or isinstance(obj, types.FunctionType | type)) and _from_main(obj):
            self.uses_main = True
            if decorated:
                # A @parallel function pickles by value when __main__ has no
                # file (see its __reduce__); a forked worker can still find
                # it by name, which needs no cloudpickle.
                return obj.__dict__["__qualname__"]
        return NotImplemented


def _no_cloudpickle(fn: Callable[..., Any], start_method: str | None, why: str) -> TypeError:
    name = callable_name(fn, module=False)
    how = f"worker processes ({start_method!r} start method)" if start_method else "workers"
    return TypeError(
        f"cannot send function {name} to {how}: {why}. Define it at module level, install "
        "cloudpickle (pip install 'parmap[cloudpickle]'), or, on Linux, call the "
        "module-level pmap/imap or a @parallel function with start_method='fork'"
    )


def _cloudpickle() -> Any:
    try:
        import cloudpickle  # type: ignore[import-untyped, unused-ignore]
    except ImportError:
        return None
    return cloudpickle


def _dump(
    fn: Callable[..., Any], threshold: int | None, pickler: type[pickle.Pickler] | None = None
) -> bytes | _shm.Pickled:
    if threshold is None or not _shm.AVAILABLE:
        return _shm.Collector(None).dumps(fn, pickler)[0]
    return _shm.dumps(fn, threshold, pickler=pickler)


def _by_value(
    fn: Callable[..., Any], cloudpickle: Any, threshold: int | None
) -> bytes | _shm.Pickled:
    try:
        return _dump(fn, threshold, cloudpickle.Pickler)
    except Exception as again:
        name = callable_name(fn, module=False)
        raise TypeError(
            f"cannot send function {name} to worker processes: neither pickle nor "
            f"cloudpickle can serialize it ({type(again).__name__}: {again}). Define "
            "it at module level, or use backend='thread'"
        ) from again


def dump_function(
    fn: Callable[..., Any], start_method: str | None, threshold: int | None = None
) -> bytes | _shm.Pickled:
    """Pickle ``fn`` for a worker: by reference where the worker can import it.

    Lambdas, closures and functions of a ``__main__`` without a file go by
    value with ``cloudpickle``. Without it they raise ``TypeError`` here,
    except that a forked worker (``start_method="fork"``) still finds a
    ``__main__`` function by name. ``start_method=None`` means the workers'
    kind is unknown (an executor's, dask's). With a ``threshold``, buffers of
    at least that many bytes go to shared memory (``_shm.Pickled``).
    """
    pickler = _ReferencePickler(io.BytesIO())
    try:
        pickler.dump(fn)
    except Exception as exc:
        cloudpickle = _cloudpickle()
        if cloudpickle is None:
            raise _no_cloudpickle(
                fn, start_method, f"it cannot be pickled ({type(exc).__name__}: {exc})"
            ) from exc
        return _by_value(fn, cloudpickle, threshold)
    if pickler.uses_main and main_has_no_file():
        cloudpickle = _cloudpickle()
        if cloudpickle is not None:
            return _by_value(fn, cloudpickle, threshold)
        if start_method not in ("fork", None):
            raise _no_cloudpickle(
                fn,
                start_method,
                "it is defined in a __main__ that has no file (a notebook, python -c), "
                "which workers cannot import",
            )
    return _dump(fn, threshold)
