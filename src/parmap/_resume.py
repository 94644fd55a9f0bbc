"""Resuming a map from its checkpoint: what is skipped, what is recorded, and when.

The drivers hand a map's input to ``Resume.feed`` instead of the scheduler.
Each input gets a fingerprint (blake2b of the protocol-5 pickle of its
arguments); an input whose index and fingerprint match a recorded success
is not run: the scheduler emits its stored value in its slot (``skip``).
Every other input runs, and the scheduler journals each outcome segment as it
is produced (``Job.journal``, before ordering holds any back).

``tick`` turns the journal into records and commits them at most
``COMMIT_SECONDS`` after the first of them arrived; the sync driver makes the
engine wake up in time through ``Job.alarm``, the async one waits with a
timeout. Streams (``imap``/``aimap``) also commit before handing outcomes to
their consumer, who may keep them for a long time. ``close`` commits the rest,
also when the map ends by an exception or Ctrl-C. So a map killed outright
loses the records of at most its last ``COMMIT_SECONDS`` (plus the time the
parent took to read the outcomes), and nothing else.
"""

from __future__ import annotations

import hashlib
import pickle
import time
import traceback
import warnings
from collections import deque
from typing import TYPE_CHECKING, Any

from ._checkpoint import CheckpointError, CheckpointFile, Failure, Success, describe_function
from ._results import _RemoteTraceback
from ._scheduler import Job, Segment

if TYPE_CHECKING:
    from ._engine import Engine

#: Records wait at most this long before their commit (the issue allows 1 s).
COMMIT_SECONDS = 0.5
PROTOCOL = 5

_UNRECORDABLE = b""
"""Fingerprint marker (falsy) of an input whose arguments do not pickle."""
_MISSING: Any = object()
"""What ``_stored`` returns for an input that must run."""


def fingerprint(args: object) -> bytes:
    """blake2b (16 bytes) of the protocol-5 pickle of an input's arguments.

    Raises whatever pickling raises for arguments that cannot be pickled.
    """
    return hashlib.blake2b(pickle.dumps(args, PROTOCOL), digest_size=16).digest()


def _stored(record: tuple[bytes, bytes] | None, fp: bytes) -> Any:
    """The recorded value if ``record`` is a success for arguments ``fp``, else ``_MISSING``."""
    if record is None or fp == _UNRECORDABLE or record[0] != fp:
        return _MISSING
    try:
        return pickle.loads(record[1])
    except Exception:
        return _MISSING  # e.g. its class is gone: run it again, replacing the record


def _traceback_text(error: BaseException) -> str:
    cause = error.__cause__
    if isinstance(cause, _RemoteTraceback):
        return cause.text
    text = getattr(error, "traceback", None)  # RemoteError
    if isinstance(text, str):
        return text
    return "".join(traceback.format_exception(error))


def _failure(index: int, fp: bytes, error: BaseException) -> Failure:
    type_name = getattr(error, "type_name", None)  # RemoteError names the original type
    if not isinstance(type_name, str):
        type_name = f"{type(error).__module__}.{type(error).__qualname__}"
    try:
        message = str(error)
    except Exception:
        message = f"<unprintable {type(error).__name__}>"
    try:
        data: bytes | None = pickle.dumps(error, PROTOCOL)
    except Exception:
        data = None
    return (index, fp, type_name, message, _traceback_text(error), data)


