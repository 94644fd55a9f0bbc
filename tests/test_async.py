"""End-to-end tests of ``apmap``/``aimap`` (issue 3) on asyncio's own loop and on uvloop.

Every test runs real worker processes and runs once per event loop (the ``run``
fixture). Tests synchronise on marker files written by the workers and on
outcomes, never on sleeps, and time bounds are one-sided and generous: other
test runs share the machine's two cores. pytest has no asyncio plugin here, so
each test drives its own loop through ``asyncio.Runner``.
"""

from __future__ import annotations

import asyncio
import gc
import io
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from contextlib import aclosing, suppress
from itertools import repeat
from pathlib import Path
from typing import Any

import pytest
import uvloop
from tqdm import tqdm

import parmap
from parmap import MapResult, Pool, TaskTimeoutError

from . import jobs
from .checks import aeventually, seed_expectations
from .procs import pid_running, running_children

Run = Callable[[Coroutine[Any, Any, Any]], Any]

#: Far longer than any test: a task still sleeping this long was not stopped.
FOREVER = 60.0
#: How long a map may take to notice a cancellation and kill its workers.
STOP_BOUND = 10.0


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Run:
    """Run a coroutine to completion on a fresh loop of the parametrized kind."""
    use_uvloop = request.param == "uvloop"

    def run(coro: Coroutine[Any, Any, Any]) -> Any:
        factory = uvloop.new_event_loop if use_uvloop else None
        with asyncio.Runner(loop_factory=factory) as runner:
            if isinstance(runner.get_loop(), uvloop.Loop) != use_uvloop:
                coro.close()
                pytest.fail(f"expected a {request.param} loop, got {runner.get_loop()!r}")
            return runner.run(coro)

    return run


# ------------------------------------------------------------------ helpers
async def wait_for_files(directory: Path, names: Iterable[str], timeout: float = 30.0) -> None:
    """Wait (without blocking the loop) until the workers wrote these files."""
    paths = [directory / name for name in names]
    await aeventually(
        lambda: all(path.exists() for path in paths),
        within=timeout,
        message=lambda: f"workers never wrote {[p.name for p in paths if not p.exists()]}",
    )


def pids(directory: Path, indexes: Iterable[int]) -> list[int]:
    """The pids that ``jobs.async_marked_sleep`` recorded for these inputs."""
    return [int((directory / f"{i}.pid").read_text()) for i in indexes]


async def wait_until_dead(pid_list: list[int], timeout: float = STOP_BOUND) -> None:
    await aeventually(
        lambda: not any(pid_running(pid) for pid in pid_list),
        within=timeout,
        message=lambda: f"workers still alive: {[p for p in pid_list if pid_running(p)]}",
    )


def children() -> set[int]:
    """Live child processes of this test process."""
    return {p.pid for p in running_children()}


def sleeper_args(directory: Path, seconds: list[float]) -> tuple[Any, ...]:
    """Arguments for ``jobs.async_marked_sleep``: one item per entry of ``seconds``."""
    n = len(seconds)
    return ([str(directory)] * n, list(range(n)), seconds)


# --------------------------------------------------------- the loop stays free
def test_event_loop_keeps_ticking_and_no_thread_starts_during_cpu_bound_apmap(run: Run) -> None:
    async def main() -> tuple[MapResult[float], list[float], int, set[int]]:
        threads_before = threading.active_count()
        gaps: list[float] = []
        thread_counts: set[int] = set()

        async def ticker() -> None:
            last = time.monotonic()
            while True:
                await asyncio.sleep(0.01)
                now = time.monotonic()
                gaps.append(now - last)
                last = now
                thread_counts.add(threading.active_count())

        tick = asyncio.create_task(ticker())
        await asyncio.sleep(0.05)
        result = await parmap.apmap(jobs.async_busy, [0.1] * 20, workers=2)
        tick.cancel()
        with suppress(asyncio.CancelledError):
            await tick
        return result, gaps, threads_before, thread_counts

    result, gaps, threads_before, thread_counts = run(main())
    assert list(result) == [0.1] * 20
    # 2 s of CPU work on 2 workers: the ticker ran all along ...
    assert len(gaps) > 50
    # ... and never waited long, pool start-up and shutdown included.
    assert max(gaps) < 0.25, f"worst event-loop gap {max(gaps):.3f} s"
    # No helper thread in the parent, at any moment the ticker looked.
    assert thread_counts == {threads_before}


