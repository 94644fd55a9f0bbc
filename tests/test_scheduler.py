"""Unit tests of the I/O-free scheduler: fake time, fake beacons, no processes."""

from __future__ import annotations

import math
from collections.abc import Iterable
from functools import partial
from pickle import PicklingError
from typing import Any

import pytest

from parmap import TaskTimeoutError, WorkerCrashedError
from parmap._backends.process import ProcessBackend
from parmap._events import ChunkMessage, Command, Exited, Kill, Measured, Retire, Send, Spawn, Tick
from parmap._options import MapConfig, PoolConfig
from parmap._pickling import dump_function
from parmap._scheduler import (
    ITEM_TIMES_KEPT,
    MAX_QUEUED,
    MAX_STARTUP_FAILURES,
    MAX_WINDOW_ITEMS,
    POLL_SECONDS,
    TIMED_PREFETCH_AFTER,
    WINDOW_CHUNKS,
    Job,
    Scheduler,
)
from parmap._wire import Encoded

from .checks import execute


class Harness:
    """A scheduler plus a record of what it asked for; time and beacons are ours."""

    def __init__(self, workers: int = 2, *, bad_args: tuple[Any, ...] = (), **kwargs: Any) -> None:
        self.now = 0.0
        self.beacons: dict[int, tuple[int, float | None]] = {}
        self.bad_args = bad_args

        self.sched = Scheduler(workers, **kwargs)
        self.log: list[Any] = []
        self.chunks: dict[int, list[Any]] = {}  # what each worker runs now
        self.queued: dict[int, list[list[Any]]] = {}  # and what it runs next (prefetch)

    def job(
        self, inputs: Iterable[Any] | None = None, *, ordered: bool = False, **config: Any
    ) -> Job:
        job = self.sched.new_job(
            MapConfig(**config), fn_payload=b"fn", star=False, ordered=ordered, total=None
        )
        if inputs is not None:
            self.sched.feed(job, list(inputs), self.now)
            self.sched.end_input(job)
        self.flush()
        return job

    def beacon(self, wid: int) -> tuple[int, float | None]:
        return self.beacons.get(wid, (0, None))

    def tick(self, now: float) -> None:
        """Time passes to ``now``, as the engine reports it."""
        wanted = self.sched.beacons_wanted(now)
        self.sched.handle(Tick(now, {wid: self.beacon(wid) for wid in wanted}))

    def exit(self, wid: int, code: int, now: float) -> None:
        """Worker ``wid`` exits with ``code``, as a backend reports it."""
        self.sched.handle(Exited(wid, code, now, self.beacon(wid)))

    def memory(self, readings: dict[int, int | None]) -> None:
        """The engine read the memory of the workers in ``readings``."""
        beacons = {wid: self.beacon(wid) for wid in readings}
        self.sched.handle(Measured(readings, beacons, self.now))

    def encode(self, message: ChunkMessage) -> object:
        for arg in message.args:
            if arg in self.bad_args:
                raise TypeError(f"cannot pickle {arg!r}")
        return message

    def run(self, cmd: Command) -> None:
        """A worker gets what the scheduler asked for."""
        if isinstance(cmd, Send):
            args = list(cmd.message.args)
            if self.chunks.get(cmd.wid):
                self.queued.setdefault(cmd.wid, []).append(args)
            else:
                self.chunks[cmd.wid] = args
        elif isinstance(cmd, Kill | Retire):
            self.chunks.pop(cmd.wid, None)
            self.queued.pop(cmd.wid, None)

    def flush(self) -> list[Any]:
        """Carry out the commands, as the engine does (a chunk is encoded first)."""
        commands = execute(self.sched, self.run, encode=self.encode)
        self.log.extend(commands)
        return commands

    def report(
        self,
        wid: int,
        values: list[Any],
        errors: dict[int, BaseException] | None = None,
        *,
        per_item: float = 0.001,
    ) -> list[Any]:
        current = self.chunks.get(wid)
        if current is not None:  # the worker moves on: to its queued chunk when done
            rest = current[len(values) :]
            if rest:
                self.chunks[wid] = rest
            else:
                del self.chunks[wid]
                if self.queued.get(wid):
                    self.chunks[wid] = self.queued[wid].pop(0)
        self.sched.on_batch(wid, list(values), errors, busy=per_item * len(values), now=self.now)
        return self.flush()

    def finish_all(self, fn: Any = lambda x: x) -> None:
        """Let every worker complete its chunk, until no work is left."""
        for _ in range(1000):
            busy = [wid for wid, chunk in self.chunks.items() if chunk]
            if not busy:
                return
            for wid in busy:
                self.report(wid, [fn(x) for x in self.chunks[wid]])
        raise AssertionError("work never finished")


