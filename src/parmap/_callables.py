"""What parmap needs to know about a mapped callable besides calling it.

Any callable may be mapped: a function, a lambda, a ``functools.partial``, a
bound method, an instance of a class with ``__call__`` (hashable or not: a
plain ``@dataclass`` is not), or a ``@parallel`` function wrapping any of
them. Two things are asked of it here, and neither may fail or keep it alive:

* ``function_key``: a small key that is the same for the same code from one
  map to the next, under which a pool remembers how long its items take. It
  is built of strings and numbers only: a key holding the callable itself
  would pin it (and a 10 MB array bound in a partial) for the pool's life,
  and would refuse an unhashable callable.
* ``callable_name``: a readable name for messages and ``repr``, also for
  callables that have no ``__qualname__``.
"""

from __future__ import annotations

import functools
import reprlib
from types import CodeType

#: A partial of a partial of ... is unwrapped at most this deep.
_MAX_UNWRAP = 8
_SHORT = reprlib.Repr()
_SHORT.maxother = 80

FunctionKey = tuple[str | None, str | None, int | None, int]
"""Module, qualname, first line of the code, and how many partials wrap it."""


def _text(value: object) -> str | None:
    return value if type(value) is str else None


def _unwrap(fn: object) -> tuple[object, int]:
    """The callable doing the work, and how many partials were peeled off it."""
    partials = 0
    for _ in range(_MAX_UNWRAP):
        inner = getattr(fn, "__parmap_inline__", None)
        if inner is not None and inner is not fn:
            fn = inner
        elif isinstance(fn, functools.partial):
            fn = fn.func
            partials += 1
        else:
            break
    return fn, partials


def function_key(fn: object) -> FunctionKey:
    """A small key naming ``fn``'s code: the same across maps, holding no reference to ``fn``.

    Partials of one function share its key, and so do the instances of one
    class: the key only picks the first guess of an item's duration, which
    each map then corrects from its own items.
    """
    try:
        target, partials = _unwrap(fn)
        func = getattr(target, "__func__", target)  # a bound method: its function
        named = func if isinstance(getattr(func, "__qualname__", None), str) else type(func)
        code = getattr(func, "__code__", None)
        line = code.co_firstlineno if isinstance(code, CodeType) else None
        return (
            _text(getattr(named, "__module__", None)),
            _text(getattr(named, "__qualname__", None)),
            line,
            partials,
        )
    except Exception:  # an object whose attribute lookups raise: one key for its type
        return (None, _text(type(fn).__qualname__), None, 0)


def callable_name(fn: object, *, module: bool = True) -> str:
    """A readable name for ``fn``, never long and never raising.

    ``module.qualname`` when it has one (without ``module``: the qualname
    alone); a partial names its function; other
    callables (instances of a class with ``__call__``) give a shortened
    ``repr``, since what they hold may be large.
    """
    try:
        qualname = _text(getattr(fn, "__qualname__", None))
        if qualname is not None:
            where = _text(getattr(fn, "__module__", None)) if module else None
            return qualname if where in (None, "builtins") else f"{where}.{qualname}"
        if isinstance(fn, functools.partial):
            return f"functools.partial({callable_name(fn.func, module=module)}, ...)"
        return _SHORT.repr(fn)
    except Exception:
        return f"<{type(fn).__qualname__} object>"
