"""The ``parmap`` command line's arguments: the parser, and the map options they give.

Numbers are converted here and checked by the library's own option checks
(``Defaults.merged``), so that a bad ``--workers`` says what ``workers=``
would. Every mistake is a ``UsageError``: one line on stderr, exit status 2.
"""

from __future__ import annotations

import argparse
import multiprocessing
from collections.abc import Callable
from typing import Any, NoReturn, get_args

from . import __version__
from ._memory import parse_size
from ._options import Defaults, OnError

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

#: The options of ``parmap run`` that go to ``imap`` as they are, when given.
_RUN_OPTIONS = ("workers", "timeout", "retries", "chunksize", "checkpoint", "max_memory_per_worker")


class UsageError(Exception):
    """A mistake in the command line or its input: one line on stderr, exit 2."""


class _Parser(argparse.ArgumentParser):
    # argparse prints the usage and exits on an error; the command line
    # promises a single "parmap: error: ..." line, so main() reports it.
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


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


def _add_input_arguments(run: argparse.ArgumentParser) -> None:
    """``parmap run``'s function, its input and how the input is read and written."""
    run.add_argument("target", metavar="MODULE:FUNCTION", help="e.g. mymodule:process")
    run.add_argument(
        "file", metavar="FILE", nargs="?", default="-", help="input file; '-' is stdin (default)"
    )
    run.add_argument("--json", action="store_true", help="decode each line as JSON")
    run.add_argument("--unordered", action="store_true", help="write results as they complete")


def _add_checked(
    parser: argparse.ArgumentParser,
    name: str,
    kind: type[int] | type[float],
    metavar: str,
    text: str,
) -> None:
    """Add the option ``--name``, checked as the library checks ``name=``."""
    parser.add_argument(f"--{name}", type=_checked(name, kind), metavar=metavar, help=text)


def _add_map_arguments(run: argparse.ArgumentParser) -> None:
    """``parmap run``'s map options."""
    _add_checked(run, "workers", int, "N", "worker processes (default: CPUs)")
    _add_checked(run, "timeout", float, "SECONDS", "seconds one item may run")
    _add_checked(run, "retries", int, "N", "extra attempts for an item that raised")
    run.add_argument(
        "--on-error",
        choices=get_args(OnError),
        default="collect",
        help="collect: run every item (default); raise: stop at the first failure",
    )
    _add_checked(run, "chunksize", int, "N", "items sent to a worker at once")


def _add_resource_arguments(run: argparse.ArgumentParser) -> None:
    """``parmap run``'s options for what a run keeps: its checkpoint, its workers' memory."""
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


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``parmap [--version] run ...|demo ...`` (``command`` says which)."""
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
    _add_input_arguments(run)
    _add_map_arguments(run)
    _add_resource_arguments(run)
    _add_pool_arguments(run)
    demo = commands.add_parser(
        "demo",
        help="run ten tasks on three workers, every third raising",
        description="Run ten tasks on three workers; every third raises and is collected.",
    )
    _add_pool_arguments(demo)
    return parser


def common_options(args: argparse.Namespace) -> dict[str, Any]:
    """The map options both commands take from the command line."""
    options: dict[str, Any] = {}
    if args.start_method is not None:
        options["start_method"] = args.start_method
    if args.progress:
        options["progress"] = True
    return options


def run_options(args: argparse.Namespace) -> dict[str, Any]:
    """The map options of ``parmap run``: the common ones and those given."""
    options = common_options(args)
    for name in _RUN_OPTIONS:
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    return options
