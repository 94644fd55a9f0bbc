"""The ``parmap`` command line.

``parmap run MODULE:FUNCTION [FILE|-]`` maps a function over the lines of a
file or of stdin and writes one JSON line per input; ``parmap demo`` runs the
classic scenario. Exit codes: 0 when every item succeeded, 1 when some item
failed, 2 for a usage error (reported as one ``parmap: error:`` line, never a
traceback), 130 when interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import io
import json
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import IO, Any, NoReturn, get_args

from . import MapStats, Outcome, RemoteError, __version__, imap, pmap
from ._checkpoint import CheckpointError
from ._memory import parse_size
from ._options import Defaults, OnError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

Item = tuple[tuple[Any, ...], dict[str, Any]]
"""One decoded input line: positional and keyword arguments."""

_RUN_DESCRIPTION = """\
Map MODULE:FUNCTION over the lines of FILE (or stdin) in worker processes.

Each line, without its newline, is passed as one str argument; with --json it
is decoded as JSON: a list gives positional arguments, an object keyword
arguments, anything else one argument (wrap a list or object in a list to pass
it as one argument). One JSON line per input is written to stdout, in input
order unless --unordered:
  {"index": 0, "value": ...}
  {"index": 1, "error": {"type": "ValueError", "message": "..."}}
Values that JSON cannot encode are written as their str().

A line that cannot be decoded ends the input: every item before it is still
run and written, in order, then the error is reported (exit status 2).
Anything the function prints goes to stderr, never between the records.