class Resume:
    """One map's use of its checkpoint file, from opening to closing it.

    ``eager`` (streams) commits before outcomes go to the consumer.
    ``defer_warning`` (a map whose commits run in another thread than its
    consumer) keeps the warning about unrecorded inputs in ``warning`` for the
    consumer to issue, instead of issuing it from the committing thread.
    """

    def __init__(self, path: str, fn: object, *, eager: bool, defer_warning: bool = False) -> None:
        self.path = path
        self.function = describe_function(fn)
        self.eager = eager
        self.defer_warning = defer_warning
        self.warning: str | None = None
        self._file: CheckpointFile | None = None
        self._job: Job | None = None
        # Fingerprints of inputs sent to run, until their outcome is recorded.
        self._fingerprints: dict[int, bytes] = {}
        # Appended to by whichever thread pumps the engine: drained with popleft.
        self._journal: deque[Segment] = deque()
        self._successes: list[Success] = []
        self._failures: list[Failure] = []
        self._due: float | None = None
        # When nothing was pending last: what arrived since is at most this old.
        self._empty_since = time.monotonic()
        self._unrecorded: tuple[int, str] | None = None  # first success not recorded
        self._warned = False

    def open(self) -> None:
        """Lock the file and check it; raises ``CheckpointError``s (see ``_checkpoint``)."""
        from . import __version__

        self._file = CheckpointFile.open(self.path, self.function, __version__)

    def attach(self, job: Job) -> None:
        """Journal ``job``'s outcomes."""
        self._job = job
        job.journal = self._journal

    # ---------------------------------------------------------------- input
    def feed(self, engine: Engine, job: Job, args: list[Any], now: float) -> None:
        """Give ``args`` (the next inputs of ``job``) to ``engine``, skipping resumed ones."""
        assert self._file is not None
        if job.closed or not args:
            return
        start, n = job.pulled, len(args)
        fps: list[bytes] = []
        blake2b, dumps = hashlib.blake2b, pickle.dumps  # as ``fingerprint``, inlined: per item
        for arg in args:
            try:
                fps.append(blake2b(dumps(arg, PROTOCOL), digest_size=16).digest())
            except Exception:
                fps.append(_UNRECORDABLE)
        recorded = self._file.successes(start, start + n)
        stored = [_stored(recorded.get(start + k), fps[k]) for k in range(n)] if recorded else None
        # Hand over maximal runs of inputs to run and of inputs to skip.
        i = 0
        while i < n and not job.closed:
            j = i + 1
            if stored is not None and stored[i] is not _MISSING:
                while j < n and stored[j] is not _MISSING:
                    j += 1
                engine.skip(job, stored[i:j], now)
            else:
                while j < n and (stored is None or stored[j] is _MISSING):
                    j += 1
                self._fingerprints.update(zip(range(start + i, start + j), fps[i:j], strict=True))
                engine.feed(job, args[i:j], now)
            i = j

    @property
    def resumed(self) -> int:
        """How many inputs came back from the checkpoint instead of running."""
        return 0 if self._job is None else self._job.resumed

    # --------------------------------------------------------------- output
    def tick(self, now: float) -> None:
        """Commit what is due; arrange to be called again when more will be."""
        if self._journal or self._successes or self._failures:
            if self._due is None:
                # Outcomes may have been journaled any time since the journal
                # was last seen empty (a sync pump that blocked, loop callbacks).
                self._due = self._empty_since + COMMIT_SECONDS
            if now >= self._due:
                self.commit()
        else:
            self._empty_since = now
        if self._job is not None:
            self._job.alarm = self._due

    def wait_timeout(self, now: float) -> float:
        """How long an async driver may wait before calling ``tick`` again."""
        if self._due is None:
            # Loop callbacks may journal outcomes without waking the driver.
            return COMMIT_SECONDS
        return max(0.0, self._due - now)

    def before_yield(self) -> None:
        """Outcomes go to the consumer: for a stream, commit what is journaled."""
        if self.eager and (self._journal or self._successes or self._failures):
            self.commit()

    def commit(self) -> None:
        """Turn the journal into records and commit them in one transaction."""
        if self._file is None:
            return
        self._take_journal()
        self._file.save(self._successes, self._failures)
        self._successes.clear()
        self._failures.clear()
        self._due = None
        self._empty_since = time.monotonic()
        if self._job is not None:
            self._job.alarm = None
        if self._unrecorded is not None and not self._warned:
            self._warned = True
            index, reason = self._unrecorded
            message = (
                f"checkpoint {self.path!r}: input {index} succeeded but is not recorded: "
                f"{reason}. Such inputs run again when the map is resumed (warned once per map)"
            )
            if self.defer_warning:
                self.warning = message
            else:
                warnings.warn(message, RuntimeWarning, stacklevel=2)

    def _take_journal(self) -> None:
        successes, failures = self._successes, self._failures
        pop = self._fingerprints.pop
        dumps = pickle.dumps
        journal = self._journal
        while journal:
            start, values, errors = journal.popleft()
            for index, value in enumerate(values, start):
                fp = pop(index, None)
                if fp is None:
                    continue  # resumed: recorded already
                error = errors.get(index) if errors else None
                if error is not None:
                    if fp:  # failures run again anyway: no need to warn
                        failures.append(_failure(index, fp, error))
                elif not fp:
                    self._not_recorded(index, "its arguments cannot be pickled")
                else:
                    try:
                        successes.append((index, fp, dumps(value, PROTOCOL)))
                    except Exception as exc:
                        self._not_recorded(
                            index, f"its value cannot be pickled ({type(exc).__name__}: {exc})"
                        )

    def _not_recorded(self, index: int, reason: str) -> None:
        if self._unrecorded is None:
            self._unrecorded = (index, reason)

    def close(self, *, completed: bool) -> None:
        """Commit the rest and release the file.

        After a map that failed, a failure to commit is not raised over the
        map's own exception: the inputs concerned just run again on resume.
        """
        file = self._file
        if file is None:
            return
        if self._job is not None:
            self._job.journal = None
            self._job.alarm = None
        try:
            self.commit()
        except CheckpointError:
            if completed:
                raise
        finally:
            self._file = None
            file.close()
