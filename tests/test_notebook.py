"""parmap in a real Jupyter kernel, cell by cell, as a notebook user runs it.

Each test starts its own ipykernel through jupyter_client and sends it cells;
the kernel's ``__main__`` is the notebook's namespace, which has no file.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from .kernels import CellError, kernel
from .procs import processes, running, wait_ended

pytestmark = pytest.mark.slow

METHODS = ["fork", "spawn"]


def _values(cell_stdout: str) -> list[Any]:
    return [json.loads(line) for line in cell_stdout.splitlines()]


@pytest.mark.parametrize("method", METHODS)
def test_functions_defined_in_cells_reach_the_workers(method: str, tmp_path: Path) -> None:
    with kernel(tmp_path) as k:
        k.run(
            "import json\n"
            "from parmap import Pool, parallel, pmap\n"
            f"METHOD = {method!r}\n"
            "def square(x):\n"
            "    return x * x\n"
        )
        k.run(
            "offset = 100\n"
            "def shifted(x):\n"
            "    return x + offset\n"
            "@parallel(workers=2, start_method=METHOD)\n"
            "def words(line):\n"
            "    return len(line.split())\n"
            "pool = Pool(workers=2, start_method=METHOD)\n"
            "print(json.dumps(pool.pmap(square, range(4)).values))\n"
        )
        # Later cells: new functions, on a pool whose workers already exist.
        cell = k.run(
            "def negated(x):\n"
            "    return -x\n"
            "print(json.dumps(pmap(square, range(4), workers=2, start_method=METHOD).values))\n"
            "print(json.dumps(pmap(lambda s: s[::-1], ['abc', 'xy'], workers=2,"
            " start_method=METHOD).values))\n"
            "print(json.dumps(pmap(shifted, range(3), workers=2, start_method=METHOD).values))\n"
            "print(json.dumps(words.pmap(['a b c', 'one', '']).values))\n"
            "print(json.dumps(pool.pmap(negated, range(3)).values))\n"
            "print(json.dumps(pool.pmap(lambda b: b.hex(), [b'\\x00\\xff']).values))\n"
            "pool.close(); words.close()\n"
        )
        assert _values(cell.stdout) == [
            [0, 1, 4, 9],
            ["cba", "yx"],
            [100, 101, 102],
            [3, 1, 0],
            [0, -1, -2],
            ["00ff"],
        ]
        assert wait_ended(k.children(), 10) == []


@pytest.mark.parametrize("method", METHODS)
def test_parallel_with_a_timeout_kills_the_hanging_item(method: str, tmp_path: Path) -> None:
    with kernel(tmp_path) as k:
        cell = k.run(
            "import time\n"
            "from parmap import TaskTimeoutError, parallel\n"
            f"@parallel(workers=2, timeout=1, on_error='collect', start_method={method!r})\n"
            "def slow(x):\n"
            "    if x == 2:\n"
            "        time.sleep(3600)\n"
            "    return x * 10\n"
            "res = slow.pmap(range(5))\n"
            "print(res.values)\n"
            "print(type(res.errors[2]).__name__, res.errors[2].stopped)\n"
            "print(slow.pmap([7]).values)\n"
            "slow.close()\n"
        )
        assert cell.stdout.splitlines() == [
            "[0, 10, None, 30, 40]",
            "TaskTimeoutError True",
            "[70]",
        ]
        assert wait_ended(k.children(), 10) == []


def _widget_states(comms: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Replay ipywidgets' comm messages into each widget's last state."""
    states: dict[str, dict[str, Any]] = {}
    for content in comms:
        data = content.get("data", {})
        state = data.get("state")
        if state is None:
            continue
        states.setdefault(content["comm_id"], {}).update(state)
    return states


def test_progress_renders_a_widget_that_ends_at_n_of_n(tmp_path: Path) -> None:
    with kernel(tmp_path) as k:
        cell = k.run(
            "from parmap import pmap\n"
            "res = pmap(str.upper, [f'line {i}' for i in range(40)], workers=2,"
            " chunksize=3, progress=True)\n"
            "print(res.values[-1])\n"
        )
        assert cell.stdout == "LINE 39\n"
        assert "Traceback" not in cell.stderr
        assert "IProgress not found" not in cell.stderr  # tqdm fell back to text
        states = _widget_states(cell.comms).values()
        bars = [
            s for s in states if s.get("_model_name") in ("FloatProgressModel", "IntProgressModel")
        ]
        assert len(bars) == 1, list(states)
        assert bars[0]["max"] == 40 and bars[0]["value"] == 40
        labels = [s.get("value", "") for s in states if s.get("_model_name") == "HTMLModel"]
        assert any("40/40" in label for label in labels), labels