# ---------------------------------------------------------------- cancelling
@pytest.mark.parametrize("how", ["cancel", "timeout", "break", "aclosing"])
def test_leaving_a_map_early_kills_the_workers_running_it(
    run: Run, tmp_path: Path, how: str
) -> None:
    """Cancelling the task, an ``asyncio.timeout``, or leaving ``async for``."""
    # Input 0 is quick (so aimap has something to yield); 1 and 2 sleep "forever".
    args = sleeper_args(tmp_path, [0.0, FOREVER, FOREVER, FOREVER])
    running = ["1.pid", "2.pid"]

    async def main() -> None:
        before = children()
        with Pool(workers=2) as pool:
            stopped_at = 0.0
            if how == "cancel":
                task = asyncio.create_task(pool.apmap(jobs.async_marked_sleep, *args))
                await wait_for_files(tmp_path, running)
                stopped_at = time.monotonic()
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                assert task.cancelled()
            elif how == "timeout":
                scope = asyncio.timeout(None)

                async def expire_once_running() -> None:
                    nonlocal stopped_at
                    await wait_for_files(tmp_path, running)
                    stopped_at = time.monotonic()
                    scope.reschedule(asyncio.get_running_loop().time())

                async def map_under_timeout() -> None:
                    async with scope:
                        await pool.apmap(jobs.async_marked_sleep, *args)

                expire = asyncio.create_task(expire_once_running())
                with pytest.raises(TimeoutError):
                    await map_under_timeout()
                await expire
            elif how == "break":
                # The iterator is finalised by the loop's async-generator hook.
                async for outcome in pool.aimap(jobs.async_marked_sleep, *args):
                    assert outcome.index == 0
                    await wait_for_files(tmp_path, running)
                    stopped_at = time.monotonic()
                    break
            else:
                async with aclosing(pool.aimap(jobs.async_marked_sleep, *args)) as stream:
                    async for outcome in stream:
                        assert outcome.index == 0
                        await wait_for_files(tmp_path, running)
                        stopped_at = time.monotonic()
                        break
            # SIGKILLed as the map ended, they die while the pool stays open
            # (an event loop never waits for a worker to be reaped).
            await wait_until_dead(pids(tmp_path, [1, 2]))
            assert time.monotonic() - stopped_at < STOP_BOUND
            # The pool replaced them and still works.
            assert list(await pool.apmap(jobs.square, range(5))) == [0, 1, 4, 9, 16]
        assert children() <= before  # closing the pool reaped every worker

    run(main())


def test_cancelling_module_level_apmap_leaves_no_process(run: Run, tmp_path: Path) -> None:
    async def main() -> None:
        before = children()
        task = asyncio.create_task(
            parmap.apmap(jobs.async_marked_sleep, *sleeper_args(tmp_path, [FOREVER] * 4), workers=2)
        )
        await wait_for_files(tmp_path, ["0.pid", "1.pid"])
        workers = pids(tmp_path, [0, 1])
        started = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert time.monotonic() - started < STOP_BOUND
        assert not [pid for pid in workers if pid_running(pid)]
        assert children() <= before  # the map's own pool is gone too

    run(main())


# --------------------------------------------------------------------- order
def test_aimap_yields_a_fast_item_before_a_slow_one(run: Run, tmp_path: Path) -> None:
    release = tmp_path / "release"

    async def main() -> list[int]:
        seen: list[int] = []
        stream = parmap.aimap(
            jobs.async_wait_for, [0, 1], [str(release), None], repeat(str(tmp_path)), workers=2
        )
        async with aclosing(stream):
            async for outcome in stream:
                seen.append(outcome.unwrap())
                release.touch()  # input 0 finishes only once input 1 was yielded
        return seen

    assert run(main()) == [1, 0]


