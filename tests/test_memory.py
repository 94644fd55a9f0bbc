"""max_memory_per_worker, WorkerMemoryError, and an OOM kill called by its name.

The scheduler's part is tested with fake readings; the rest with real
allocations in real workers (``tests.memory_cases``, each case in a
subprocess with a hard time limit), and with the kernel's own OOM killer in a
cgroup with a small memory limit where this machine lets us make one.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parmap import Pool, WorkerCrashedError, WorkerMemoryError, parallel, pmap
from parmap._events import Command, Kill, Measured, Retire, Send, Spawn, Tick
from parmap._memory import Gauge, OomWatch, oom_kills, parse_size, read_rss
from parmap._options import MapConfig, PoolConfig
from parmap._scheduler import MEMORY_POLL_SECONDS, Scheduler

from . import checks
from . import memory_cases as cases
from .checks import run_limited
from .test_scheduler import Harness

ROOT = Path(__file__).resolve().parent.parent
MB = 1000**2


def run_case(*args: str, limit: float = 120) -> dict[str, Any]:
    """Run a case of ``tests.memory_cases`` in a subprocess; a hang fails the test."""
    proc = run_limited([sys.executable, "-m", "tests.memory_cases", *args], limit=limit)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    outcome: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert outcome["leftover"] == [], "a worker outlived its map"
    return outcome


# ---------------------------------------------------------------- the option
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1234, 1234),
        ("512MB", 512 * MB),
        ("2GiB", 2 << 30),
        ("1.5 GB", 1_500 * MB),
        ("300kib", 300 << 10),
        ("4096", 4096),
        (None, None),
    ],
)
def test_sizes_are_parsed_with_decimal_and_binary_units(value: object, expected: int) -> None:
    assert parse_size(value) == expected
    assert PoolConfig(max_memory_per_worker=value).memory_limit == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        ("lots", ValueError, "max_memory_per_worker must be a number of bytes or a size"),
        ("12 parsecs", ValueError, "got '12 parsecs'"),
        (0, ValueError, "max_memory_per_worker must be > 0 bytes, got 0"),
        (-5, ValueError, "must be > 0 bytes"),
        (True, TypeError, "max_memory_per_worker must be a number of bytes"),
        (1.5e9, TypeError, "got 1500000000.0"),
    ],
)
def test_bad_sizes_are_refused_naming_the_option(
    value: object, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        Pool(max_memory_per_worker=value)  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", ["thread", "serial"])
def test_backends_without_processes_refuse_the_limit(backend: str) -> None:
    with pytest.raises(ValueError, match="max_memory_per_worker needs the process backend"):
        pmap(abs, [1], backend=backend, max_memory_per_worker="1GB")
    with pytest.raises(ValueError, match=f"got backend='{backend}'"):
        parallel(backend=backend, max_memory_per_worker=10**9)(abs)


def test_an_executor_backend_refuses_the_limit() -> None:
    from concurrent.futures import ThreadPoolExecutor

    with (
        ThreadPoolExecutor(1) as executor,
        pytest.raises(ValueError, match="needs the process backend"),
    ):
        Pool(backend=executor, max_memory_per_worker="1GB")


def test_memory_limit_is_an_option_of_the_pool_not_of_a_map() -> None:
    with (
        Pool(workers=1) as pool,
        pytest.raises(TypeError, match="max_memory_per_worker is an option of the pool"),
    ):
        pool.pmap(abs, [1], max_memory_per_worker="1GB")  # type: ignore[call-arg]


def test_worker_memory_error_is_a_crash_that_pickles_with_its_fields() -> None:
    error = WorkerMemoryError(7, 200 * MB, 231_500_000)
    assert isinstance(error, WorkerCrashedError)
    assert error.signal == signal.SIGKILL
    assert "item 7 used 231.5 MB" in str(error) and "max_memory_per_worker (200.0 MB)" in str(error)
    back = pickle.loads(pickle.dumps(error))
    assert (type(back), back.index, back.limit, back.rss, str(back)) == (
        WorkerMemoryError,
        7,
        200 * MB,
        231_500_000,
        str(error),
    )


# ---------------------------------------------------------------- measuring
def test_resident_memory_is_read_from_the_kernel() -> None:
    before = read_rss(os.getpid())
    assert before is not None and before > 1 * MB
    block = bytearray(64 * MB)
    for i in range(0, len(block), 4096):
        block[i] = 1
    after = read_rss(os.getpid())
    assert after is not None and after - before > 50 * MB
    del block
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert read_rss(dead.pid) is None


def test_a_forked_worker_is_not_charged_for_what_it_inherited() -> None:
    ballast = bytearray(100 * MB)
    for i in range(0, len(ballast), 4096):
        ballast[i] = 1
    gauge = Gauge(forked=True)
    gauge.spawned(0)
    read_w, write_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        os.read(read_w, 1)
        os._exit(0)
    try:
        inherited_rss = read_rss(pid)
        own = gauge.read(0, pid)
        assert inherited_rss is not None and inherited_rss > 100 * MB
        assert own is not None and own < 50 * MB
    finally:
        os.write(write_w, b"x")
        os.waitpid(pid, 0)
        os.close(read_w)
        os.close(write_w)


# ------------------------------------------------------ the scheduler's part
def memory_harness(workers: int = 2, **kwargs: Any) -> Harness:
    return Harness(workers, memory_limit=200 * MB, **kwargs)


def test_a_busy_worker_over_the_limit_is_killed_and_only_its_item_fails() -> None:
    h = memory_harness()
    job = h.job(["a", "b", "c", "d"], on_error="collect")
    for wid in (0, 1):
        h.sched.on_ready(wid)
    assert h.sched.next_deadline() == pytest.approx(h.now + MEMORY_POLL_SECONDS)
    assert sorted(len(chunk) for chunk in h.chunks.values()) == [1, 1]  # one item per chunk
    h.now += MEMORY_POLL_SECONDS
    assert sorted(h.sched.memory_due(h.now)) == [0, 1]
    h.memory({0: 250 * MB, 1: 120 * MB})
    commands = h.flush()
    assert Kill(0) in commands and Spawn(2) in commands
    assert Retire(1) not in commands  # busy, under the limit: it goes on
    error = job.ready[0][2][0]  # type: ignore[index]
    assert isinstance(error, WorkerMemoryError)
    assert (error.index, error.limit, error.rss) == (0, 200 * MB, 250 * MB)


def test_between_items_a_worker_above_three_quarters_is_retired_and_nothing_fails() -> None:
    h = memory_harness(workers=1)
    job = h.job(["a", "b", "c"], on_error="collect")
    h.sched.on_ready(0)
    h.now += 0.01
    h.sched.on_batch(0, ["A"], None, 0.01, h.now)
    # It finished an item: measured before it is sent the next.
    assert h.sched.memory_due(h.now) == [0]
    assert not any(isinstance(c, Send) for c in h.flush())
    h.memory({0: 160 * MB})
    commands = h.flush()
    assert Retire(0) in commands and Spawn(1) in commands and h.sched.recycled == 1
    h.sched.on_ready(1)
    h.now += 0.01
    h.sched.on_batch(1, ["B"], None, 0.01, h.now)
    h.memory({1: 100 * MB})  # under 75%: it gets the next item
    commands = h.flush()
    assert Retire(1) not in commands
    assert [c.message.args for c in commands if isinstance(c, Send)] == [["c"]]
    assert job.failures == 0


def test_a_pool_without_a_limit_never_asks_for_readings() -> None:
    h = Harness(2)
    h.job(["a", "b"])
    h.now += 1
    assert h.sched.memory_due(h.now) == []
    assert h.sched.next_deadline() is None


def test_an_unsent_sigkill_is_named_and_points_to_the_option() -> None:
    hint = OomWatch().explain(-signal.SIGKILL)
    assert hint is not None
    assert "parmap did not send that SIGKILL" in hint and "max_memory_per_worker" in hint
    assert "out-of-memory killer" in hint
    assert OomWatch().explain(-signal.SIGSEGV) is None
    assert OomWatch().explain(3) is None


# ------------------------------------------------------------- real memory
def check_big(outcome: dict[str, Any]) -> None:
    big = {str(i) for i, mb in enumerate(cases.SIZES) if mb >= 400}
    assert set(outcome["errors"]) == big, outcome["errors"]
    for error in outcome["errors"].values():
        assert error["type"] == "WorkerMemoryError", error
        assert error["limit"] == 200 * MB
        assert error["rss"] > 200 * MB
        # Killed soon after crossing the limit, well before the item's 400 MB.
        assert error["rss"] < 360 * MB, error
    for i, value in enumerate(outcome["values"]):
        if str(i) not in big:
            assert value[0] == cases.SIZES[i]


@pytest.mark.parametrize(
    ("method", "api", "timeout"),
    [
        ("fork", "pmap", "none"),
        ("fork", "imap", "none"),
        ("fork", "apmap", "none"),
        ("fork", "pool", "30"),
        ("fork", "decorated", "none"),
        ("spawn", "decorated", "30"),
        ("spawn", "pmap", "none"),
        ("spawn", "apmap", "30"),
        ("forkserver", "pmap", "30"),
    ],
)
def test_exactly_the_big_items_fail_with_worker_memory_error(
    method: str, api: str, timeout: str
) -> None:
    check_big(run_case("big", method, api, timeout))


@pytest.mark.parametrize(
    ("method", "api", "timeout"),
    [("fork", "pmap", "none"), ("spawn", "pmap", "none"), ("fork", "apmap", "30")],
)
def test_a_leaky_task_runs_forever_on_recycled_workers(method: str, api: str, timeout: str) -> None:
    outcome = run_case("leaky", method, api, timeout)
    assert outcome["failed"] == 0 and outcome["count"] == 100
    # 20 MB per item and 150 MB (75% of 200 MB) to recycle at: a worker runs
    # at most about 8 items, so 100 items need many more than 2 workers.
    assert len(outcome["pids"]) >= 100 // 8


def test_a_memory_kill_is_retried_when_retry_on_names_it(tmp_path: Path) -> None:
    outcome = run_case("retried", str(tmp_path))
    assert outcome["errors"] == {} and outcome["values"] == [0, 1, 2, 3]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{i}.tried" for i in range(4)]


def test_a_memory_kill_is_not_retried_by_default(tmp_path: Path) -> None:
    outcome = run_case("not_retried", str(tmp_path))
    assert sorted(outcome["errors"]) == ["1", "3"]
    assert {e["type"] for e in outcome["errors"].values()} == {"WorkerMemoryError"}


def test_a_sigkill_parmap_did_not_send_is_called_by_its_name() -> None:
    outcome = run_case("sigkill")
    assert list(outcome["errors"]) == ["1"]
    error = outcome["errors"]["1"]
    assert error["type"] == "WorkerCrashedError" and error["exitcode"] == -signal.SIGKILL
    message = error["message"]
    assert "killed by SIGKILL" in message and "parmap did not send that SIGKILL" in message
    assert "max_memory_per_worker" in message
    assert outcome["values"] == [0, None, 2, 3]


# ------------------------------------------------------ the real OOM killer
def _memory_cgroup_parent() -> tuple[Path, str] | str:
    """Where we may make a memory cgroup, and its version; or why we may not."""
    if os.geteuid() != 0:
        return "making a cgroup needs root"
    lines = Path("/proc/self/cgroup").read_text().splitlines()
    for line in lines:
        hierarchy, controllers, path = line.split(":", 2)
        if hierarchy == "0" and not controllers:
            for base in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified")):
                here = base / path.lstrip("/")
                enabled = here / "cgroup.subtree_control"
                if enabled.exists() and "memory" in (here / "cgroup.controllers").read_text():
                    with contextlib.suppress(OSError):
                        if "memory" not in enabled.read_text():
                            enabled.write_text("+memory")
                    if "memory" in enabled.read_text():
                        return here, "v2"
        elif "memory" in controllers.split(","):
            here = Path("/sys/fs/cgroup/memory") / path.lstrip("/")
            if (here / "memory.limit_in_bytes").exists() and os.access(here, os.W_OK):
                return here, "v1"
    return "no writable cgroup with the memory controller (v2 or v1) here"


@pytest.fixture
def small_cgroup() -> Iterator[Path]:
    """A fresh cgroup limited to 150 MB of memory (and no swap)."""
    found = _memory_cgroup_parent()
    if isinstance(found, str):
        pytest.skip(found)
    parent, version = found
    group = parent / f"parmap-test-{os.getpid()}"
    try:
        group.mkdir()
    except OSError as exc:
        pytest.skip(f"cannot make a cgroup under {parent}: {exc}")
    try:
        if version == "v2":
            (group / "memory.max").write_text(str(150 * MB))
            with contextlib.suppress(OSError):
                (group / "memory.swap.max").write_text("0")
        else:
            (group / "memory.limit_in_bytes").write_text(str(150 * MB))
            with contextlib.suppress(OSError):
                (group / "memory.memsw.limit_in_bytes").write_text(str(150 * MB))
        yield group
    finally:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                group.rmdir()
                break
            except OSError:  # its last process is still exiting
                time.sleep(0.05)


def test_the_oom_killer_taking_a_worker_is_named_in_the_error(small_cgroup: Path) -> None:
    outcome = run_case("oom", str(small_cgroup))
    assert list(outcome["errors"]) == ["1"], outcome
    error = outcome["errors"]["1"]
    assert error["type"] == "WorkerCrashedError" and error["exitcode"] == -signal.SIGKILL
    message = error["message"]
    assert "the out-of-memory killer: this cgroup's oom_kill count rose by" in message, message
    assert "max_memory_per_worker" in message
    assert [v[0] if v else None for v in outcome["values"]] == [5, None, 5]


def test_oom_kills_are_counted_where_the_kernel_says() -> None:
    count = oom_kills()
    assert count is None or count >= 0


# ------------------------------------------------------------- command line
def test_the_command_line_takes_the_limit_and_reports_the_memory_error() -> None:
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "parmap", "run", "tests.memory_cases:touch", "--json"),
            *("--workers", "2", "--max-memory-per-worker", "200MB"),
        ],
        input="10\n400\n20\n",
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["index"] for r in records] == [0, 1, 2]
    assert records[1]["error"]["type"] == "WorkerMemoryError"
    assert "over max_memory_per_worker (200.0 MB)" in records[1]["error"]["message"]
    assert records[0]["value"][0] == 10 and records[2]["value"][0] == 20


def test_the_command_line_refuses_a_bad_size_as_a_usage_error() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "parmap", "run", "builtins:len", "--max-memory-per-worker", "lots"],
        input="",
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "max_memory_per_worker must be a number of bytes or a size" in proc.stderr


def test_chunks_hold_as_many_items_as_the_measured_growth_leaves_room_for() -> None:
    h = memory_harness(workers=1)
    h.job([f"line {i}" for i in range(400)], on_error="collect")
    h.sched.on_ready(0)

    def finish_chunk(rss: int) -> list[Any]:
        """The worker reports its chunk; it is measured; what is it sent next?"""
        h.now += 0.01
        assert h.report(0, [s.upper() for s in h.chunks[0]]) == []  # measured first
        h.memory({0: rss})
        h.flush()
        return h.chunks.get(0, [])

    assert len(h.chunks[0]) == 1  # nothing measured yet
    assert len(finish_chunk(30 * MB)) == 1  # one reading: no growth known yet
    # The second item added 10 MB: (150 MB - 40 MB) / 10 MB = 11 items fit.
    assert len(finish_chunk(40 * MB)) == 11
    # Those 11 added only 1 MB each, but the map's worst (10 MB) still rules.
    assert len(finish_chunk(51 * MB)) == 9


def test_a_map_whose_items_keep_nothing_gets_full_chunks() -> None:
    h = memory_harness(workers=1)
    h.job(list(range(2000)), on_error="collect")
    h.sched.on_ready(0)
    for _ in range(2):
        h.now += 0.01
        h.report(0, list(h.chunks[0]), per_item=1e-6)
        h.memory({0: 30 * MB})
        h.flush()
    assert len(h.chunks[0]) > 100


# ------------------------------------------------- the scheduler, at random
@dataclass
class _ModelWorker:
    rss: int
    ready: bool = False
    chunk: list[int] = field(default_factory=list)
    reported: int = 0  # items reported since birth


@settings(max_examples=150, deadline=None)
@given(
    keeps=st.lists(st.sampled_from([0, 0, 1, 5, 20, 60]), min_size=1, max_size=60),
    peaks=st.lists(st.sampled_from([0, 0, 0, 50, 300]), min_size=1, max_size=60),
    workers=st.integers(1, 3),
    seed=st.integers(0, 2**32 - 1),
)
def test_random_readings_keep_every_promise(
    keeps: list[int], peaks: list[int], workers: int, seed: int
) -> None:
    """Items keep memory (MB) and may peak above it while they run; readings come
    as the engine takes them. Every input gets one outcome; a memory error names
    a reading over the limit and no bystander; only idle workers over 75% are
    retired; an idle worker is measured before it gets more."""
    rng = random.Random(seed)
    busy = rng.choice([1e-5, 0.001])  # fast items are sent ahead
    limit, base = 200 * MB, 20 * MB
    n = len(keeps)
    sched = Scheduler(workers, memory_limit=limit, prefetch=True)
    model: dict[int, _ModelWorker] = {}
    last_reading: dict[int, int] = {}

    def beacon(wid: int) -> tuple[int, float | None] | None:
        w = model.get(wid)
        if w is None:
            return None
        return (w.reported + 1, 0.0) if w.chunk and w.ready else (w.reported, None)

    def rss_of(wid: int) -> int:
        w = model[wid]
        running = w.chunk[0] if w.chunk and w.ready else None
        peak = 0 if running is None else peaks[running % len(peaks)] * MB
        return w.rss + peak

    now = 0.0

    def execute() -> None:
        due = sched.memory_due(now)
        if due:
            readings = {wid: rss_of(wid) for wid in due}
            last_reading.update(readings)
            sched.handle(Measured(readings, {wid: beacon(wid) for wid in due}, now))
        checks.execute(sched, run)

    def run(cmd: Command) -> None:
        if isinstance(cmd, Spawn):
            model[cmd.wid] = _ModelWorker(base)
        elif isinstance(cmd, Send):
            w = model[cmd.wid]
            # An idle worker is measured first; a busy one may get its
            # next chunk ahead (it runs its chunks in order).
            assert w.chunk or not sched.slots[cmd.wid].mem_check, "sent before measured"
            args = cmd.message.args
            w.chunk += list(range(args[0], args[0] + len(args)))
        elif isinstance(cmd, Retire):
            assert not model[cmd.wid].chunk, "a busy worker was retired"
            assert last_reading[cmd.wid] > 0.75 * limit or sched.closing
            del model[cmd.wid]
        elif isinstance(cmd, Kill):
            del model[cmd.wid]

    job = sched.new_job(MapConfig(on_error="collect"), fn_payload=b"fn", star=False, ordered=True)
    sched.feed(job, list(range(n)), now)
    sched.end_input(job)
    execute()
    for _ in range(20 * n + 200):
        if job.finished:
            break
        choice = rng.random()
        wid = rng.choice(list(model)) if model else None
        if wid is not None and not model[wid].ready:
            model[wid].ready = True
            sched.on_ready(wid)
        elif wid is not None and model[wid].chunk and choice < 0.6:
            w = model[wid]
            item = w.chunk.pop(0)
            w.rss += keeps[item] * MB
            w.reported += 1
            now += 0.001
            sched.on_batch(wid, [item * 2], None, busy, now)
        else:
            now += rng.choice([0.005, MEMORY_POLL_SECONDS, 0.05])
            sched.handle(Tick(now, {wid: beacon(wid) for wid in sched.beacons_wanted(now)}))
        execute()
    assert job.finished, "the map never finished"
    seen: dict[int, Any] = {}
    while (seg := job.take()) is not None:
        start, values, errors = seg
        for i, value in enumerate(values, start):
            assert i not in seen, f"input {i} got two outcomes"
            seen[i] = (errors or {}).get(i, value)
    assert sorted(seen) == list(range(n))
    for i, outcome in seen.items():
        if isinstance(outcome, BaseException):
            assert isinstance(outcome, WorkerMemoryError) and outcome.rss > limit
            # Measured at most 75% of the limit before it ran alone: only an
            # item that peaks at 300 MB can take a worker over; no bystander.
            assert peaks[i % len(peaks)] == 300, f"input {i} failed as a bystander"
        else:
            assert outcome == i * 2


@pytest.mark.parametrize(("kept_mb", "sent_ahead"), [(0, True), (40, False)])
def test_fast_items_are_sent_ahead_only_while_their_growth_leaves_room(
    kept_mb: int, sent_ahead: bool
) -> None:
    h = memory_harness(workers=1, prefetch=True)  # as the process backend says
    h.job(list(range(20_000)), on_error="collect")
    h.sched.on_ready(0)
    rss = 30 * MB
    for _ in range(3):
        chunk = h.chunks[0]
        h.now += 0.01
        rss += kept_mb * MB * len(chunk) // max(1, len(chunk))  # kept_mb per chunk
        h.report(0, list(chunk), per_item=1e-6)
        if 0 not in h.chunks:  # idle: measured before its next chunk
            h.memory({0: min(rss, 140 * MB)})
            h.flush()
    assert bool(h.queued.get(0)) == sent_ahead
