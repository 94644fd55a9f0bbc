"""What ``parmap run`` reads and writes: input lines decoded into calls, outcomes as JSON lines.

The records go to a stream of their own (``records_output``), so that what the
mapped function prints never lands between them.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

from ._cli_args import UsageError
from ._results import Outcome, RemoteError

Item = tuple[tuple[Any, ...], dict[str, Any]]
"""One decoded input line: positional and keyword arguments."""

STDOUT_CLOSED = "standard output is closed: there is nowhere to write the results"


class Lines:
    """The input lines as items, read lazily so memory stays bounded.

    Lines are read as bytes and decoded one by one, so an undecodable line is
    reported with its own line number (a text stream decodes whole blocks).
    A line that cannot be read or decoded ends the input and is kept in
    ``error`` instead of being raised: the iterator is consumed by the map,
    which would report the exception as a failed item, not as a usage error.
    """

    def __init__(
        self, stream: IO[bytes] | IO[str], name: str, encoding: str, *, as_json: bool
    ) -> None:
        self._stream = stream
        self._name = name
        self._encoding = encoding
        self._as_json = as_json
        self.error: str | None = None

    def __iter__(self) -> Iterator[Item]:
        lineno = 0
        while True:
            lineno += 1
            try:
                raw = self._stream.readline()
                if not raw:
                    return
                # A text stream only when sys.stdin was replaced (e.g. by a test).
                text = raw if isinstance(raw, str) else raw.decode(self._encoding)
                item = _decode(_strip_newline(text), as_json=self._as_json)
            except json.JSONDecodeError as exc:
                self.error = (
                    f"{self._name}, line {lineno}: invalid JSON: {exc.msg} (column {exc.colno})"
                )
                return
            except UnicodeDecodeError as exc:
                self.error = (
                    f"{self._name}, line {lineno}: not valid {self._encoding}: {exc.reason}"
                )
                return
            except OSError as exc:
                self.error = f"{self._name}, line {lineno}: cannot read input: {exc}"
                return
            yield item


@contextlib.contextmanager
def input_lines(path: str, *, as_json: bool) -> Iterator[Lines]:
    """The lines of the file at ``path``, or of stdin for ``"-"``; the file is closed after."""
    with contextlib.ExitStack() as stack:
        if path == "-":
            stream: IO[bytes] | IO[str] = getattr(sys.stdin, "buffer", sys.stdin)
            name, encoding = "<stdin>", sys.stdin.encoding or "utf-8"
        else:
            try:
                stream = stack.enter_context(open(path, "rb"))
            except OSError as exc:
                raise UsageError(f"cannot open {path!r}: {exc.strerror or exc}") from None
            name, encoding = path, "utf-8"
        yield Lines(stream, name, encoding, as_json=as_json)


def _strip_newline(line: str) -> str:
    if line.endswith("\n"):
        line = line[:-1]
    if line.endswith("\r"):
        line = line[:-1]
    return line


def _decode(text: str, *, as_json: bool) -> Item:
    if not as_json:
        return (text,), {}
    value = json.loads(text)
    if isinstance(value, list):
        return tuple(value), {}
    if isinstance(value, dict):
        return (), value
    return (value,), {}


def _safe_str(obj: object, convert: Callable[[object], str] = repr) -> str:
    # str() or repr() of a user's object can itself raise; a result line must
    # still be written.
    try:
        return convert(obj)
    except Exception:
        return f"<unprintable {type(obj).__name__}>"


def _json_line(record: dict[str, Any]) -> str:
    try:
        return json.dumps(record, default=str, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        # NaN, circular references, keys JSON cannot encode: write the whole
        # value as text rather than an invalid or missing line.
        if "value" in record:
            record = {"index": record["index"], "value": _safe_str(record["value"])}
        return json.dumps(record)


def _describe_error(error: BaseException) -> dict[str, str]:
    if isinstance(error, RemoteError):
        return {"type": error.type_name, "message": error.message}
    return {"type": type(error).__name__, "message": _safe_str(error, str)}


def _outcome_line(out: Outcome[Any]) -> str:
    if out.error is None:
        return _json_line({"index": out.index, "value": out.value})
    return _json_line({"index": out.index, "error": _describe_error(out.error)})


def write_outcomes(
    outcomes: Iterable[Outcome[Any]], out_stream: IO[str], *, stop_at_failure: bool
) -> int:
    """Write one JSON line per outcome; return how many failed.

    With ``stop_at_failure``, stop after writing the first failure.
    """
    failed = 0
    for out in outcomes:
        try:
            out_stream.write(_outcome_line(out) + "\n")
            # Flush per line: whoever reads the pipe sees results as they come.
            out_stream.flush()
        except BrokenPipeError:
            raise
        except OSError as exc:  # a full disk, /dev/full
            raise UsageError(f"cannot write the results: {exc.strerror or exc}") from None
        if not out.ok:
            failed += 1
            if stop_at_failure:
                break
    return failed


def _redirect_to_stderr(fd: int) -> None:
    """Point descriptor ``fd`` at stderr, or at devnull when there is no usable stderr."""
    try:
        os.dup2(sys.stderr.fileno(), fd)
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        # No usable stderr either: what the function prints is dropped.
        _to_devnull(fd)


def _to_devnull(fd: int) -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


@contextlib.contextmanager
def records_output() -> Iterator[IO[str]]:
    """The stream for the JSON records, with file descriptor 1 pointed at stderr.

    The records get a duplicate of stdout's descriptor of their own, and
    descriptor 1 becomes stderr until the run ends: whatever the mapped
    function (or the module it lives in) prints, in the parent or in a worker
    under any start method, lands on stderr, never between the records.
    """
    stdout = sys.stdout
    if stdout is None:  # Python found descriptor 1 closed at start-up
        raise UsageError(STDOUT_CLOSED)
    try:
        fd = stdout.fileno()
        os.fstat(fd)
    except (OSError, ValueError, io.UnsupportedOperation):
        if stdout is sys.__stdout__:
            raise UsageError(STDOUT_CLOSED) from None
        yield stdout  # replaced by the caller (main() called in-process): write there
        return
    stdout.flush()
    records_fd = os.dup(fd)  # not inheritable: spawned workers never get it
    records = open(records_fd, "w", encoding="utf-8")  # noqa: SIM115
    _redirect_to_stderr(fd)
    try:
        yield records
        records.flush()
    except BrokenPipeError:
        # The reader went away: drop what is buffered rather than fail again
        # when the stream is closed.
        _to_devnull(records_fd)
        raise
    finally:
        with contextlib.suppress(OSError):
            stdout.flush()
        # Descriptor 1 is stdout again (main() may be called in-process).
        os.dup2(records_fd, fd)
        with contextlib.suppress(OSError):
            records.close()