def test_aimap_ordered_yields_in_input_order(run: Run, tmp_path: Path) -> None:
    release = tmp_path / "release"

    async def main() -> list[int]:
        async def release_after_input_1() -> None:
            await wait_for_files(tmp_path, ["1.done"])
            release.touch()

        helper = asyncio.create_task(release_after_input_1())
        seen: list[int] = []
        stream = parmap.aimap(
            jobs.async_wait_for,
            [0, 1, 2, 3],
            [str(release), None, None, None],
            repeat(str(tmp_path)),
            workers=2,
            ordered=True,
        )
        async with aclosing(stream):
            async for outcome in stream:
                seen.append(outcome.unwrap())
        await helper
        return seen

    assert run(main()) == [0, 1, 2, 3]


# -------------------------------------------------------- two maps at once
@pytest.mark.parametrize("target", ["pool", "decorated"])
def test_gathered_maps_share_the_workers_fairly(run: Run, tmp_path: Path, target: str) -> None:
    log = tmp_path / "starts.log"
    n = 6

    async def main() -> tuple[tuple[MapResult[Any], MapResult[Any]], dict[str, float]]:
        finished: dict[str, float] = {}
        with Pool(workers=2) as pool:

            async def one(label: str) -> MapResult[Any]:
                args = ([str(log)] * n, [label] * n, range(n), [0.15] * n)
                if target == "pool":
                    result = await pool.apmap(jobs.async_logged_sleep, *args)
                else:
                    result = await jobs.async_decorated_logged_sleep.apmap(*args)
                finished[label] = time.monotonic()
                return result

            try:
                results = await asyncio.gather(one("a"), one("b"))
            finally:
                jobs.async_decorated_logged_sleep.close()
        return results, finished

    (a, b), finished = run(main())
    assert list(a) == [("a", i) for i in range(n)]
    assert list(b) == [("b", i) for i in range(n)]
    starts = sorted(
        (float(t), label) for label, _, t in (line.split() for line in log.read_text().splitlines())
    )
    assert len(starts) == 2 * n  # every item ran exactly once
    first = {label: min(t for t, lab in starts if lab == label) for label in "ab"}
    # Both maps had items running before either finished ...
    assert max(first.values()) < min(finished.values())
    # ... and the first items the two workers took are shared between them.
    early = [label for _, label in starts[:6]]
    assert early.count("a") >= 2 and early.count("b") >= 2, early


# ------------------------------------------------------------- async inputs
def test_async_generator_input_is_pulled_lazily_within_the_buffer(run: Run) -> None:
    pulled = 0

    async def naturals() -> AsyncIterator[int]:
        nonlocal pulled
        i = 0
        while True:  # endless: only a lazy consumer can finish
            pulled += 1
            yield i
            i += 1

    async def main() -> int:
        received = 0
        worst = 0
        with Pool(workers=2) as pool:
            async with aclosing(pool.aimap(jobs.square, naturals(), buffer=4)) as stream:
                async for outcome in stream:
                    assert outcome.unwrap() == outcome.index**2
                    received += 1
                    worst = max(worst, pulled - received)
                    if received == 40:
                        break
                    await asyncio.sleep(0.002)  # a slow consumer
        return worst

    worst = run(main())
    # buffer=4 in flight, plus at most one segment in the consumer's hands.
    assert worst <= 9, worst
    assert pulled <= 40 + 9