def test_top_level_await(tmp_path: Path) -> None:
    with kernel(tmp_path) as k:
        cell = k.run(
            "import asyncio\n"
            "from parmap import parallel\n"
            "@parallel(workers=2)\n"
            "def score(text):\n"
            "    return sum(map(ord, text))\n"
            "res = await score.apmap(['ab', 'c', ''])\n"
            "both = await asyncio.gather(score.apmap(['a']), score.apmap(['b', 'c']))\n"
            "print(res.values, [r.values for r in both])\n"
            "outs = [o.value async for o in score.aimap(['x'])]\n"
            "print(outs)\n"
            "score.close()\n"
        )
        assert cell.stdout.splitlines() == ["[195, 99, 0] [[97], [98, 99]]", "[120]"]
        assert wait_ended(k.children(), 10) == []


def _await_markers(directory: Path, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while len(list(directory.glob("started-*"))) < count:
        assert time.monotonic() < deadline, "the items never started"
        time.sleep(0.02)


_HANG = (
    "import os, time\n"
    "from parmap import parallel, pmap\n"
    "def hang(path):\n"
    "    if not path:\n"
    "        return 'ok'\n"
    "    open(f'{path}-{os.getpid()}', 'w').close()\n"
    "    time.sleep(3600)\n"
)


# Not during a top-level ``await``: ipykernel does not deliver an interrupt to
# an awaiting cell at all (ipython/ipykernel#881), whatever the cell awaits.
@pytest.mark.parametrize("how", ["pmap", "pmap-spawn", "parallel"])
def test_an_interrupt_raises_keyboard_interrupt_and_the_next_cell_works(
    how: str, tmp_path: Path
) -> None:
    with kernel(tmp_path) as k:
        k.run(_HANG + "@parallel(workers=2)\ndef phang(path):\n    return hang(path)\n")
        call = {
            "pmap": "pmap(hang, [MARK, MARK], workers=2)",
            "pmap-spawn": "pmap(hang, [MARK, MARK], workers=2, start_method='spawn')",
            "parallel": "phang.pmap([MARK, MARK])",
        }[how].replace("MARK", repr(str(tmp_path / "started")))
        msg_id = k.submit(
            f"try:\n    {call}\nexcept KeyboardInterrupt:\n    print(time.monotonic())\n    raise\n"
        )
        _await_markers(tmp_path, 2)
        workers = k.children()
        sent = time.monotonic()
        k.manager.interrupt_kernel()
        cell = k.collect(msg_id)
        assert cell.ename == "KeyboardInterrupt", cell
        # The kernel and this test read the same monotonic clock.
        assert float(cell.stdout) - sent < 1.0
        # The workers that ran the items are gone; they printed nothing.
        busy = [p for p in workers if p.pid in _marker_pids(tmp_path)]
        assert len(busy) == 2
        assert wait_ended(busy, 5) == []
        assert "Traceback" not in cell.stderr
        assert "Traceback" not in k.log.read_text(errors="replace")
        after = k.run(
            "print(pmap(abs, [-1, -2], workers=2).values, phang.pmap(['', '']).values)\n"
            "phang.close()\n"
        )
        assert after.stdout == "[1, 2] ['ok', 'ok']\n"
        assert wait_ended(k.children(), 10) == []


def _marker_pids(directory: Path) -> set[int]:
    return {int(p.name.rsplit("-", 1)[1]) for p in directory.glob("started-*")}


def _open_pools(method: str) -> str:
    return (
        "from parmap import Pool, parallel\n"
        f"@parallel(workers=2, start_method={method!r})\n"
        "def square(x):\n"
        "    return x * x\n"
        "print(square.pmap(range(4)).values)\n"
        f"pool = Pool(workers=2, timeout=5, start_method={method!r})\n"
        "print(pool.pmap(square, range(4)).values)\n"
    )


def _executor(method: str) -> str:
    return (
        "import multiprocessing\n"
        "from concurrent.futures import ProcessPoolExecutor\n"
        f"context = multiprocessing.get_context({method!r})\n"
        "executor = ProcessPoolExecutor(2, mp_context=context)\n"
        "print(list(executor.map(abs, [0, -1, -4, -9])))\n"
    )


@pytest.mark.parametrize(
    "method",
    # Under fork by default; spawn and forkserver (about 13 s each) with --soak.
    [
        m if m == "fork" else pytest.param(m, marks=pytest.mark.matrix)
        for m in [*METHODS, "forkserver"]
    ],
)
def test_shutdown_with_pools_open_is_as_fast_as_with_an_executor(
    method: str, tmp_path: Path
) -> None:
    timings: dict[str, list[float]] = {"executor": [], "parmap": []}
    # Two interleaved rounds: how long the multiprocessing helpers of spawn and
    # forkserver keep the kernel waiting varies from one shutdown to the next.
    for _round in range(2):
        for name, cell in (("executor", _executor(method)), ("parmap", _open_pools(method))):
            with kernel(tmp_path) as k:
                out = k.run(cell)
                assert out.stdout.splitlines()[0] == "[0, 1, 4, 9]"
                workers = k.children()
                assert len(running(workers)) >= 2
                timings[name].append(k.shutdown())
                assert wait_ended(workers, 5) == [], name
    print(f"shutdown ({method}): {timings}")
    # ipykernel waits while any child is left (zombies too), with sleeps of
    # 0.01, 0.03, 0.1, 0.3, 1, 3 s, and the frontend kills it after 5 s: a
    # worker still there costs seconds. Under spawn and forkserver both wait
    # about 2.6 s for multiprocessing's resource tracker or forkserver, which
    # ignore SIGTERM and end only with the kernel.
    assert min(timings["parmap"]) < max(timings["executor"]) + 1.0, timings


@pytest.mark.parametrize("ignore_signals", [True, False])
def test_restart_with_pools_open_leaves_no_worker(ignore_signals: bool, tmp_path: Path) -> None:
    timings = {}
    cells = {
        "executor": _executor("fork"),
        "parmap": _open_pools("fork").replace(
            "workers=2", f"workers=2, ignore_signals={ignore_signals}"
        ),
    }
    for name, cell in cells.items():
        with kernel(tmp_path) as k:
            k.run(cell)
            workers = k.children()
            old_kernel = k.pid
            timings[name] = k.restart()
            assert k.pid != old_kernel
            assert wait_ended(workers, 5) == [], name
            assert not [p for p in workers if _exists(p)], "workers left as zombies"
            # The new kernel works, pools and all.
            assert k.run(cell).stdout.splitlines()[0] == "[0, 1, 4, 9]"
            k.run("square.close(); pool.close()" if name == "parmap" else "executor.shutdown()")
    print(f"restart: {timings}")
    assert timings["parmap"] < timings["executor"] + 1.0, timings


def _exists(proc: psutil.Process) -> bool:
    try:
        proc.status()
    except psutil.NoSuchProcess:
        return False
    return True


def test_a_tasks_exception_shows_the_remote_traceback_and_the_input_index(
    tmp_path: Path,
) -> None:
    with kernel(tmp_path) as k:
        with pytest.raises(CellError) as caught:
            k.run(
                "from parmap import pmap\n"
                "def parse(record):\n"
                "    return int(record['count'])\n"
                "pmap(parse, [{'count': '1'}, {'count': 'many'}], workers=2)\n"
            )
        cell = caught.value.cell
        assert cell.ename == "ValueError"
        shown = "\n".join(cell.traceback)
        assert "parmap: raised for input index 1" in shown
        # The worker's own frames, as text: the line of the cell that raised.
        assert "return int(record['count'])" in shown
        assert "invalid literal for int()" in shown
        assert "many" in shown
        assert wait_ended(k.children(), 10) == []


def test_closing_from_the_shutdown_hook_while_a_map_runs(tmp_path: Path) -> None:
    # A shutdown that arrives while a cell still maps: the hook closes the
    # pool under the map (from ipykernel's control thread), nothing is left.
    with kernel(tmp_path) as k:
        k.run(_HANG + "@parallel(workers=2)\ndef phang(path):\n    return hang(path)\n")
        k.submit(f"phang.pmap([{str(tmp_path / 'started')!r}] * 2)")
        _await_markers(tmp_path, 2)
        workers = k.children()
        k.shutdown()
        assert wait_ended(workers, 5) == []


# --- the shutdown hook itself, in this process (no kernel) ---------------------


def _pids_when_started(directory: Path, count: int) -> set[int]:
    deadline = time.monotonic() + 60
    while len(list(directory.glob("*.pid"))) < count:
        assert time.monotonic() < deadline, "the items never started"
        time.sleep(0.02)
    time.sleep(0.05)  # the files are written whole (see jobs), but give the pids a moment
    return {int(p.read_text()) for p in directory.glob("*.pid")}


def test_the_hook_stops_a_blocking_map_running_in_another_thread(tmp_path: Path) -> None:
    from parmap import Pool
    from parmap._notebook import close_all_pools

    from . import jobs

    pool = Pool(workers=2)
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            pool.pmap(jobs.write_pid_then_hang, [0, 1], [0, 1], [str(tmp_path)] * 2)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        pids = _pids_when_started(tmp_path, 2)
        close_all_pools()  # as ipykernel's control thread does
        thread.join(30)
        assert not thread.is_alive()
        assert isinstance(outcome[0], RuntimeError), outcome
        assert wait_ended(processes(pids), 5) == []
        # The pool starts new workers for the next map.
        assert pool.pmap(jobs.square, [3]).values == [9]
    finally:
        pool.close()
        thread.join(30)


def test_the_hook_stops_an_async_map_on_a_loop_in_another_thread(tmp_path: Path) -> None:
    from parmap import Pool
    from parmap._notebook import close_all_pools

    from . import jobs

    pool = Pool(workers=2)
    outcome: list[BaseException | None] = []

    def run() -> None:
        async def go() -> None:
            await pool.apmap(jobs.async_marked_sleep, [str(tmp_path)] * 2, [0, 1], [3600] * 2)

        try:
            asyncio.run(go())
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        pids = _pids_when_started(tmp_path, 2)
        close_all_pools()
        thread.join(30)
        assert not thread.is_alive()
        assert isinstance(outcome[0], RuntimeError), outcome
        assert wait_ended(processes(pids), 5) == []
    finally:
        pool.close()
        thread.join(30)
