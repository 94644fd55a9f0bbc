"""An Executor used in a process forked from its owner refuses work there and
leaves the owner's pump alone; the owner's executor goes on."""

from __future__ import annotations

import multiprocessing

import pytest

from parmap import Executor


def _sq(x: int) -> int:
    return x * x


def _in_child(ex: Executor) -> None:
    try:
        ex.submit(_sq, 2)
    except RuntimeError as exc:
        if "belongs to the process that created it" not in str(exc):
            raise SystemExit(3) from exc
    else:
        raise SystemExit(2)
    ex.shutdown()  # not ours here: returns without touching the owner's pump
    raise SystemExit(0)


@pytest.mark.parametrize("backend", ["serial", "thread"])
def test_a_forked_child_cannot_use_its_parents_executor(backend: str) -> None:
    with Executor(workers=1, backend=backend) as ex:
        assert ex.submit(_sq, 3).result() == 9
        child = multiprocessing.get_context("fork").Process(target=_in_child, args=(ex,))
        child.start()
        child.join(60)
        assert child.exitcode == 0
        assert ex.submit(_sq, 4).result() == 16