def drain(job: Job) -> tuple[list[Any], dict[int, BaseException]]:
    values: dict[int, Any] = {}
    errors: dict[int, BaseException] = {}
    while (seg := job.take()) is not None:
        start, vals, errs = seg
        for i, v in enumerate(vals, start):
            assert i not in values, f"index {i} emitted twice"
            values[i] = v
        errors.update(errs or {})
    return [values[i] for i in sorted(values)], errors


def test_first_job_spawns_the_pool_and_sends_one_chunk_per_worker() -> None:
    h = Harness(workers=3)
    h.job(range(10))
    spawns = [c for c in h.log if isinstance(c, Spawn)]
    sends = [c for c in h.log if isinstance(c, Send)]
    assert [s.wid for s in spawns] == [0, 1, 2]
    assert sorted(s.wid for s in sends) == [0, 1, 2]


def test_results_come_back_in_input_order_and_complete() -> None:
    h = Harness(workers=3)
    job = h.job(range(50))
    h.finish_all(lambda x: x * 10)
    assert job.finished
    values, errors = drain(job)
    assert values == [x * 10 for x in range(50)]
    assert not errors


def test_ordered_job_holds_later_segments_until_earlier_ones_arrive() -> None:
    h = Harness(workers=2)
    job = h.job(range(2), ordered=True, chunksize=1)
    assert h.chunks == {0: [0], 1: [1]}
    h.report(1, ["b"])
    assert job.take() is None  # input 1 waits for input 0
    h.report(0, ["a"])
    assert job.take() == (0, ["a"], None)
    assert job.take() == (1, ["b"], None)


def test_chunks_grow_once_items_prove_fast() -> None:
    h = Harness(workers=1)
    h.job(range(10_000))
    assert h.chunks[0] == [0]  # unknown speed: one item first
    h.report(0, [0])  # busy 1 ms for one item -> ~20 items per 20 ms chunk
    assert len(h.chunks[0]) > 1


def test_a_big_function_does_not_make_its_items_count_as_big() -> None:
    # Issue 19: the 8 MB the first chunk carries for the function once must
    # not count as the weight of its one item, or every chunk after it would
    # hold one item (MAX_CHUNK_BYTES / 8 MB < 1). Real encoding, no processes.
    backend = ProcessBackend(PoolConfig(workers=1, start_method="fork"))
    payloads: list[Encoded] = []

    def encode(message: ChunkMessage) -> object:
        payloads.append(backend.encode(message))
        return payloads[-1]

    sched = Scheduler(1)
    fn = dump_function(partial(max, b"x" * (8 << 20)), "fork")
    job = sched.new_job(MapConfig(), fn_payload=fn, star=False, ordered=False, total=None)
    sched.feed(job, list(range(20_000)), 0.0)
    sched.end_input(job)
    first = [c for c in execute(sched, encode=encode) if isinstance(c, Send)]
    assert len(first) == 1 and len(payloads[0].body) > 8 << 20  # it does carry the function
    sched.on_batch(0, [0], None, busy=1e-6, now=0.001)
    second = [c for c in execute(sched, encode=encode) if isinstance(c, Send)]
    slot = sched.slots[0]
    assert len(second) == 1 and slot.chunk is not None
    assert len(slot.chunk.args) > 1_000
    assert len(payloads[1].body) < 1 << 20  # and it alone


def test_a_map_stopped_by_an_unpicklable_input_kills_only_workers_that_got_its_chunks() -> None:
    # The scheduler queues both chunks before the engine encodes either; the
    # first one's unpicklable input stops the map while the second is still
    # on its way. Its worker must be stopped only if the chunk reached it.
    h = Harness(workers=2, bad_args=(0, 2))
    job = h.job(range(4), chunksize=2)
    assert isinstance(job.error, PicklingError)
    assert not [c for c in h.log if isinstance(c, Kill)]  # neither worker got a chunk
    assert sorted(h.sched.slots) == [0, 1]

    h = Harness(workers=2, bad_args=(0,))
    job = h.job(range(4), chunksize=2)
    assert isinstance(job.error, PicklingError)
    assert [c.wid for c in h.log if isinstance(c, Kill)] == [1]  # it runs [2, 3] of a dead map
    assert sorted(h.sched.slots) == [0]


