"""Property-based tests of the scheduler core against a faithful model of workers.

Hypothesis draws a pool (size, ``max_tasks_per_worker``, how often a beacon
read is torn, how often it cannot date the running item, how many workers get
killed from outside) and one or two maps
(inputs whose runs return, raise, hang or crash, unpicklable arguments, an
input that raises, chunk size, buffer, retries, timeouts, ``raise`` or
``collect``, ordered or not, an early cancel). A seeded random walk then plays
the world around the scheduler, the way the drivers and real workers would:

* model workers receive the chunks of ``Send`` (encoded and reported as the
  engine does, see ``checks.execute``; ``encode`` refuses unpicklable
  inputs), run their chunk's items in order, keep a beacon (which may date a
  running item only later, or never, as a real one may), report
  outcomes in batches (at once after a failure, otherwise whenever they like),
  die mid-item (crash fates, outside kills) or hang until killed;
* time is fake and only moves forward; ``on_time`` runs when a deadline
  passes, as ``Engine.pump`` does;
* a consumer takes segments when it likes, and the input is pulled lazily
  through ``want``/``feed``/``end_input``/``input_failed``.

After every step the model checks the scheduler's invariants, and at the end
of each map the outcome of every input against what really happened to it.
"""

from __future__ import annotations

import math
import os
import pickle
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from parmap import TaskTimeoutError, WorkerCrashedError
from parmap._events import ChunkMessage, Command, Exited, Kill, Retire, Send, Spawn, Tick
from parmap._options import MapConfig
from parmap._scheduler import MAX_STARTUP_FAILURES, Job, Scheduler

from .checks import execute

#: Raise for a longer hunt, e.g. PARMAP_PROPERTY_EXAMPLES=20000.
EXAMPLES = int(os.environ.get("PARMAP_PROPERTY_EXAMPLES", "300"))
MAX_STEPS = 20_000
FATE_KINDS = ("ok", "raise_value", "raise_key", "hang", "crash_exit", "crash_kill")
EXIT_CODES = {"crash_exit": 3, "crash_kill": -9}


class InputError(Exception):
    """Raised by the model's input iterator."""


class ModelError(AssertionError):
    """The scheduler broke one of its promises."""


# ------------------------------------------------------------------- specs
@dataclass(frozen=True)
class JobSpec:
    fates: tuple[tuple[str, ...], ...]  # per input: the fate of run 0, 1, ... (last repeats)
    unpicklable: frozenset[int]
    raise_at: int | None  # the input iterator raises instead of yielding this position
    total_known: bool
    ordered: bool
    config: MapConfig
    cancel_at: int | None  # step at which the consumer gives up

    @property
    def n(self) -> int:
        return len(self.fates)


@dataclass(frozen=True)
class Spec:
    workers: int
    max_tasks: int | None
    torn_rate: float
    outside_kills: int
    startup_deaths: int
    close_at: int | None
    jobs: tuple[JobSpec, ...]
    seed: int
    #: Let time jump to a deadline only while every running item hangs, so
    #: that items which return never outlive a timeout.
    patient: bool = False
    #: How often the beacon cannot give a running item's start: it says
    #: "started by <infinity>" until a later stamp dates it (the real worker's
    #: watch thread), or for good (an item that holds the GIL).
    undated_rate: float = 0.0


