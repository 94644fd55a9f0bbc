"""What the executor's jobs run: function payloads for workers, and how tasks are batched.

A submit job runs ``_Call(fn)`` over ``(args, kwargs)`` inputs. Building a
payload pickles the function, so the pump thread keeps the last one built for
maps and for submits. It also remembers, by code, how long recent functions'
items took: tasks of a function known to take under ``BATCH_ITEM_SECONDS``
share a job, sent as one chunk.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._backends.base import Backend
from ._pickling import dump_function

#: Tasks of a function whose items took less than this share a job (a batch)
#: of up to ``BATCH_SECONDS`` of work, at most ``MAX_BATCH`` tasks: one
#: message then carries many of them. Slower tasks get a job each.
BATCH_ITEM_SECONDS = 0.001
BATCH_SECONDS = 0.005
MAX_BATCH = 256
#: Functions whose item time the executor remembers.
KEPT_ESTIMATES = 64


def _function_key(fn: Callable[..., Any]) -> tuple[str, str]:
    """What the scheduler's item-time estimates are kept under: the code, not the object.

    Keyed by object, a loop that submits a new lambda or partial each time
    would grow the estimates forever.
    """
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return (str(getattr(fn, "__module__", None)), str(name))


class _Call:
    """What a submit job runs: ``fn(*args, **kwargs)`` for each ``(args, kwargs)`` input."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __call__(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return self.fn(*args, **kwargs)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_Call, (self.fn,))


class _Functions:
    """The pump thread's knowledge of the functions it runs on ``backend``."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._last_fn: Callable[..., Any] | None = None
        self._last_payload: object = None
        self._last_call: Callable[..., Any] | None = None
        self._last_call_payload: object = None
        # Seconds per item of recent functions (by code), for batching.
        self._item_seconds: dict[object, float] = {}

    def payload(self, fn: Callable[..., Any]) -> object:
        """The function as workers get it, or the exception saying why it cannot go."""
        if fn is self._last_fn:
            return self._last_payload
        caps = self._backend.capabilities
        if caps.in_process:
            payload: object = fn  # threads and the caller run the object itself
        else:
            try:
                payload = dump_function(fn, caps.start_method)
            except TypeError as exc:
                return exc
        self._last_fn, self._last_payload = fn, payload
        return payload

    def call_payload(self, fn: Callable[..., Any]) -> object:
        """The payload of a submit job running ``fn`` (the last one is kept)."""
        if fn is self._last_call:
            return self._last_call_payload
        payload = self.payload(_Call(fn))
        self._last_call, self._last_call_payload = fn, payload
        return payload

    def batch_size(self, fn: Callable[..., Any]) -> int:
        """How many tasks of ``fn`` may share a job: more than one only for tiny ones."""
        seconds = self._item_seconds.get(_function_key(fn))
        if seconds is None or seconds >= BATCH_ITEM_SECONDS:
            return 1
        return max(1, min(MAX_BATCH, int(BATCH_SECONDS / max(seconds, 1e-7))))

    def remember(self, key: object, seconds: float) -> None:
        """Keep ``seconds`` per item for the function of ``key`` (the most recent ones)."""
        estimates = self._item_seconds
        estimates.pop(key, None)
        if len(estimates) >= KEPT_ESTIMATES:
            del estimates[next(iter(estimates))]
        estimates[key] = seconds