@pytest.mark.parametrize(("per_item", "first_chunk"), [(1e-7, 10), (1e-3, 5)])
def test_a_map_worth_less_than_a_round_trip_goes_to_one_worker(
    per_item: float, first_chunk: int
) -> None:
    # Latency of a small map: ten items of 0.1 us are less work than one
    # message, so one worker gets them all; ten of 1 ms still split evenly.
    h = Harness(workers=2)
    first = h.sched.new_job(MapConfig(), fn_payload=b"fn", star=False, ordered=False, fn_key="f")
    h.sched.feed(first, [0], h.now)
    h.sched.end_input(first)
    h.flush()
    h.report(0, [0], per_item=per_item)  # the pool learns f's item time
    job = h.sched.new_job(
        MapConfig(), fn_payload=b"fn", star=False, ordered=False, total=10, fn_key="f"
    )
    h.sched.feed(job, list(range(10)), h.now)
    h.sched.end_input(job)
    sends = [c for c in h.flush() if isinstance(c, Send) and c.message.job_id == job.id]
    assert len(sends[0].message.args) == first_chunk
    assert (len(sends) == 1) == (first_chunk == 10)
    h.finish_all()
    assert drain(job) == (list(range(10)), {})


def test_buffer_bounds_how_much_input_is_pulled_ahead_of_the_consumer() -> None:
    h = Harness(workers=2)
    job = h.job(buffer=8, chunksize=2)
    assert h.sched.want(job) == 8
    h.sched.feed(job, list(range(8)), h.now)
    h.flush()
    assert h.sched.want(job) == 0
    h.finish_all()
    assert h.sched.want(job) == 0  # done but not consumed yet
    drain(job)
    assert h.sched.want(job) == 8


def test_timeout_kills_the_worker_fails_the_running_item_and_requeues_the_rest() -> None:
    h = Harness(workers=1)
    job = h.job(range(4), timeout=5, chunksize=4, on_error="collect")
    assert h.chunks[0] == [0, 1, 2, 3]
    h.report(0, [0])  # item 0 done at t=0
    h.now = 1.0
    h.beacons[0] = (2, 1.0)  # item 1 started at t=1 (not yet reported)
    h.now = 5.5
    h.tick(h.now)  # deadline by `since` passed, but item 1 has time left
    assert not any(isinstance(c, Kill) for c in h.flush())
    deadline = h.sched.next_deadline()
    assert deadline is not None and deadline <= 6.0
    h.now = 5.99
    h.tick(h.now)
    assert not any(isinstance(c, Kill) for c in h.flush())
    h.now = 6.0
    h.tick(h.now)
    commands = h.flush()
    assert Kill(0) in commands
    assert Spawn(1) in commands
    assert h.chunks[1] == [2, 3]  # the rest of the chunk goes to the replacement
    h.report(1, [2, 3])
    values, errors = drain(job)
    assert values == [0, None, 2, 3]
    assert isinstance(errors[1], TaskTimeoutError)
    assert errors[1].index == 1
    assert job.finished


def test_a_timed_chunk_queued_behind_the_running_one_keeps_per_item_deadlines() -> None:
    # Timed maps of tiny items queue chunks too: an item of a queued chunk
    # is timed from its own start, never from when its chunk was sent.
    h = Harness(workers=1, prefetch=True)
    job = h.job(range(300), timeout=1.0, chunksize=100, on_error="collect")
    h.sched.on_ready(0, h.now)
    h.flush()
    h.report(0, h.chunks[0], per_item=1e-6)  # items 0-99: the item time is known
    slot = h.sched.slots[0]
    assert slot.chunk is not None and slot.chunk.start == 100
    assert [c.start for c in slot.queue] == [200]  # sent at t=0
    h.now = 2.0
    h.report(0, h.chunks[0], per_item=1e-6)  # 100-199 done; the worker is on 200-299
    h.beacons[0] = (200 + 1, 3.0)  # item 200 started at t=3 and hangs
    for h.now in (3.0, 3.5, 3.99):
        h.tick(h.now)
        assert not any(isinstance(c, Kill) for c in h.flush())
    h.now = 4.0
    h.tick(h.now)
    assert Kill(0) in h.flush()
    h.sched.on_ready(1, h.now)  # the replacement
    h.flush()
    h.finish_all()
    values, errors = drain(job)
    assert list(errors) == [200] and isinstance(errors[200], TaskTimeoutError)
    assert values[:200] == list(range(200)) and values[201:] == list(range(201, 300))