@st.composite
def job_specs(draw: st.DrawFn) -> JobSpec:
    timeout = draw(st.sampled_from([None, None, 0.02, 0.05, 0.2]))
    kinds = [k for k in FATE_KINDS if timeout is not None or k != "hang"]
    fate = st.sampled_from(["ok"] * 8 + kinds)
    fates = draw(
        st.lists(st.lists(fate, min_size=1, max_size=3).map(tuple), max_size=24).map(tuple)
    )
    n = len(fates)
    unpicklable: frozenset[int] = frozenset()
    if n and draw(st.integers(0, 4)) == 0:
        unpicklable = draw(st.frozensets(st.integers(0, n - 1), min_size=1, max_size=2))
    raise_at = draw(st.integers(0, n)) if draw(st.integers(0, 9)) == 0 else None
    retry_on = draw(
        st.sampled_from(
            [(Exception,), (ValueError,), (Exception, TaskTimeoutError, WorkerCrashedError)]
        )
    )
    config = MapConfig(
        timeout=timeout,
        on_error=draw(st.sampled_from(["collect", "collect", "raise"])),
        retries=draw(st.integers(0, 2)),
        retry_on=retry_on,
        chunksize=draw(st.one_of(st.none(), st.integers(1, 5))),
        buffer=draw(st.one_of(st.none(), st.integers(1, 12))),
    )
    return JobSpec(
        fates=fates,
        unpicklable=unpicklable,
        raise_at=raise_at,
        total_known=draw(st.booleans()),
        ordered=draw(st.booleans()),
        config=config,
        cancel_at=draw(st.one_of(st.none(), st.none(), st.none(), st.integers(0, 300))),
    )


specs = st.builds(
    Spec,
    workers=st.integers(1, 3),
    max_tasks=st.one_of(st.none(), st.none(), st.integers(1, 4)),
    torn_rate=st.sampled_from([0.0, 0.0, 0.25]),
    undated_rate=st.sampled_from([0.0, 0.5, 1.0]),
    outside_kills=st.integers(0, 3),
    startup_deaths=st.integers(0, 2),
    close_at=st.one_of(st.none(), st.none(), st.none(), st.integers(0, 300)),
    jobs=st.lists(job_specs(), min_size=1, max_size=2).map(tuple),
    seed=st.integers(0, 2**32 - 1),
)


# ------------------------------------------------------------------- model
@dataclass
class ModelWorker:
    """One worker process as the scheduler would see it."""

    wid: int
    ready: bool = False
    functions: set[int] = field(default_factory=set)
    chunk: tuple[int, list[int]] | None = None  # (job id, inputs)
    pos: int = 0  # next item of the chunk to start
    reported: int = 0  # items of the chunk reported
    unreported: list[tuple[int, tuple[Any, ...]]] = field(default_factory=list)
    running: int | None = None
    running_fate: str = "ok"
    running_start: float = 0.0
    started: int = 0  # beacon: items started since birth
    dated: float | None = None  # beacon: a time by which the running item had started
    assigned: int = 0  # items ever sent to it (max_tasks_per_worker)
    busy: float = 0.0
    last_read: tuple[bool, int | None] | None = None  # (torn, running item)
    progress_at: float = 0.0  # when its chunk was sent or its last outcomes reported


@dataclass
class Death:
    code: int
    startup: bool
    read: tuple[bool, int | None] | None  # the beacon read the scheduler made to blame


@dataclass
class JobState:
    spec: JobSpec
    job: Job
    pulled: int = 0
    emitted: dict[int, tuple[Any, BaseException | None]] = field(default_factory=dict)
    runs: Counter[int] = field(default_factory=Counter)
    failed_runs: Counter[int] = field(default_factory=Counter)  # raised or timed out
    last_fate: dict[int, tuple[Any, ...]] = field(default_factory=dict)
    next_ordered: int = 0
    input_error: InputError | None = None
    cancelled: bool = False
    removed: bool = False