def test_async_generator_that_raises_stops_the_workers_and_propagates(
    run: Run, tmp_path: Path
) -> None:
    async def seconds() -> AsyncIterator[float]:
        yield FOREVER  # input 0 keeps one worker busy
        for _ in range(3):
            yield 0.0
        await wait_for_files(tmp_path, ["0.pid"])
        raise ValueError("the input broke")

    async def main() -> None:
        with Pool(workers=2) as pool:
            with pytest.raises(ValueError, match="the input broke"):
                await pool.apmap(
                    jobs.async_marked_sleep, repeat(str(tmp_path)), range(100), seconds(), buffer=4
                )
            # The worker running input 0 was killed, not merely at pool shutdown.
            await wait_until_dead(pids(tmp_path, [0]))
            assert list(await pool.apmap(jobs.square, range(3))) == [0, 1, 4]

    run(main())


def test_mixed_async_and_sync_inputs_zip_like_map(run: Run) -> None:
    async def tens() -> AsyncIterator[int]:
        for i in range(5):
            yield 10 * i

    async def main() -> MapResult[int]:
        return await parmap.apmap(jobs.add, range(100), tens(), workers=2)

    assert list(run(main())) == [0, 11, 22, 33, 44]


# ------------------------------------------------------- the seed scenario
def test_seed_scenario_collects_ordered_results_and_errors(run: Run) -> None:
    async def main() -> MapResult[int]:
        return await parmap.apmap(jobs.fail_every_third, range(10), workers=3, on_error="collect")

    result = run(main())
    assert len(result) == 10
    seed_expectations(result)
    assert not result.ok
    assert result[4] == 4
    with pytest.raises(RuntimeError, match="task 3 failed"):
        result[3]


def test_seed_scenario_aimap_ordered_yields_every_outcome(run: Run) -> None:
    async def main() -> list[parmap.Outcome[int]]:
        stream = parmap.aimap(
            jobs.fail_every_third, range(10), workers=3, on_error="collect", ordered=True
        )
        async with aclosing(stream):
            return [outcome async for outcome in stream]

    outcomes = run(main())
    assert [o.index for o in outcomes] == list(range(10))
    assert [o.ok for o in outcomes] == [i % 3 != 0 for i in range(10)]
    assert [o.value for o in outcomes if o.ok] == [1, 2, 4, 5, 7, 8]


def test_seed_scenario_raise_raises_the_first_failure(run: Run) -> None:
    async def main() -> None:
        await parmap.apmap(jobs.fail_every_third, range(10), workers=3)

    with pytest.raises(RuntimeError, match=r"^task [0369] failed\b") as info:
        run(main())
    assert any(note.startswith("parmap: raised for input index") for note in info.value.__notes__)


# ------------------------------------------------------------------- timeouts
def test_apmap_timeout_fails_the_item_and_kills_its_worker(run: Run, tmp_path: Path) -> None:
    async def main() -> MapResult[int]:
        with Pool(workers=2) as pool:
            result = await pool.apmap(
                jobs.async_marked_sleep,
                *sleeper_args(tmp_path, [0.0, 3600.0, 0.0, 0.0]),
                timeout=1.0,
                on_error="collect",
            )
            # Killed by the map, not merely at pool shutdown.
            await wait_until_dead(pids(tmp_path, [1]))
            return result

    result = run(main())
    assert result.values == [0, None, 2, 3]
    error = result.errors[1]
    assert isinstance(error, TaskTimeoutError)
    assert (error.index, error.timeout) == (1, 1.0)


# ------------------------------------------------------------------- progress
def test_progress_instance_reaches_the_total(run: Run) -> None:
    out = io.StringIO()
    bar = tqdm(total=12, file=out, mininterval=0)

    async def main() -> MapResult[int]:
        return await parmap.apmap(jobs.square, range(12), workers=2, progress=bar)

    try:
        assert list(run(main())) == [i * i for i in range(12)]
        assert bar.n == 12
    finally:
        bar.close()
    assert "12/12" in out.getvalue()


def test_progress_options_for_aimap_reach_the_total(run: Run) -> None:
    out = io.StringIO()

    async def main() -> int:
        stream = parmap.aimap(
            jobs.fail_every_third,
            range(9),
            workers=2,
            on_error="collect",
            progress={"file": out, "mininterval": 0},
        )
        async with aclosing(stream):
            return len([o async for o in stream])

    assert run(main()) == 9
    text = out.getvalue()
    assert "9/9" in text
    assert "failed=3" in text