exit status: 0 every item succeeded, 1 some item failed, 2 usage error.
"""


class UsageError(Exception):
    """A mistake in the command line or its input: one line on stderr, exit 2."""


class _Parser(argparse.ArgumentParser):
    # argparse prints the usage and exits on an error; the command line
    # promises a single "parmap: error: ..." line, so main() reports it.
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


class _Call:
    """Call ``fn`` with one decoded input.

    ``imap`` zips positional iterables like ``map()``, so keyword arguments
    travel inside the item. A module-level class pickles by reference, so this
    works under spawn and forkserver as well as fork.
    """

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        # Carry fn's name: a --checkpoint file records the function it maps.
        functools.update_wrapper(self, fn, updated=())

    def __call__(self, item: Item) -> Any:
        args, kwargs = item
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"_Call({self.fn!r})"


class _Lines:
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


def _load_function(target: str) -> Callable[..., Any]:
    module_name, sep, attr_path = target.partition(":")
    if not sep or not module_name or not attr_path:
        raise UsageError(f"expected MODULE:FUNCTION, got {target!r}")
    # A console script does not put the current directory on sys.path;
    # `parmap run mymod:f` must find mymod.py where it is run.
    cwd = os.getcwd()
    if "" not in sys.path and cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            raise UsageError(f"cannot import module {module_name!r}: {exc}") from None
        raise UsageError(f"error while importing {module_name!r}: {exc}") from None
    except SystemExit as exc:  # e.g. a script's own entry point ran on import
        raise UsageError(
            f"importing {module_name!r} called sys.exit({exc.code!r}); "
            "it must define the function without running a program"
        ) from None
    except Exception as exc:  # the module's own code failed while importing
        raise UsageError(
            f"error while importing {module_name!r}: {type(exc).__name__}: {exc}"
        ) from None
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UsageError(f"{module_name!r} has no attribute {attr_path!r}") from None
    if not callable(obj):
        raise UsageError(f"{target!r} is not callable (it is {type(obj).__name__})")
    return obj  # type: ignore[no-any-return]


def _checked(name: str, kind: type[int] | type[float]) -> Callable[[str], Any]:
    """An argparse type for the option ``name``: converted here, checked by the library."""
    expected = "an integer" if kind is int else "a number of seconds"

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        try:
            Defaults().merged({name: value})
        except (TypeError, ValueError) as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return value

    return parse


def _checked_size(text: str) -> int:
    """An argparse type for ``--max-memory-per-worker``: bytes or a size such as 512MB."""
    try:
        size = parse_size(text)
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    assert size is not None
    return size


def _add_pool_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--start-method",
        choices=multiprocessing.get_all_start_methods(),
        help="how worker processes are started (default: the platform's)",
    )
    parser.add_argument("--progress", action="store_true", help="show a progress bar on stderr")
    parser.add_argument(
        "--stats", action="store_true", help="print what the map spent its time on to stderr"
    )
    parser.add_argument(
        "--timeline", metavar="FILE", help="write the map's timeline as SVG to FILE"
    )


def _report_stats(args: argparse.Namespace, stats: MapStats | None) -> None:
    """Honour ``--stats`` and ``--timeline`` once the map is over."""
    if not (args.stats or args.timeline):
        return
    if stats is None:
        print("parmap: no stats: the map stopped early", file=sys.stderr)
        return
    if args.stats:
        print(stats, file=sys.stderr)
    if args.timeline:
        try:
            stats.timeline(args.timeline)
        except OSError as exc:
            raise UsageError(f"cannot write {args.timeline!r}: {exc.strerror or exc}") from None


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="parmap",
        description="Parallel map over worker processes.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="map MODULE:FUNCTION over the lines of a file or stdin",
        description=_RUN_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("target", metavar="MODULE:FUNCTION", help="e.g. mymodule:process")
    run.add_argument(
        "file", metavar="FILE", nargs="?", default="-", help="input file; '-' is stdin (default)"
    )
    run.add_argument("--json", action="store_true", help="decode each line as JSON")
    run.add_argument("--unordered", action="store_true", help="write results as they complete")
    run.add_argument(
        "--workers",
        type=_checked("workers", int),
        metavar="N",
        help="worker processes (default: CPUs)",
    )
    run.add_argument(
        "--timeout",
        type=_checked("timeout", float),
        metavar="SECONDS",
        help="seconds one item may run",
    )
    run.add_argument(
        "--retries",
        type=_checked("retries", int),
        metavar="N",
        help="extra attempts for an item that raised",
    )
    run.add_argument(
        "--on-error",
        choices=get_args(OnError),
        default="collect",
        help="collect: run every item (default); raise: stop at the first failure",
    )
    run.add_argument(
        "--chunksize",
        type=_checked("chunksize", int),
        metavar="N",
        help="items sent to a worker at once",
    )
    run.add_argument(
        "--checkpoint",
        metavar="CHECKPOINT",
        help="record finished lines in this SQLite file; run again to resume (trusted files only)",
    )
    run.add_argument(
        "--max-memory-per-worker",
        type=_checked_size,
        metavar="SIZE",
        help="kill a worker whose item takes it over this resident memory, e.g. 512MB or 2GiB "
        "(its item fails); recycle one above 75%% of it between items",
    )
    _add_pool_arguments(run)
    run.set_defaults(handler=_run)

    demo = commands.add_parser(
        "demo",
        help="run ten tasks on three workers, every third raising",
        description="Run ten tasks on three workers; every third raises and is collected.",
    )
    _add_pool_arguments(demo)
    demo.set_defaults(handler=_demo)
    return parser


def _common_options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if args.start_method is not None:
        options["start_method"] = args.start_method
    if args.progress:
        options["progress"] = True
    return options


_STDOUT_CLOSED = "standard output is closed: there is nowhere to write the results"


@contextlib.contextmanager
def _records_output() -> Iterator[IO[str]]:
    """The stream for the JSON records, with file descriptor 1 pointed at stderr.

    The records get a duplicate of stdout's descriptor of their own, and
    descriptor 1 becomes stderr until the run ends: whatever the mapped
    function (or the module it lives in) prints, in the parent or in a worker
    under any start method, lands on stderr, never between the records.
    """
    stdout = sys.stdout
    if stdout is None:  # Python found descriptor 1 closed at start-up
        raise UsageError(_STDOUT_CLOSED)
    try:
        fd = stdout.fileno()
        os.fstat(fd)
    except (OSError, ValueError, io.UnsupportedOperation):
        if stdout is sys.__stdout__:
            raise UsageError(_STDOUT_CLOSED) from None
        yield stdout  # replaced by the caller (main() called in-process): write there
        return
    stdout.flush()
    records_fd = os.dup(fd)  # not inheritable: spawned workers never get it
    records = open(records_fd, "w", encoding="utf-8")  # noqa: SIM115
    try:
        os.dup2(sys.stderr.fileno(), fd)
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        # No usable stderr either: what the function prints is dropped.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)
    try:
        yield records
        records.flush()
    except BrokenPipeError:
        # The reader went away: drop what is buffered rather than fail again
        # when the stream is closed.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, records_fd)
        os.close(devnull)
        raise
    finally:
        with contextlib.suppress(OSError):
            stdout.flush()
        # Descriptor 1 is stdout again (main() may be called in-process).
        os.dup2(records_fd, fd)
        with contextlib.suppress(OSError):
            records.close()


def _run(args: argparse.Namespace) -> int:
    with _records_output() as records:
        return _run_to(args, records)


def _run_to(args: argparse.Namespace, out_stream: IO[str]) -> int:
    fn = _load_function(args.target)
    options = _common_options(args)
    for name in (
        "workers",
        "timeout",
        "retries",
        "chunksize",
        "checkpoint",
        "max_memory_per_worker",
    ):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    # The map always collects; "raise" is applied here, as stopping after the
    # first failed line is written, so that every line gets its JSON record.
    stop_at_failure = args.on_error == "raise"

    with contextlib.ExitStack() as stack:
        if args.file == "-":
            stream: IO[bytes] | IO[str] = getattr(sys.stdin, "buffer", sys.stdin)
            name, encoding = "<stdin>", sys.stdin.encoding or "utf-8"
        else:
            try:
                stream = stack.enter_context(open(args.file, "rb"))
            except OSError as exc:
                raise UsageError(f"cannot open {args.file!r}: {exc.strerror or exc}") from None
            name, encoding = args.file, "utf-8"
        lines = _Lines(stream, name, encoding, as_json=args.json)
        try:
            outcomes = imap(
                _Call(fn), lines, ordered=not args.unordered, on_error="collect", **options
            )
        except (TypeError, ValueError) as exc:  # e.g. a function spawn cannot send
            raise UsageError(str(exc)) from None
        # Leaving early (a failure under --on-error raise, a bad line, Ctrl-C)
        # closes the iterator, which stops the work still in flight.
        stack.enter_context(contextlib.closing(outcomes))
        failed = 0
        # A line that cannot be decoded ends the input (see _Lines): the items
        # before it still run, and are all written, in order, before the error.
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
    if lines.error is not None:
        raise UsageError(lines.error)
    _report_stats(args, outcomes.stats)
    return EXIT_FAILED if failed else EXIT_OK


def _demo_task(index: int) -> int:
    """The classic scenario's task: every third index raises, the rest sleep and return it."""
    if index % 3 == 0:
        raise RuntimeError(f"task {index} failed")
    time.sleep(0.2)
    return index