class Sim:
    """The world around one scheduler: workers, time, input and consumer."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.rng = random.Random(spec.seed)
        self.now = 0.0
        self.sched = Scheduler(spec.workers, max_tasks_per_worker=spec.max_tasks)
        self.workers: dict[int, ModelWorker] = {}
        self.dead: dict[int, ModelWorker] = {}  # died; the scheduler's Kill is still due
        self.ever_spawned: set[int] = set()
        self.deaths: dict[int, Death] = {}
        self.states: dict[int, JobState] = {}
        self.context = "start"
        self.abort_kills: list[int] = []
        self.outside_kills = spec.outside_kills
        self.startup_deaths = spec.startup_deaths
        self.consecutive_startup_deaths = 0
        self.closed = False
        self.step = 0

    # ------------------------------------------------- what the engine calls
    def encode(self, message: ChunkMessage) -> object:
        jid, args = message.job_id, message.args
        for arg in args:
            if arg in self.states[jid].spec.unpicklable:
                raise TypeError(f"cannot pickle input {arg}")
        return message

    def beacon(self, wid: int) -> tuple[int, float | None] | None:
        worker = self.workers.get(wid) or self.dead.get(wid)
        if worker is None:
            raise ModelError(f"beacon of worker {wid} read after the scheduler let it go")
        torn = self.rng.random() < self.spec.torn_rate
        worker.last_read = (torn, worker.running)
        if torn:
            return None
        if worker.running is None:
            return (worker.started, None)
        return (worker.started, math.inf if worker.dated is None else worker.dated)

    # ------------------------------------------------------------- commands
    def execute(self) -> None:
        execute(self.sched, self.carry_out, encode=self.encode)

    def carry_out(self, cmd: Command) -> None:
        if isinstance(cmd, Spawn):
            self.on_spawn(cmd.wid)
        elif isinstance(cmd, Send):
            self.on_send(cmd.wid, cmd.message)
        elif isinstance(cmd, Kill):
            self.on_kill(cmd.wid)
        elif isinstance(cmd, Retire):
            self.on_retire(cmd.wid)

    def on_spawn(self, wid: int) -> None:
        check(not self.sched.closing, "a worker was spawned after close()")
        check(wid not in self.ever_spawned, f"worker id {wid} reused")
        self.ever_spawned.add(wid)
        self.workers[wid] = ModelWorker(wid)

    def on_send(self, wid: int, payload: ChunkMessage) -> None:
        worker = self.workers.get(wid)
        check(worker is not None, f"chunk sent to worker {wid}, which is not alive")
        assert worker is not None
        check(worker.chunk is None, f"worker {wid} was sent a chunk while it still had one")
        jid, fn, star, args = payload.job_id, payload.fn, payload.star, payload.args
        state = self.states[jid]
        check(bool(args), "empty chunk")
        check(star is False, "star flag changed")
        if fn is None:
            check(jid in worker.functions, f"worker {wid} never received the function of job {jid}")
        else:
            worker.functions.add(jid)
        covered = set(state.emitted)
        for start, values, _ in state.job.ready:
            covered.update(range(start, start + len(values)))
        for index in args:
            check(index not in covered, f"input {index} sent again after its outcome was emitted")
            check(index not in state.spec.unpicklable, f"unpicklable input {index} was sent")
        check(list(args) == list(range(args[0], args[0] + len(args))), "chunk not contiguous")
        worker.chunk = (jid, list(args))
        worker.progress_at = self.now
        worker.pos = worker.reported = 0
        worker.assigned += len(args)
        if self.spec.max_tasks is not None:
            check(worker.assigned <= self.spec.max_tasks, "max_tasks_per_worker exceeded")

    def on_kill(self, wid: int) -> None:
        if wid in self.dead:
            del self.dead[wid]
            return
        worker = self.workers.pop(wid, None)
        check(worker is not None, f"Kill of unknown worker {wid}")
        assert worker is not None
        if worker.chunk is None:
            check(
                self.context == "close" or self.sched.broken is not None,
                f"idle worker {wid} killed during {self.context}",
            )
            return
        jid, args = worker.chunk
        state = self.states[jid]
        for index in args[worker.reported :]:
            state.last_fate[index] = ("lost",)
        running = worker.running
        timeout = state.spec.config.timeout
        if (
            self.context == "on_time"
            and running is None
            and timeout is not None
            and worker.progress_at + timeout <= self.now
        ):
            # Stuck outside any item for a whole timeout (unpickling its
            # chunk, pickling outcomes): one suspect fails, several run again.
            suspects = len(worker.unreported) or len(args) - worker.reported
            if suspects == 1:
                culprit = args[worker.reported]
                state.last_fate[culprit] = ("timeout", self.now - worker.progress_at)
                state.failed_runs[culprit] += 1
            return
        if (
            self.context == "on_time"
            and running is not None
            and timeout is not None
            and worker.running_start + timeout <= self.now
        ):
            state.last_fate[running] = ("timeout", self.now - worker.running_start)
            state.failed_runs[running] += 1
        else:
            self.abort_kills.append(jid)

    def on_retire(self, wid: int) -> None:
        worker = self.workers.pop(wid, None)
        check(worker is not None, f"Retire of unknown worker {wid}")
        assert worker is not None
        check(worker.chunk is None and not worker.unreported, f"busy worker {wid} retired")
        if self.context != "close":
            check(
                self.spec.max_tasks is not None and worker.assigned >= self.spec.max_tasks,
                f"worker {wid} retired during {self.context} for no reason",
            )

    # --------------------------------------------------------------- events
    def enabled(self) -> list[tuple[float, tuple[Any, ...]]]:
        events: list[tuple[float, tuple[Any, ...]]] = []
        for wid, w in self.workers.items():
            if not w.ready:
                events.append((3, ("ready", wid)))
                # Never so many in a row that the pool is declared broken.
                room = self.consecutive_startup_deaths < MAX_STARTUP_FAILURES - 1
                if self.startup_deaths and room:
                    events.append((0.3, ("startup_death", wid)))
                continue
            if w.chunk is not None and w.running is None and w.pos < len(w.chunk[1]):
                events.append((4, ("start", wid)))
            if w.running is not None and w.running_fate != "hang":
                events.append((4, ("finish", wid)))
            if w.running is not None and w.dated is None:
                events.append((1, ("stamp", wid)))
            if w.unreported:
                events.append((2, ("flush", wid)))
            if self.outside_kills:
                events.append((0.1, ("outside_kill", wid)))
        # Stuck: no worker will do anything more on its own (a worker with an
        # item to start or outcomes to send is not, whatever it runs).
        stuck = all(
            (w.running is None or w.running_fate == "hang")
            and not w.unreported
            and not (w.running is None and w.chunk is not None and w.pos < len(w.chunk[1]))
            for w in self.workers.values()
        )
        if self.sched.next_deadline() is not None and (stuck or not self.spec.patient):
            events.append((0.5, ("tick",)))
        for jid, state in self.states.items():
            if state.removed:
                continue
            if state.job.ready:
                events.append((2, ("take", jid)))
            if state.spec.cancel_at is not None and self.step >= state.spec.cancel_at:
                events.append((1, ("cancel", jid)))
        if self.spec.close_at is not None and self.step >= self.spec.close_at:
            events.append((0.5, ("close",)))
        return events

    def run(self) -> None:
        for spec in self.spec.jobs:
            self.context = "new_job"
            job = self.sched.new_job(
                spec.config,
                fn_payload=b"fn",
                star=False,
                ordered=spec.ordered,
                total=spec.n if spec.total_known else None,
                fn_key="fn",
            )
            self.states[job.id] = JobState(spec, job)
            self.after_event()
        while not all(s.removed for s in self.states.values()):
            self.step += 1
            check(self.step < MAX_STEPS, "the map never finished (livelock)")
            events = self.enabled()
            check(bool(events), f"stalled: nothing can happen, maps unfinished\n{self.dump()}")
            weights = [w for w, _ in events]
            event = self.rng.choices([e for _, e in events], weights)[0]
            self.now += self.rng.uniform(0.0, 0.003)
            getattr(self, "ev_" + event[0])(*event[1:])
            if self.closed:
                return
            self.after_event()
        self.context = "close"
        self.sched.close()
        self.execute()
        self.closed = True
        check(not self.workers and not self.sched.slots, "workers left after close()")

    def after_event(self) -> None:
        self.execute()
        deadline = self.sched.next_deadline()
        if deadline is not None and self.now >= deadline:
            self.context = "on_time"
            wanted = self.sched.beacons_wanted(self.now)
            self.sched.handle(Tick(self.now, {wid: self.beacon(wid) for wid in wanted}))
            self.execute()
        for state in self.states.values():
            self.feed(state)
        self.execute()
        self.finish_jobs()
        self.check_invariants()

    def ev_ready(self, wid: int) -> None:
        self.workers[wid].ready = True
        self.consecutive_startup_deaths = 0
        self.context = "on_ready"
        self.sched.on_ready(wid)

    def ev_startup_death(self, wid: int) -> None:
        self.startup_deaths -= 1
        self.consecutive_startup_deaths += 1
        self.die(wid, 1, startup=True)

    def ev_start(self, wid: int) -> None:
        w = self.workers[wid]
        assert w.chunk is not None
        jid, args = w.chunk
        index = args[w.pos]
        w.pos += 1
        w.started += 1
        w.running = index
        w.running_start = self.now
        w.dated = self.now if self.rng.random() >= self.spec.undated_rate else None
        state = self.states[jid]
        fates = state.spec.fates[index]
        w.running_fate = fates[min(state.runs[index], len(fates) - 1)]
        state.runs[index] += 1

    def ev_finish(self, wid: int) -> None:
        w = self.workers[wid]
        assert w.chunk is not None and w.running is not None
        jid = w.chunk[0]
        index, fate = w.running, w.running_fate
        if fate in EXIT_CODES:
            self.die(wid, EXIT_CODES[fate])
            return
        w.busy += self.now - w.running_start
        w.running = None
        if fate == "ok":
            w.unreported.append((index, ("value", ("value", jid, index))))
            return
        error_type = ValueError if fate == "raise_value" else KeyError
        error = error_type(f"job {jid} input {index} failed")
        w.unreported.append((index, ("error", error)))
        self.states[jid].failed_runs[index] += 1
        self.flush(w)  # a real worker sends a failure at once

    def ev_stamp(self, wid: int) -> None:
        self.workers[wid].dated = self.now

    def ev_flush(self, wid: int) -> None:
        self.flush(self.workers[wid])

    def ev_outside_kill(self, wid: int) -> None:
        self.outside_kills -= 1
        self.die(wid, -9)

    def ev_tick(self) -> None:
        deadline = self.sched.next_deadline()
        assert deadline is not None
        self.now = max(self.now, deadline) + self.rng.uniform(0.0, 0.002)

    def ev_take(self, jid: int) -> None:
        state = self.states[jid]
        while (segment := state.job.take()) is not None:
            start, values, errors = segment
            check(bool(values), "empty segment")
            if state.spec.ordered:
                expected = state.next_ordered
                check(start == expected, f"ordered job emitted {start} before {expected}")
                state.next_ordered += len(values)
            for index, value in enumerate(values, start):
                check(index not in state.emitted, f"input {index} emitted twice")
                error = (errors or {}).get(index)
                if error is not None:
                    check(value is None, f"failed input {index} has a value")
                state.emitted[index] = (value, error)
            if errors:
                outside = set(errors) - set(range(start, start + len(values)))
                check(not outside, f"segment errors outside the segment: {outside}")

    def ev_cancel(self, jid: int) -> None:
        state = self.states[jid]
        self.ev_take(jid)
        self.context = "cancel"
        self.sched.cancel(state.job)
        state.cancelled = state.removed = True
        self.execute()
        check(state.job.running == 0, "running items left after cancel")
        check(not state.job.pending, "pending inputs left after cancel")
        check(state.job not in self.sched.jobs, "cancelled job still scheduled")

    def ev_close(self) -> None:
        self.context = "close"
        self.sched.close()
        self.execute()
        self.closed = True
        check(not self.workers and not self.sched.slots, "workers left after close()")
        for state in self.states.values():
            if not state.removed:
                check(state.job.closed, "a map survived close()")
                check(not state.job.pending and state.job.running == 0, "work left after close()")

    # -------------------------------------------------------------- helpers
    def die(self, wid: int, code: int, *, startup: bool = False) -> None:
        w = self.workers.pop(wid)
        if w.chunk is not None:
            jid, args = w.chunk
            state = self.states[jid]
            for index in args[w.reported :]:
                state.last_fate[index] = ("died", code, wid, index == w.running)
        self.dead[wid] = w
        w.last_read = None
        self.context = "on_exit"
        self.sched.handle(Exited(wid, code, self.now, self.beacon(wid)))
        self.deaths[wid] = Death(code, startup, w.last_read)

    def flush(self, w: ModelWorker) -> None:
        assert w.chunk is not None and w.unreported
        jid, args = w.chunk
        state = self.states[jid]
        values: list[Any] = []
        errors: dict[int, BaseException] = {}
        for pos, (index, outcome) in enumerate(w.unreported):
            state.last_fate[index] = outcome
            if outcome[0] == "value":
                values.append(outcome[1])
            else:
                values.append(None)
                errors[pos] = outcome[1]
        w.reported += len(w.unreported)
        w.progress_at = self.now
        w.unreported = []
        if w.reported == len(args):
            w.chunk = None
        busy, w.busy = w.busy, 0.0
        self.context = "on_batch"
        self.sched.on_batch(w.wid, values, errors or None, busy, self.now)

    def feed(self, state: JobState) -> None:
        job = state.job
        if state.removed or job.closed or job.exhausted:
            return
        want = self.sched.want(job)
        if want <= 0:
            return
        spec = state.spec
        self.context = "feed"
        if spec.raise_at is not None and state.pulled + want > spec.raise_at:
            state.input_error = InputError(f"input broke at position {spec.raise_at}")
            self.sched.input_failed(job, state.input_error)
            return
        args = list(range(state.pulled, min(spec.n, state.pulled + want)))
        state.pulled += len(args)
        if len(args) < want:
            self.sched.end_input(job)
        self.sched.feed(job, args, self.now)

    def finish_jobs(self) -> None:
        for state in self.states.values():
            job = state.job
            if state.removed or not job.finished:
                continue
            self.ev_take(job.id)
            if job.ready:
                continue
            self.context = "finish"
            if job.error is None:
                self.sched.remove(job)
            else:
                self.sched.cancel(job)  # what the driver does when it raises
            state.removed = True
            self.execute()
            self.check_finished(state)

    def check_invariants(self) -> None:
        check(set(self.sched.slots) == set(self.workers), "the scheduler's workers are not alive")
        # A worker that goes is replaced as soon as there is work for it (a
        # pool with nothing pending, or a map being torn down, starts none).
        has_work = any(job.pending and not job.closed for job in self.sched.jobs)
        if not self.sched.closing and self.sched.broken is None and has_work:
            check(
                len(self.workers) == self.spec.workers,
                f"{len(self.workers)} workers alive, pool size {self.spec.workers}: not replaced",
            )
        check(self.sched.broken is None, f"pool broke: {self.sched.broken!r}")
        for jid in self.abort_kills:
            check(self.states[jid].job.closed, "a busy worker was killed but its map goes on")
        self.abort_kills.clear()
        for jid, state in self.states.items():
            job = state.job
            running = sum(
                len(w.chunk[1]) - w.reported
                for w in self.workers.values()
                if w.chunk is not None and w.chunk[0] == jid
            )
            if not state.removed:
                check(job.running == running, f"job.running {job.running}, workers hold {running}")
            if job.closed:
                check(running == 0, "a worker still runs a chunk of a stopped map")
            buffer = state.spec.config.buffer
            if buffer is not None:
                check(job.pulled - job.consumed <= buffer, "input pulled beyond the buffer")

    def check_finished(self, state: JobState) -> None:
        spec, job = state.spec, state.job
        check(not job.pending, f"inputs still pending in a finished map: {list(job.pending)}")
        check(job.running == 0, "items still running in a finished map")
        for index, count in state.failed_runs.items():
            check(
                count <= spec.config.retries + 1,
                f"input {index} failed {count} times with retries={spec.config.retries}",
            )
        for index, (value, error) in state.emitted.items():
            self.check_outcome(state, index, value, error)
        event(f"map ended: {type(job.error).__name__ if job.error else 'complete'}")
        if state.input_error is not None:
            check(job.error is state.input_error, f"input error not raised: {job.error!r}")
            return
        if job.error is not None:
            check(spec.config.on_error == "raise", f"collect-mode map stopped by {job.error!r}")
            check(
                all(error is None for _, error in state.emitted.values()),
                "raise mode emitted an error instead of raising it",
            )
            blamed = job.error.__notes__[-1].rsplit(" ", 1)[-1]
            self.check_outcome(state, int(blamed), None, job.error)
            return
        check(
            set(state.emitted) == set(range(spec.n)),
            f"inputs without an outcome: {sorted(set(range(spec.n)) - set(state.emitted))}",
        )
        check(job.completed == spec.n, "completed count is wrong")
        failures = sum(error is not None for _, error in state.emitted.values())
        check(job.failures == failures, "failure count is wrong")

    def check_outcome(
        self, state: JobState, index: int, value: Any, error: BaseException | None
    ) -> None:
        """The outcome of ``index`` must be what its last run really ended with."""
        fate = state.last_fate.get(index)
        event(f"outcome: {type(error).__name__ if error is not None else 'value'}")
        where = f"input {index}: outcome {value!r}/{error!r}, last fate {fate}"
        if error is None:
            check(fate == ("value", value), where)
            return
        check(f"parmap: raised for input index {index}" in getattr(error, "__notes__", ()), where)
        if index in state.spec.unpicklable:
            check(isinstance(error, pickle.PicklingError) and f"input {index}" in str(error), where)
            check(state.runs[index] == 0 and fate is None, where)
        elif isinstance(error, TaskTimeoutError):
            check(fate is not None and fate[0] == "timeout" and error.index == index, where)
            assert fate is not None and state.spec.config.timeout is not None
            check(fate[1] >= state.spec.config.timeout, f"{where}: killed before its time")
        elif isinstance(error, WorkerCrashedError):
            check(fate is not None and fate[0] == "died" and error.index == index, where)
            assert fate is not None
            _, code, wid, was_running = fate
            check(error.exitcode == code, where)
            death = self.deaths[wid]
            check(not death.startup, f"{where}: blamed for a worker that died starting")
            if death.read is not None and not death.read[0] and death.read[1] is not None:
                check(was_running, f"{where}: the beacon named input {death.read[1]}")
        else:
            check(fate == ("error", error), where)

    def dump(self) -> str:
        lines = [f"now={self.now:.4f} slots={self.sched.slots}"]
        for state in self.states.values():
            job = state.job
            lines.append(
                f"job {job.id}: pending={list(job.pending)} running={job.running} "
                f"pulled={job.pulled} consumed={job.consumed} exhausted={job.exhausted}"
            )
        lines.extend(repr(w) for w in self.workers.values())
        return "\n".join(lines)


def check(condition: bool, message: str) -> None:
    if not condition:
        raise ModelError(message)


# ------------------------------------------------------------------- tests
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(specs)
def test_scheduler_keeps_its_promises_under_random_events(spec: Spec) -> None:
    Sim(spec).run()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    fates=st.lists(
        st.sampled_from(["ok", "raise_value", "hang", "crash_kill"]), min_size=1, max_size=30
    ),
    workers=st.integers(1, 4),
    chunksize=st.one_of(st.none(), st.integers(1, 8)),
    ordered=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_every_input_gets_exactly_one_outcome_in_collect_mode(
    fates: list[str], workers: int, chunksize: int | None, ordered: bool, seed: int
) -> None:
    """The plain collect-mode case, with one fate per input (no retries, nothing else)."""
    job = JobSpec(
        fates=tuple((f,) for f in fates),
        unpicklable=frozenset(),
        raise_at=None,
        total_known=True,
        ordered=ordered,
        config=MapConfig(timeout=1.0, on_error="collect", chunksize=chunksize),
        cancel_at=None,
    )
    sim = Sim(Spec(workers, None, 0.0, 0, 0, None, (job,), seed, patient=True))
    sim.run()
    (state,) = sim.states.values()
    assert sorted(state.emitted) == list(range(len(fates)))
    for index, fate in enumerate(fates):
        value, error = state.emitted[index]
        if fate == "ok":
            # The value its model worker returned for this input, at this index.
            assert error is None and value == ("value", state.job.id, index), (index, value)
            continue
        expected = {
            "raise_value": ValueError,
            "hang": TaskTimeoutError,
            "crash_kill": WorkerCrashedError,
        }[fate]
        assert value is None and isinstance(error, expected), (index, fate, value, error)
        if fate == "raise_value":
            assert str(error) == f"job {state.job.id} input {index} failed"
        else:
            assert isinstance(error, TaskTimeoutError | WorkerCrashedError)
            assert error.index == index, (index, error)


# ------------------------------------------- regressions the model turned up
def _two_maps_one_worker() -> tuple[Scheduler, Job, Job]:
    sched = Scheduler(1)
    first = sched.new_job(MapConfig(), fn_payload=b"a", star=False, ordered=False)
    second = sched.new_job(MapConfig(), fn_payload=b"b", star=False, ordered=False)
    for job, value in ((first, 1), (second, 2)):
        sched.feed(job, [value], 0.0)
        sched.end_input(job)
    sched.on_ready(0)
    sends = [c for c in execute(sched) if isinstance(c, Send)]
    assert [c.message.job_id for c in sends] == [first.id]
    return sched, first, second


def _served(sched: Scheduler, job: Job) -> bool:
    def run(cmd: Command) -> None:
        if isinstance(cmd, Spawn):
            sched.on_ready(cmd.wid)

    commands = execute(sched, run)
    return any(isinstance(c, Send) and c.message.job_id == job.id for c in commands)


def test_cancelling_a_map_does_not_strand_a_map_waiting_for_its_worker() -> None:
    """One consumer leaves early while another map waits: the replacement must serve it."""
    sched, first, second = _two_maps_one_worker()
    sched.cancel(first)
    assert _served(sched, second), "the waiting map is never sent to the replacement worker"


def test_an_input_error_does_not_strand_a_map_waiting_for_its_worker() -> None:
    sched, first, second = _two_maps_one_worker()
    sched.input_failed(first, InputError("gone"))
    assert _served(sched, second), "the waiting map is never sent to the replacement worker"


def test_unpicklable_input_that_stops_a_raise_mode_map_leaves_nothing_pending() -> None:
    def encode(message: ChunkMessage) -> object:
        if 1 in message.args:
            raise TypeError("cannot pickle 1")
        return message

    sched = Scheduler(1)
    job = sched.new_job(MapConfig(chunksize=3), fn_payload=b"f", star=False, ordered=False)
    sched.feed(job, [0, 1, 2], 0.0)
    execute(sched, encode=encode)
    assert job.closed and isinstance(job.error, pickle.PicklingError)
    assert not job.pending, f"a stopped map still holds inputs: {list(job.pending)}"