# ---------------------------------------- a pool serves a loop or threads
def test_blocking_map_on_a_pool_serving_an_event_loop_is_refused(run: Run, tmp_path: Path) -> None:
    async def main() -> None:
        with Pool(workers=2) as pool:
            task = asyncio.create_task(
                pool.apmap(jobs.async_marked_sleep, *sleeper_args(tmp_path, [1.0, 1.0]))
            )
            await wait_for_files(tmp_path, ["0.pid", "1.pid"])
            with pytest.raises(RuntimeError, match="event loop"):
                await asyncio.to_thread(pool.pmap, jobs.square, range(3))
            assert list(await task) == [0, 1]  # the async map was not disturbed

    run(main())


def _map_blocking(pool: Pool, tmp_path: Path) -> Any:
    return pool.pmap(jobs.async_marked_sleep, *sleeper_args(tmp_path, [1.5, 1.5]))


def _map_on_another_loop(pool: Pool, tmp_path: Path) -> Any:
    return asyncio.run(pool.apmap(jobs.async_marked_sleep, *sleeper_args(tmp_path, [1.0, 1.0])))


@pytest.mark.parametrize(
    ("holder", "refusal"),
    [(_map_blocking, "blocking map"), (_map_on_another_loop, "another event loop")],
    ids=["blocking-map", "another-loop"],
)
def test_an_async_map_on_a_pool_busy_elsewhere_is_refused(
    run: Run, tmp_path: Path, holder: Callable[[Pool, Path], Any], refusal: str
) -> None:
    # Another thread holds the pool with a blocking map, or with an async map
    # on its own event loop: an async map here is refused, and theirs goes on.
    with Pool(workers=2) as pool:
        pool.pmap(jobs.square, range(2))  # start the workers from this thread
        outcome: dict[str, Any] = {}

        def other_thread() -> None:
            try:
                outcome["result"] = holder(pool, tmp_path)
            except BaseException as exc:  # reported below, in the test's thread
                outcome["error"] = exc

        thread = threading.Thread(target=other_thread)
        thread.start()
        try:

            async def main() -> None:
                await wait_for_files(tmp_path, ["0.pid", "1.pid"])
                with pytest.raises(RuntimeError, match=refusal):
                    await pool.apmap(jobs.square, range(3))

            run(main())
        finally:
            thread.join()
        assert "error" not in outcome, outcome
        assert list(outcome["result"]) == [0, 1]


def test_a_pool_serves_one_event_loop_after_another(run: Run) -> None:
    try:
        with Pool(workers=2) as pool:
            for _ in range(2):
                assert list(run(pool.apmap(jobs.square, range(4)))) == [0, 1, 4, 9]
                assert list(run(jobs.decorated_square.apmap(range(4)))) == [0, 1, 4, 9]
            assert list(pool.pmap(jobs.square, range(4))) == [0, 1, 4, 9]
    finally:
        jobs.decorated_square.close()


# ------------------------------------------------------- failures and edges
def test_first_failure_stops_the_map_and_kills_its_running_items(run: Run, tmp_path: Path) -> None:
    async def main() -> None:
        with Pool(workers=2) as pool:
            started = time.monotonic()
            with pytest.raises(ValueError, match="input 0 failed"):
                await pool.apmap(
                    jobs.async_sleep_or_raise, *sleeper_args(tmp_path, [-1.0, FOREVER, FOREVER])
                )
            assert time.monotonic() - started < STOP_BOUND
            await wait_until_dead(pids(tmp_path, [1]))

    run(main())


def test_a_crashed_worker_fails_only_its_item(run: Run) -> None:
    async def main() -> MapResult[int]:
        return await parmap.apmap(jobs.exit_if, range(6), repeat(2), workers=2, on_error="collect")

    result = run(main())
    assert result.values == [0, 1, None, 3, 4, 5]
    error = result.errors[2]
    assert isinstance(error, parmap.WorkerCrashedError)
    assert error.exitcode == 3


