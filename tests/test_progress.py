"""Progress bars: the final state on stderr, and clean closing on every way out."""

from __future__ import annotations

import asyncio
import io
import itertools
import re
from pathlib import Path

import pytest
from tqdm import tqdm

from parmap import Pool, apmap, imap, pmap

from . import jobs
from .checks import aeventually


def last_frame(text: str) -> str:
    return re.split(r"[\r\n]+", text.strip())[-1]


def test_progress_true_reaches_n_of_n_with_the_failure_count(
    capfd: pytest.CaptureFixture[str],
) -> None:
    res = pmap(jobs.fail_every_third, range(10), workers=3, on_error="collect", progress=True)
    assert len(res.errors) == 4
    final = last_frame(capfd.readouterr().err)
    assert "10/10" in final
    assert "failed=4" in final


@pytest.mark.parametrize("backend", ["process", "thread", "serial"])
def test_imap_progress_with_tqdm_arguments(backend: str) -> None:
    out = io.StringIO()
    outcomes = list(
        imap(
            jobs.fail_every_third,
            range(10),
            workers=2,
            on_error="collect",
            progress={"file": out, "desc": "seed"},
            backend=backend,
        )
    )
    assert len(outcomes) == 10
    final = last_frame(out.getvalue())
    assert final.startswith("seed") and "10/10" in final and "failed=4" in final
    assert out.getvalue().endswith("\n")  # closed (tqdm writes the newline at close)


def test_a_given_tqdm_instance_is_updated_and_left_open() -> None:
    out = io.StringIO()
    bar = tqdm(total=5, file=out)
    pmap(jobs.square, range(5), workers=2, progress=bar)
    assert bar.n == 5
    assert not bar.disable
    bar.close()


def test_the_bar_closes_when_the_map_raises() -> None:
    out = io.StringIO()
    with pytest.raises(RuntimeError):
        pmap(jobs.fail_every_third, range(10), workers=2, progress={"file": out})
    assert out.getvalue().endswith("\n")
    assert "failed=1" in last_frame(out.getvalue())


def test_the_bar_closes_when_the_consumer_leaves_early() -> None:
    out = io.StringIO()
    with Pool(workers=2) as pool:
        stream = pool.imap(jobs.square, itertools.count(), progress={"file": out})
        for outcome in stream:
            if outcome.index >= 20:
                break
        stream.close()
    assert out.getvalue().endswith("\n")


def test_the_bar_closes_when_an_async_map_is_cancelled(tmp_path: Path) -> None:
    out = io.StringIO()

    async def main() -> None:
        task = asyncio.ensure_future(
            apmap(
                jobs.async_marked_sleep,
                [str(tmp_path)] * 2,
                range(2),
                [60.0] * 2,
                workers=2,
                progress={"file": out},
            )
        )
        # Cancelled while both items are running, not before they started.
        await aeventually(
            lambda: len(list(tmp_path.glob("*.pid"))) == 2,
            within=60,
            message="the items never started",
        )
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert out.getvalue().endswith("\n")
    assert "0/2" in last_frame(out.getvalue())