def test_a_timed_map_queues_only_after_its_first_items_and_never_after_a_timeout() -> None:
    # A chunk queued behind a hanging item starts a whole timeout late: a
    # timed map sends ahead once its items have shown they are short, and
    # stops at its first timeout.
    h = Harness(workers=1, prefetch=True)
    job = h.job(range(400), timeout=1.0, chunksize=10, on_error="collect")
    h.sched.on_ready(0, h.now)
    h.flush()
    slot = h.sched.slots[0]
    done = 0
    while done < TIMED_PREFETCH_AFTER:
        assert not slot.queue, f"sent ahead after {done} items"
        assert slot.chunk is not None
        done += len(h.chunks[0])
        h.report(0, h.chunks[0], per_item=1e-6)
    assert slot.queue  # short items, enough of them: now it sends ahead
    running = slot.chunk
    assert running is not None
    h.beacons[0] = (done + 1, h.now)  # the running chunk's first item hangs
    h.now += 1.0
    h.tick(h.now)
    assert Kill(0) in h.flush()
    h.sched.on_ready(1, h.now)  # the replacement
    h.flush()
    for _ in range(5):  # it runs what came back, one chunk at a time
        new = h.sched.slots[1]
        assert not new.queue
        h.report(1, h.chunks[1], per_item=1e-6)
    h.finish_all()
    values, errors = drain(job)
    assert list(errors) == [running.start] and isinstance(errors[running.start], TaskTimeoutError)
    assert len(values) == 400


def test_timeout_blames_the_item_the_beacon_names_even_when_earlier_ones_are_unreported() -> None:
    h = Harness(workers=1)
    job = h.job(range(3), timeout=1, chunksize=3, on_error="collect")
    # Items 0 and 1 finished but their batch is still held by the worker;
    # item 2 has been running since t=0.2.
    h.beacons[0] = (3, 0.2)
    h.now = 1.3
    h.tick(h.now)
    h.flush()
    assert h.chunks[1] == [0, 1]  # their outcomes died with the worker: run again
    h.report(1, [0, 1])
    values, errors = drain(job)
    assert values == [0, 1, None]
    assert list(errors) == [2]


def test_an_item_the_beacon_cannot_date_is_timed_from_when_it_was_first_seen() -> None:
    h = Harness(workers=1)
    job = h.job(range(4), timeout=5, chunksize=4, on_error="collect")
    h.beacons[0] = (1, 0.0)  # item 0 started at t=0
    # A timed chunk of several items: the beacon is read often, not only at
    # deadlines, so that an item it cannot date is seen soon after it starts.
    deadline = h.sched.next_deadline()
    assert deadline is not None and deadline <= POLL_SECONDS
    h.now = 2.0
    h.beacons[0] = (3, math.inf)  # item 2 running since some time after t=0
    h.tick(h.now)
    deadline = h.sched.next_deadline()
    assert deadline is not None and deadline <= h.now + POLL_SECONDS
    h.now = 6.9  # its chunk began 6.9 s ago, but item 2 was first seen at t=2
    h.tick(h.now)
    assert not any(isinstance(c, Kill) for c in h.flush())
    h.now = 7.0
    h.tick(h.now)
    assert Kill(0) in h.flush()
    h.finish_all()
    values, errors = drain(job)
    assert values == [0, 1, None, 3]
    assert isinstance(errors[2], TaskTimeoutError)


def test_a_timed_chunk_of_one_item_is_not_polled() -> None:
    h = Harness(workers=1)
    h.job(range(1), timeout=5)
    assert h.sched.next_deadline() == pytest.approx(5.0)


