"""The checkpoint file: a SQLite journal of the finished inputs of one map.

Format (version 1)
------------------
An SQLite 3 database in WAL mode whose header carries ``application_id``
``0x706D6170`` ("pmap") and ``user_version`` 1, with two tables::

    meta(key TEXT PRIMARY KEY, value TEXT)
        'function'  qualified name of the mapped function, e.g. 'jobs.square'
        'parmap'    version of parmap that created the file
    outcome(idx INTEGER PRIMARY KEY,   -- the input's position in the map
            fingerprint BLOB,          -- blake2b (16 bytes) of the protocol-5
                                       -- pickle of the input's arguments
            ok INTEGER,                -- 1: a value; 0: an error
            value BLOB,                -- pickle of the value (ok = 1)
            error_type TEXT, error_message TEXT, error_traceback TEXT,
            error_pickle BLOB)         -- the exception, where it pickles

Loading a record unpickles it, which can run arbitrary code: open only files
you trust.

Locking
-------
The connection runs in ``locking_mode=EXCLUSIVE`` and takes the write lock
with ``BEGIN EXCLUSIVE`` (busy timeout 0) as it opens: SQLite then keeps the
lock until the connection closes, across every later commit. A second opener,
in this process or another, fails at once with ``SQLITE_BUSY`` instead of
waiting, and the operating system drops the lock when its holder dies, even
by ``kill -9``. This needs no side file and no platform-specific call; the
price is that other programs cannot read the file while a map holds it.

The file is only ever written after its header says it is ours (or it is
empty), so a wrong path gets an error and stays as it was.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Sequence

APPLICATION_ID = 0x706D6170  # "pmap"
FORMAT_VERSION = 1

_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE outcome ("
    " idx INTEGER PRIMARY KEY,"
    " fingerprint BLOB NOT NULL,"
    " ok INTEGER NOT NULL,"
    " value BLOB,"
    " error_type TEXT,"
    " error_message TEXT,"
    " error_traceback TEXT,"
    " error_pickle BLOB)",
)

Success = tuple[int, bytes, bytes]
"""The record of a success: index, fingerprint, pickled value."""
Failure = tuple[int, bytes, str, str, str, bytes | None]
"""The record of a failure: index, fingerprint, error type, message, traceback, pickle."""


class CheckpointError(RuntimeError):
    """A checkpoint file could not be used (the base of the more specific errors)."""


class CheckpointInUseError(CheckpointError):
    """Another map, in this process or another, holds the checkpoint file."""


class CheckpointFileError(CheckpointError, ValueError):
    """The file is not a parmap checkpoint, is damaged, or has another format version."""


class CheckpointFunctionError(CheckpointError, ValueError):
    """The checkpoint was written by a map of another function."""


class CheckpointFile:
    """An open checkpoint: the only writer of its file while it is open.

    ``open`` locks the file, checks (or creates) its schema and the function's
    name; nothing else may touch the file until ``close``. Every method
    raises a ``CheckpointError`` (naming the file) for an SQLite failure.
    """

    def __init__(self, path: str, conn: sqlite3.Connection) -> None:
        self.path = path
        self._conn = conn
        self.max_index = -1

    @classmethod
    def open(cls, path: str, function: str, parmap_version: str) -> CheckpointFile:
        """Open (or create) the checkpoint at ``path`` for a map of ``function``.

        Raises ``CheckpointInUseError`` at once when another map holds it,
        ``CheckpointFileError`` for a file that is not ours (left unchanged),
        and ``CheckpointFunctionError`` when it records another function.
        """
        try:
            # Autocommit mode: this module issues BEGIN/COMMIT itself.
            conn = sqlite3.connect(path, timeout=0, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise CheckpointFileError(f"cannot open checkpoint {path!r}: {exc}") from exc
        try:
            self = cls(path, conn)
            self._open(function, parmap_version)
        except BaseException:
            conn.close()
            raise
        return self

    def _open(self, function: str, parmap_version: str) -> None:
        conn, path = self._conn, self.path
        try:
            conn.execute("PRAGMA locking_mode=EXCLUSIVE")
            conn.execute("BEGIN EXCLUSIVE")
        except sqlite3.Error as exc:
            raise self._error(exc, "cannot lock") from exc
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if app_id == 0 and version == 0 and not tables:
                self._create(function, parmap_version)
            elif app_id != APPLICATION_ID:
                raise CheckpointFileError(
                    f"{path!r} is not a parmap checkpoint (an SQLite database of another "
                    "program); it was left unchanged: pass the path of a new file"
                )
            elif version != FORMAT_VERSION:
                raise CheckpointFileError(
                    f"checkpoint {path!r} has format version {version}; this parmap reads "
                    f"version {FORMAT_VERSION}: run it with the parmap that wrote it, or "
                    "delete it to start over"
                )
            else:
                self._check_function(function)
            conn.execute("COMMIT")
            # WAL: a commit appends to the log, and a process killed mid-write
            # leaves the last complete commit. NORMAL skips the fsync per
            # commit: a kill cannot lose a commit, a power cut only the last.
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise CheckpointFileError(f"cannot put checkpoint {path!r} in WAL mode ({mode})")
            conn.execute("PRAGMA synchronous=NORMAL")
            (self.max_index,) = conn.execute(
                "SELECT coalesce(max(idx), -1) FROM outcome"
            ).fetchone()
        except sqlite3.Error as exc:
            raise self._error(exc, "cannot read") from exc
        finally:
            _roll_back(conn)

    def _create(self, function: str, parmap_version: str) -> None:
        conn = self._conn
        for statement in _SCHEMA:
            conn.execute(statement)
        conn.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?)",
            [("function", function), ("parmap", parmap_version)],
        )
        conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version={FORMAT_VERSION}")

    def _check_function(self, function: str) -> None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = 'function'").fetchone()
        if row is None:
            raise CheckpointFileError(
                f"checkpoint {self.path!r} is damaged: it does not name its function"
            )
        if row[0] != function:
            raise CheckpointFunctionError(
                f"checkpoint {self.path!r} belongs to a map of {row[0]}, not of {function}: "
                "pass another file, or delete this one to start over"
            )

    def _error(self, exc: sqlite3.Error, doing: str) -> CheckpointError:
        code = getattr(exc, "sqlite_errorcode", None)
        if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            return CheckpointInUseError(
                f"checkpoint {self.path!r} is in use by another map (in this process or "
                "another); only one map at a time may use a checkpoint file"
            )
        if code in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT):
            return CheckpointFileError(
                f"{self.path!r} is not a parmap checkpoint or is damaged ({exc}); it was left "
                "unchanged: pass the path of a new file"
            )
        return CheckpointError(f"checkpoint {self.path!r}: {doing}: {exc}")

    def successes(self, start: int, stop: int) -> dict[int, tuple[bytes, bytes]]:
        """Recorded successes of inputs ``start .. stop-1``: index -> (fingerprint, value)."""
        if start > self.max_index:
            return {}
        try:
            rows = self._conn.execute(
                "SELECT idx, fingerprint, value FROM outcome WHERE ok = 1 AND idx >= ? AND idx < ?",
                (start, stop),
            ).fetchall()
        except sqlite3.Error as exc:
            raise self._error(exc, "cannot read") from exc
        return {idx: (fp, value) for idx, fp, value in rows}

    def save(self, successes: Sequence[Success], failures: Sequence[Failure] = ()) -> None:
        """Record outcomes (replacing those of the same index) in one transaction."""
        if not successes and not failures:
            return
        conn = self._conn
        try:
            conn.execute("BEGIN")
            # Only the columns a row uses: binding fewer parameters is most
            # of what a tiny item's record costs.
            conn.executemany(
                "INSERT OR REPLACE INTO outcome (idx, fingerprint, ok, value) VALUES (?, ?, 1, ?)",
                successes,
            )
            conn.executemany(
                "INSERT OR REPLACE INTO outcome (idx, fingerprint, ok, error_type, error_message,"
                " error_traceback, error_pickle) VALUES (?, ?, 0, ?, ?, ?, ?)",
                failures,
            )
            conn.execute("COMMIT")
        except BaseException as exc:
            # Also on KeyboardInterrupt between the statements: the rows stay
            # with the caller, who may save them again.
            _roll_back(conn)
            if isinstance(exc, sqlite3.Error):
                raise self._error(exc, "cannot write") from exc
            raise
        last = max(successes[-1][0] if successes else -1, failures[-1][0] if failures else -1)
        self.max_index = max(self.max_index, last)

    def close(self) -> None:
        """Release the file (SQLite folds its write-ahead log into it)."""
        try:
            self._conn.close()
        except sqlite3.Error as exc:
            raise self._error(exc, "cannot close") from exc


def _roll_back(conn: sqlite3.Connection) -> None:
    # Best effort: ``in_transaction`` itself raises on a closed connection.
    with contextlib.suppress(sqlite3.Error):
        if conn.in_transaction:
            conn.execute("ROLLBACK")


def describe_function(fn: object) -> str:
    """The qualified name a checkpoint records for ``fn``, e.g. ``'pkg.mod.f'``."""
    import functools

    if isinstance(fn, functools.partial):
        return f"functools.partial({describe_function(fn.func)})"
    module = getattr(fn, "__module__", None) or type(fn).__module__
    qualname = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{module}.{qualname}"