def test_closing_the_pool_fails_the_running_map(run: Run, tmp_path: Path) -> None:
    async def main() -> None:
        pool = Pool(workers=2)
        task = asyncio.create_task(
            pool.apmap(jobs.async_marked_sleep, *sleeper_args(tmp_path, [FOREVER, FOREVER]))
        )
        await wait_for_files(tmp_path, ["0.pid", "1.pid"])
        pool.close()
        with pytest.raises(RuntimeError, match="closed"):
            await task
        assert not [pid for pid in pids(tmp_path, [0, 1]) if pid_running(pid)]

    run(main())


def test_empty_inputs_give_empty_results(run: Run) -> None:
    async def nothing() -> AsyncIterator[int]:
        return
        yield

    async def main() -> tuple[int, int, int]:
        with Pool(workers=2) as pool:
            a = await pool.apmap(jobs.square, [])
            b = await pool.apmap(jobs.square, nothing())
            async with aclosing(pool.aimap(jobs.square, nothing())) as stream:
                c = [o async for o in stream]
        return len(a), len(b), len(c)

    assert run(main()) == (0, 0, 0)


# ------------------------------------------------ bugs found (failing tests)
def test_async_map_does_not_break_an_imap_in_flight_in_another_thread(
    run: Run, tmp_path: Path
) -> None:
    """The map that came second must be the one refused.

    Fails today: ``Engine.attach`` refuses only while a thread holds the pump
    turn, but an ``imap`` in flight holds it only while it pumps. So the async
    map attaches, and the ``imap`` dies at its next step with ``PoolInUseError``;
    its cleanup (``engine.finish`` under ``engine.sync.turn()``) raises too, leaving
    its job in the scheduler.
    """
    with Pool(workers=2) as pool:
        pool.pmap(jobs.square, range(2))  # start the workers from this thread
        first_taken = threading.Event()
        resume = threading.Event()
        outcome: dict[str, Any] = {}

        def consume() -> None:
            try:
                stream = pool.imap(jobs.square, range(50), buffer=2, ordered=True)
                values = [next(stream).unwrap()]
                first_taken.set()
                resume.wait(30)
                values.extend(o.unwrap() for o in stream)
                outcome["values"] = values
            except BaseException as exc:  # reported below, in the test's thread
                outcome["error"] = exc
                first_taken.set()

        thread = threading.Thread(target=consume)
        thread.start()
        try:
            assert first_taken.wait(30)

            async def main() -> object:
                task = asyncio.create_task(
                    pool.apmap(jobs.async_marked_sleep, *sleeper_args(tmp_path, [1.0]))
                )
                await asyncio.sleep(0)  # the task attaches to the pool, or is refused
                resume.set()  # the imap goes on while the async map is in flight
                try:
                    return await task
                except RuntimeError as exc:
                    return exc

            async_outcome = run(main())
        finally:
            resume.set()
            thread.join()
        assert outcome.get("values") == [i * i for i in range(50)], outcome
        assert isinstance(async_outcome, RuntimeError), async_outcome


def test_cancelling_one_map_does_not_stall_another_on_the_same_pool(
    run: Run, tmp_path: Path
) -> None:
    """Fails today: the other map's items are never sent to the new workers.

    ``Scheduler.cancel`` kills the cancelled map's workers and ``_fill`` queues
    replacements, but nothing calls ``_dispatch`` afterwards (``on_ready`` does
    not either), so the other map's pending inputs wait for an event that
    never comes.
    """

    async def main() -> list[int]:
        with Pool(workers=2) as pool:
            hog = asyncio.create_task(
                pool.apmap(jobs.async_marked_sleep, *sleeper_args(tmp_path, [FOREVER, FOREVER]))
            )
            await wait_for_files(tmp_path, ["0.pid", "1.pid"])
            other = asyncio.create_task(pool.apmap(jobs.square, range(4)))
            await asyncio.sleep(0)  # `other` queues its inputs behind the hog
            hog.cancel()
            with suppress(asyncio.CancelledError):
                await hog
            async with asyncio.timeout(3):
                return list(await other)

    assert run(main()) == [0, 1, 4, 9]