def test_deadline_is_rechecked_shortly_when_no_item_is_running() -> None:
    h = Harness(workers=1)
    h.job(range(1), timeout=10)
    h.beacons[0] = (0, None)  # still starting up
    h.now = 10.0
    h.tick(h.now)
    assert not any(isinstance(c, Kill) for c in h.flush())
    deadline = h.sched.next_deadline()
    assert deadline is not None and 10.0 < deadline < 10.5


def test_crash_fails_only_the_running_item() -> None:
    h = Harness(workers=2)
    job = h.job(range(6), chunksize=3, on_error="collect")
    h.sched.on_ready(0)
    h.sched.on_ready(1)
    h.beacons[0] = (2, 0.0)  # running item 1 of its chunk [0, 1, 2]
    h.report(0, [0])
    h.exit(0, -11, h.now)
    h.flush()
    h.finish_all()
    values, errors = drain(job)
    assert values == [0, None, 2, 3, 4, 5]
    assert isinstance(errors[1], WorkerCrashedError)
    assert errors[1].exitcode == -11
    assert errors[1].signal is not None and errors[1].signal.name == "SIGSEGV"


def test_unexplained_crash_resends_items_one_by_one_to_find_the_culprit() -> None:
    h = Harness(workers=1)
    job = h.job(range(3), chunksize=3, on_error="collect")
    h.sched.on_ready(0)
    h.beacons[0] = (0, None)  # died before starting any item
    h.exit(0, 1, h.now)
    h.flush()
    assert h.chunks[1] == [0]  # sent alone
    h.sched.on_ready(1)
    h.report(1, [0])
    assert h.chunks[1] == [1]
    h.beacons[1] = (1, None)
    h.exit(1, 1, h.now)  # a lone item that kills its worker is the culprit
    h.flush()
    h.finish_all()
    values, errors = drain(job)
    assert values == [0, None, 2]
    assert list(errors) == [1]


def test_workers_dying_at_startup_are_not_blamed_and_eventually_break_the_pool() -> None:
    h = Harness(workers=1)
    job = h.job(range(2), chunksize=2)
    for attempt in range(MAX_STARTUP_FAILURES):
        wid = attempt
        h.exit(wid, 1, h.now)
        h.flush()
    assert job.finished
    assert isinstance(job.error, RuntimeError)
    assert "starting" in str(job.error)
    assert job.failures == 0  # no input was blamed
    later = h.sched.new_job(MapConfig(), fn_payload=None, star=False, ordered=False)
    assert later.finished and later.error is job.error


def test_retries_rerun_raised_errors_up_to_the_limit() -> None:
    h = Harness(workers=1)
    job = h.job(range(1), retries=2, on_error="collect")
    for _ in range(3):
        h.report(0, [None], {0: ValueError("flaky")})
    assert job.finished
    _values, errors = drain(job)
    assert isinstance(errors[0], ValueError)
    assert sum(isinstance(c, Send) for c in h.log) == 3


def test_retry_on_limits_which_errors_are_retried() -> None:
    h = Harness(workers=1)
    job = h.job(range(1), retries=3, retry_on=(KeyError,), on_error="collect")
    h.report(0, [None], {0: ValueError("no retry")})
    assert job.finished
    assert sum(isinstance(c, Send) for c in h.log) == 1


@pytest.mark.parametrize(
    ("retry_on", "retried"),
    [
        ((Exception,), False),
        ((TaskTimeoutError,), True),
        ((TimeoutError,), True),
        # TaskTimeoutError is an OSError, but retry_on=(OSError,) means the
        # I/O errors a task raises, not an item that hung.
        ((OSError,), False),
        ((ConnectionError, OSError), False),
        ((KeyError, TimeoutError), True),
    ],
)
def test_timeouts_are_retried_only_when_retry_on_names_them(
    retry_on: tuple[type[BaseException], ...], retried: bool
) -> None:
    h = Harness(workers=1)
    job = h.job(range(1), timeout=1, retries=1, retry_on=retry_on, on_error="collect")
    h.beacons[0] = (1, 0.0)
    h.now = 2.0
    h.tick(h.now)
    h.flush()
    assert (1 in h.chunks) is retried
    assert job.finished is not retried