def _demo(args: argparse.Namespace) -> int:
    if sys.stdout is None:
        raise UsageError(_STDOUT_CLOSED)
    print("parmap demo: ten tasks on three workers; every third raises RuntimeError", flush=True)
    started = time.monotonic()
    result = pmap(_demo_task, range(10), workers=3, on_error="collect", **_common_options(args))
    elapsed = time.monotonic() - started
    for index, value in enumerate(result.values):
        error = result.errors.get(index)
        print(f"task {index}: {error!r}" if error is not None else f"task {index}: {value!r}")
    failed = len(result.errors)
    print(f"{len(result) - failed} succeeded, {failed} failed in {elapsed:.1f} s")
    _report_stats(args, result.stats)
    return EXIT_OK


def _one_line(text: str) -> str:
    return " ".join(text.split())


def main(argv: list[str] | None = None) -> int:
    """Run the ``parmap`` command line on ``argv`` (default: ``sys.argv[1:]``).

    Returns the exit status: 0 when every item succeeded, 1 when some item
    failed, 2 for a usage error, 130 when interrupted.
    """
    try:
        try:
            args = _build_parser().parse_args(argv)
        except SystemExit as exc:  # --help and --version end through argparse
            return exc.code if isinstance(exc.code, int) else EXIT_OK
        if args.command is None:
            raise UsageError("a command is required: 'run' or 'demo' (see parmap --help)")
        handler: Callable[[argparse.Namespace], int] = args.handler
        return handler(args)
    except (UsageError, CheckpointError) as exc:  # CheckpointError: in use, not ours, ...
        print(f"parmap: error: {_one_line(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("parmap: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (e.g. `| head`). Point stdout at devnull so the
        # interpreter's final flush does not fail a second time.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILED
