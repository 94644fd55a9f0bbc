"""Executor's argument checks and a map whose source ends while results are
still waited for, on the serial and thread backends (no processes to start)."""

from __future__ import annotations

from pathlib import Path

import pytest

from parmap import Executor


def _sq(x: int) -> int:
    return x * x


@pytest.mark.parametrize("backend", ["serial", "thread"])
def test_map_with_a_small_buffer_reads_its_source_to_the_end(backend: str) -> None:
    with Executor(workers=2, backend=backend) as ex:
        assert list(ex.map(_sq, range(10), buffersize=2)) == [x * x for x in range(10)]


def test_map_with_a_checkpoint_and_a_small_buffer(tmp_path: Path) -> None:
    ck = tmp_path / "ck.sqlite"
    with Executor(workers=1, backend="thread") as ex:
        assert list(ex.map(_sq, range(6), buffersize=2, checkpoint=ck)) == [x * x for x in range(6)]
        assert list(ex.map(_sq, range(6), checkpoint=ck)) == [x * x for x in range(6)]


def test_bad_arguments_are_refused() -> None:
    with Executor(workers=1, backend="serial") as ex:
        with pytest.raises(TypeError, match="must be callable"):
            ex.submit(42)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="chunksize must be an int"):
            ex.map(_sq, range(3), chunksize="2")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="buffersize must be an integer or None"):
            ex.map(_sq, range(3), buffersize=2.5)  # type: ignore[arg-type]
        assert ex.submit(_sq, 3).result() == 9


def test_shutdown_twice_then_submit() -> None:
    ex = Executor(workers=1, backend="thread")
    assert ex.submit(_sq, 4).result() == 16
    ex.shutdown()
    ex.shutdown()
    with pytest.raises(RuntimeError):
        ex.submit(_sq, 1)