@pytest.mark.parametrize(
    ("retry_on", "retried"),
    [
        ((Exception,), False),
        ((RuntimeError,), False),  # WorkerCrashedError is one; it does not say "crashes"
        ((WorkerCrashedError,), True),
        ((ValueError, WorkerCrashedError), True),
    ],
)
def test_crashes_are_retried_only_when_retry_on_names_them(
    retry_on: tuple[type[BaseException], ...], retried: bool
) -> None:
    h = Harness(workers=1)
    job = h.job(range(1), retries=1, retry_on=retry_on, on_error="collect")
    h.sched.on_ready(0)
    h.beacons[0] = (1, 0.0)
    h.exit(0, -9, h.now)
    h.flush()
    assert (1 in h.chunks) is retried
    assert job.finished is not retried


@pytest.mark.parametrize("workers", [1, 2, 8])
@pytest.mark.parametrize("chunksize", [1000, 10**5, 10**7])
def test_an_explicit_chunksize_keeps_the_read_ahead_window_within_the_cap(
    workers: int, chunksize: int
) -> None:
    h = Harness(workers=workers)
    job = h.job(chunksize=chunksize)
    cap = MAX_WINDOW_ITEMS // (2 * workers)  # what an explicit chunksize is cut to
    window = h.sched.want(job)
    assert window == min(WINDOW_CHUNKS * workers * min(chunksize, cap), MAX_WINDOW_ITEMS)
    h.sched.feed(job, list(range(window)), h.now)
    h.flush()
    # Every worker still gets a chunk of its own.
    assert len(h.chunks) == workers
    assert all(len(chunk) <= chunksize for chunk in h.chunks.values())


def test_an_explicit_buffer_lets_an_explicit_chunksize_be_as_large_as_asked() -> None:
    h = Harness(workers=2)
    job = h.job(chunksize=10**5, buffer=4 * 10**5)
    h.sched.feed(job, list(range(h.sched.want(job))), h.now)
    h.flush()
    assert sorted(len(chunk) for chunk in h.chunks.values()) == [10**5, 10**5]


def test_item_times_are_remembered_for_a_bounded_number_of_functions() -> None:
    h = Harness(workers=1)
    for n in range(3 * ITEM_TIMES_KEPT):
        job = h.sched.new_job(
            MapConfig(), fn_payload=b"fn", star=False, ordered=False, fn_key=("f", n)
        )
        h.sched.feed(job, [n], h.now)
        h.sched.end_input(job)
        h.flush()
        h.finish_all()
        drain(job)
        h.sched.remove(job)
    assert len(h.sched._item_times) <= ITEM_TIMES_KEPT
    # The latest ones are the ones kept: a new map of such a function starts informed.
    latest = h.sched.new_job(
        MapConfig(),
        fn_payload=b"fn",
        star=False,
        ordered=False,
        fn_key=("f", 3 * ITEM_TIMES_KEPT - 1),
    )
    assert latest.item_time is not None


def test_raise_mode_stops_the_job_and_kills_only_its_workers() -> None:
    h = Harness(workers=3)
    other = h.job(range(1), chunksize=1)
    job = h.job(range(10), chunksize=1)
    # Worker 0 runs `other`; workers 1 and 2 run `job`.
    owners = dict(h.chunks.items())
    assert len(owners) == 3
    job_wids = [wid for wid in h.chunks if wid != 0]
    error = RuntimeError("boom")
    h.report(job_wids[0], [None], {0: error})
    commands = h.flush()
    assert job.finished and job.error is error
    killed = {c.wid for c in h.log if isinstance(c, Kill)}
    assert killed == {job_wids[1]}  # the other in-flight worker of `job`
    assert not other.finished
    assert not commands or all(not isinstance(c, Kill) or c.wid != 0 for c in commands)


def test_unpicklable_argument_fails_only_its_item() -> None:
    h = Harness(workers=1, bad_args=("bad",))
    job = h.job(["a", "bad", "c"], chunksize=3, on_error="collect")
    h.finish_all()
    values, errors = drain(job)
    assert values == ["a", None, "c"]
    assert "could not be pickled" in str(errors[1])


def test_max_tasks_per_worker_retires_and_replaces_workers() -> None:
    h = Harness(workers=1, max_tasks_per_worker=2)
    job = h.job(range(5), chunksize=10)
    assert h.chunks[0] == [0, 1]  # capped by the worker's remaining budget
    h.report(0, [0, 1])
    assert Retire(0) in h.log and Spawn(1) in h.log
    h.finish_all()
    assert drain(job)[0] == list(range(5))