def test_async_input_is_sent_as_it_arrives_not_once_the_buffer_is_full(run: Run) -> None:
    """Fails today: the next input depends on the first outcome, which never comes.

    ``_driver._afeed`` awaits ``want`` items from an async source before it
    feeds any of them, and meanwhile ``aiterate`` yields no outcome: a source
    that yields one item and waits deadlocks, and a slow source delays every
    outcome by ``buffer`` input intervals.
    """
    seen_first = asyncio.Event()

    async def requests() -> AsyncIterator[int]:
        yield 1
        await seen_first.wait()
        yield 2

    async def main() -> list[int]:
        values = []
        with Pool(workers=2) as pool:
            async with asyncio.timeout(3):
                async with aclosing(pool.aimap(jobs.square, requests())) as stream:
                    async for outcome in stream:
                        values.append(outcome.unwrap())
                        seen_first.set()
        return sorted(values)

    assert run(main()) == [1, 4]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_an_aimap_never_iterated_holds_no_resources(run: Run) -> None:
    """Fails today: each call leaks the two file descriptors of an Engine's wake pipe.

    Module-level ``aimap`` (like ``imap``) builds its temporary pool's
    ``Engine`` when called, but only the generator's ``finally`` closes it, and
    a generator that never started has no ``finally`` to run.
    """

    async def main() -> int:
        before = open_fds()
        for _ in range(20):
            parmap.aimap(jobs.square, range(3), workers=2)
        gc.collect()
        return open_fds() - before

    assert run(main()) == 0


# --------------------------------------- issue 12: sources and loops that go away
def run_script(code: str, *args: str, limit: float = 90.0) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (it may hang), killed after ``limit`` seconds."""
    root = Path(__file__).resolve().parent.parent
    src = Path(parmap.__file__).resolve().parent.parent
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=limit,
        cwd=root,
        env={"PYTHONPATH": str(src), "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        check=False,
    )


LOOP_FACTORY = """
import asyncio, sys
import uvloop
new_loop = uvloop.new_event_loop if sys.argv[1] == "uvloop" else asyncio.new_event_loop
"""


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_an_async_source_raising_cancelled_error_stops_the_map(loop: str) -> None:
    # An upstream reader that was itself cancelled: its CancelledError is the
    # input's error, raised to the caller once the workers are stopped.
    out = run_script(
        LOOP_FACTORY
        + """
from parmap import Pool

async def lines():
    yield "alpha"
    yield "beta"
    raise asyncio.CancelledError

async def main():
    with Pool(workers=2) as pool:
        try:
            await pool.apmap(len, lines())
        except asyncio.CancelledError:
            print("CancelledError", flush=True)
        print((await pool.apmap(len, ["gamma"])).values, flush=True)

with asyncio.Runner(loop_factory=new_loop) as runner:
    runner.run(main())
""",
        loop,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n") == ["CancelledError", "[5]", ""]
    assert "Traceback" not in out.stderr, out.stderr


@pytest.mark.parametrize("ending", ["close", "exit"])
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_pool_outlives_a_loop_closed_under_a_pending_map(
    loop: str, ending: str, tmp_path: Path
) -> None:
    out = run_script(
        LOOP_FACTORY
        + """
import os
from pathlib import Path
from parmap import Pool
from tests import jobs
from tests.procs import wait_ended, processes

marks = Path(sys.argv[2])
pool = Pool(workers=2)
loop = new_loop()
pending = loop.create_task(pool.apmap(jobs.async_marked_sleep, [str(marks)] * 2, [0, 1], [60, 60]))

async def started():
    while len(list(marks.glob("*.pid"))) < 2:
        await asyncio.sleep(0.01)