def test_two_jobs_share_the_workers_round_robin() -> None:
    h = Harness(workers=2)
    a = h.job(chunksize=1)
    b = h.job(chunksize=1)
    h.sched.feed(a, list(range(5)), h.now)  # both idle workers take from `a`
    h.sched.feed(b, list(range(100, 105)), h.now)
    h.flush()
    assert sorted(x for chunk in h.chunks.values() for x in chunk) == [0, 1]
    h.report(0, h.chunks[0])
    h.report(1, h.chunks[1])
    assert sorted(x for chunk in h.chunks.values() for x in chunk) == [2, 100]


def test_initializer_failure_breaks_the_pool_and_fails_running_jobs() -> None:
    h = Harness(workers=2)
    job = h.job(range(3))
    h.sched.on_init_failed(0, ValueError("no config"))
    h.flush()
    assert job.finished and isinstance(job.error, ValueError)
    assert not h.sched.slots


def test_cancel_kills_the_jobs_workers_and_drops_pending_input() -> None:
    h = Harness(workers=2)
    job = h.job(range(100), chunksize=1)
    h.sched.cancel(job)
    commands = h.flush()
    assert {c.wid for c in commands if isinstance(c, Kill)} == {0, 1}
    assert not job.pending and job.finished
    assert job not in h.sched.jobs


def test_close_retires_idle_workers_and_kills_busy_ones() -> None:
    h = Harness(workers=2)
    h.job(range(1), chunksize=1)
    h.sched.close()
    commands = h.flush()
    kinds = {type(c) for c in commands}
    assert kinds == {Kill, Retire}


def test_a_run_fed_before_it_drains_does_not_keep_what_was_sent() -> None:
    # An imap over millions of items feeds the last pending run again and
    # again before it drains; the inputs already sent must not pile up in it.
    h = Harness(workers=1)
    job = h.job(chunksize=100, buffer=1000)
    for _ in range(50):
        h.sched.feed(job, list(range(h.sched.want(job))), h.now)
        h.flush()
        h.finish_all()
        drain(job)
        assert sum(len(run.args) for run in job.pending) <= 1000
    assert job.pulled > 5_000


def test_prefetch_queues_a_second_chunk_and_requeues_it_if_the_worker_dies() -> None:
    h = Harness(workers=1, prefetch=True)
    job = h.job(range(5000), on_error="collect")
    h.sched.on_ready(0)
    h.report(0, h.chunks[0], per_item=1e-6)  # a fast item: the map may now prefetch
    sends = [c for c in h.log if isinstance(c, Send)]
    assert len(sends) == 3  # the first item, then a chunk running and one queued
    slot = h.sched.slots[0]
    assert slot.chunk is not None and len(slot.queue) == 1
    queued_start = slot.queue[0].start
    h.beacons[0] = (1 + 1, 0.0)  # running the first item of the running chunk
    h.exit(0, -9, h.now)
    h.flush()
    h.finish_all()
    values, errors = drain(job)
    assert len(values) == 5000 and list(errors) == [1]
    assert queued_start > 1  # the queued chunk ran again on the replacement


@pytest.mark.parametrize(
    ("per_item", "depth"),
    [(1e-7, MAX_QUEUED), (1e-4, 1)],
    ids=["chunks-of-tiny-items", "chunks-of-100-ms"],
)
def test_short_chunks_queue_several_behind_the_running_one_and_a_kill_loses_none(
    per_item: float, depth: int
) -> None:
    # 1,000 items of 0.1 us run dry long before a parent that shares the
    # cores gets to refill a queue of one; chunks of 0.1 s need no more.
    h = Harness(workers=1, prefetch=True)
    job = h.job(range(20_000), chunksize=1000, on_error="collect")
    h.sched.on_ready(0)
    h.report(0, h.chunks[0], per_item=per_item)
    slot = h.sched.slots[0]
    assert len(slot.queue) == depth == len(h.queued[0])
    assert [c.start for c in slot.queue] == [2000 + 1000 * i for i in range(depth)]
    h.beacons[0] = (1000 + 1 + 1, 0.0)  # running the second item of its running chunk
    h.exit(0, -9, h.now)
    h.flush()
    h.finish_all()
    values, errors = drain(job)
    assert list(errors) == [1001]
    assert isinstance(errors[1001], WorkerCrashedError)
    assert [v for i, v in enumerate(values) if i != 1001] == [i for i in range(20_000) if i != 1001]


# --- resumed inputs and the journal (checkpoints, see _resume) ---------------


def test_skipped_inputs_take_their_indexes_and_are_emitted_without_running() -> None:
    from collections import deque

    h = Harness(workers=1)
    job = h.job(ordered=True, chunksize=10)
    job.journal = deque()
    h.sched.skip(job, ["r0", "r1"], h.now)
    h.sched.feed(job, [2, 3], h.now)
    h.sched.skip(job, ["r4"], h.now)
    h.sched.feed(job, [5], h.now)
    h.sched.end_input(job)
    h.flush()
    assert h.chunks == {0: [2, 3]}  # the skipped inputs never reach a worker
    assert job.take() == (0, ["r0", "r1"], None)
    assert job.take() is None  # ordered: input 4 waits for 2 and 3
    h.finish_all(lambda x: x * 10)
    assert drain(job) == ([20, 30, "r4", 50], {})
    assert job.finished and job.resumed == 3 and job.completed == 6
    # Only what ran is journaled, as produced (before ordering held 4 back).
    assert list(job.journal) == [(2, [20, 30], None), (5, [50], None)]


def test_a_jobs_alarm_is_a_deadline_for_the_driver() -> None:
    h = Harness(workers=1)
    job = h.job(range(3), timeout=5)
    assert h.sched.next_deadline() == 5.0  # the running item's
    job.alarm = 2.5
    assert h.sched.next_deadline() == 2.5
    h.tick(2.5)  # nothing is due but the alarm: nothing happens
    assert not [c for c in h.flush() if isinstance(c, Kill)]
    job.alarm = None
    assert h.sched.next_deadline() == 5.0


# ------------------------------------------------------- late and stray events
def test_a_worker_that_cannot_be_started_breaks_the_pool_with_the_reason() -> None:
    h = Harness(workers=2)
    job = h.job(range(4))
    error = OSError("cannot fork: out of memory")
    h.sched.on_spawn_failed(0, error)
    kills = [cmd.wid for cmd in h.flush() if isinstance(cmd, Kill)]
    assert job.error is error and h.sched.broken is error
    assert kills == [1]  # the worker that did start goes too
    assert not h.sched.slots


def test_events_for_a_worker_already_gone_change_nothing() -> None:
    h = Harness(workers=1)
    job = h.job(["a", "b"])
    h.sched.on_ready(0)
    h.exit(0, -9, h.now)  # replaced: worker 0 is no longer a slot
    h.flush()
    before = (dict(h.sched.slots), job.error, list(job.pending))
    h.sched.on_spawn_failed(0, OSError("late"))
    h.exit(0, 1, h.now)
    h.sched.on_undecodable(0, ValueError("late"), h.now)
    assert h.flush() == []
    assert (dict(h.sched.slots), job.error, list(job.pending)) == before
    assert h.sched.broken is None


def test_chunks_shrink_at_the_tail_so_slow_last_items_are_shared() -> None:
    # Issue 19: 392 items of 0.1 ms, then 8 that each take 0.5 s. Chunks sized on
    # the tiny ones alone would give one worker all 8 (4 s) while the other
    # idles; near the end chunks hold at most a share of what is left.
    h = Harness(workers=2)
    job = h.job(range(400))
    busy: dict[int, float] = {0: 0.0, 1: 0.0}  # each worker's fake clock
    sizes: list[int] = []
    for _ in range(1000):
        if not h.chunks:
            break
        wid = min(h.chunks, key=lambda w: busy[w])  # the one that finishes first
        chunk = h.chunks[wid]
        sizes.append(len(chunk))
        costs = [0.5 if x >= 392 else 1e-4 for x in chunk]
        busy[wid] += sum(costs)
        h.now = busy[wid]
        h.report(wid, list(chunk), per_item=sum(costs) / len(chunk))
    values, errors = drain(job)
    assert values == list(range(400)) and not errors
    assert max(sizes) > 50  # the tiny items still went in big chunks
    assert abs(busy[0] - busy[1]) <= 0.5 + 1e-3  # 4 s of slow items: at most one apart