loop.run_until_complete(asyncio.wait_for(started(), 30))
loop.close()  # outside asyncio.run: the pending map's task is never resumed
orphans = processes(int(p.read_text()) for p in marks.glob("*.pid"))
print(pool.pmap(len, ["ab", "cde"]).values, flush=True)
print(asyncio.run(pool.apmap(len, ["fghi"])).values, flush=True)
print("stopped" if not wait_ended(orphans, 10) else "still running", flush=True)
if sys.argv[3] == "close":
    pool.close()
""",
        loop,
        str(tmp_path),
        ending,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n") == ["[2, 3]", "[4]", "stopped", ""]
    # asyncio may warn that the user's task was destroyed pending; parmap prints nothing.
    assert "Traceback" not in out.stderr and "Exception ignored" not in out.stderr, out.stderr


# ------------------------------------- starting workers from a loop (issue 19)
#: A script's probe: counts the loop's turns (a callback that reschedules
#: itself runs once per turn) and the forks the process makes in each.
TURNS_AND_FORKS = """
import os
turn = 0
forks = []  # the turn of each fork

def count_turns(loop):
    global turn
    turn += 1
    loop.call_soon(count_turns, loop)

os.register_at_fork(before=lambda: forks.append(turn))
"""


def run_probed(main: str, loop: str) -> subprocess.CompletedProcess[str]:
    """Run ``main`` (it defines ``async def main()``) on a fresh loop of kind
    ``loop``, with ``TURNS_AND_FORKS`` and parmap imported."""
    return run_script(
        LOOP_FACTORY
        + TURNS_AND_FORKS
        + "import parmap\nfrom tests import jobs\n"
        + main
        + "with asyncio.Runner(loop_factory=new_loop) as runner:\n    runner.run(main())\n",
        loop,
    )


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_cold_pool_serving_a_loop_starts_one_worker_per_turn(loop: str) -> None:
    # Four forks in one callback stalled the loop for their sum (issue 10's lag).
    out = run_probed(
        """
async def main():
    count_turns(asyncio.get_running_loop())
    res = await parmap.apmap(jobs.sleep_then_pid, [0.05] * 16, workers=4)
    print(len(forks), len(set(forks)), len(set(res.unwrap())), flush=True)
""",
        loop,
    )
    assert out.returncode == 0, out.stderr
    # Four workers, each started in a turn of its own, and every one ran items.
    assert out.stdout.split() == ["4", "4", "4"], out.stdout


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_cancelling_a_map_before_its_pool_has_started_leaves_no_process(loop: str) -> None:
    out = run_probed(
        """
from tests.procs import running_children, wait_ended

async def main():
    count_turns(asyncio.get_running_loop())
    task = asyncio.create_task(parmap.apmap(jobs.sleep_then_pid, [60] * 8, workers=4))
    while not forks:
        await asyncio.sleep(0)
    task.cancel()  # three workers are still to start
    try:
        await task
    except asyncio.CancelledError:
        pass
    started = len(forks)
    await asyncio.sleep(0.2)  # a worker put off would start by now
    print(started < 4, len(forks) == started, flush=True)
    print(not wait_ended(running_children(), 10), flush=True)
""",
        loop,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True", "True"], out.stdout


def test_workers_put_off_by_a_loop_start_when_a_blocking_map_needs_them() -> None:
    # The loop is closed before their turns come: a blocking map starts them.
    out = run_script(
        TURNS_AND_FORKS
        + """
import asyncio
import parmap
from tests import jobs

pool = parmap.Pool(workers=3)
loop = asyncio.new_event_loop()
pending = loop.create_task(pool.apmap(jobs.sleep_then_pid, [0.05] * 3))

async def one_started():
    while not forks:
        await asyncio.sleep(0)

loop.run_until_complete(one_started())
loop.close()
print(len(forks) < 3, flush=True)
pids = pool.pmap(jobs.sleep_then_pid, [0.05] * 12).unwrap()
print(len(set(pids)), flush=True)
pool.close()
"""
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "3"], out.stdout
