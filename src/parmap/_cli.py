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
import os
import sys
import time
from collections.abc import Callable
from typing import IO, Any

from . import MapStats, imap, pmap
from ._checkpoint import CheckpointError
from ._cli_args import UsageError, build_parser, common_options, run_options
from ._cli_io import STDOUT_CLOSED, Item, input_lines, records_output, write_outcomes

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


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


def _run(args: argparse.Namespace) -> int:
    with records_output() as records:
        return _run_to(args, records)


def _run_to(args: argparse.Namespace, out_stream: IO[str]) -> int:
    fn = _load_function(args.target)
    options = run_options(args)
    # The map always collects; "raise" is applied here, as stopping after the
    # first failed line is written, so that every line gets its JSON record.
    stop_at_failure = args.on_error == "raise"
    with contextlib.ExitStack() as stack:
        lines = stack.enter_context(input_lines(args.file, as_json=args.json))
        try:
            outcomes = imap(
                _Call(fn), lines, ordered=not args.unordered, on_error="collect", **options
            )
        except (TypeError, ValueError) as exc:  # e.g. a function spawn cannot send
            raise UsageError(str(exc)) from None
        # Leaving early (a failure under --on-error raise, a bad line, Ctrl-C)
        # closes the iterator, which stops the work still in flight.
        stack.enter_context(contextlib.closing(outcomes))
        # A line that cannot be decoded ends the input (see Lines): the items
        # before it still run, and are all written, in order, before the error.
        failed = write_outcomes(outcomes, out_stream, stop_at_failure=stop_at_failure)
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
        raise UsageError(STDOUT_CLOSED)
    print("parmap demo: ten tasks on three workers; every third raises RuntimeError", flush=True)
    started = time.monotonic()
    result = pmap(_demo_task, range(10), workers=3, on_error="collect", **common_options(args))
    elapsed = time.monotonic() - started
    for index, value in enumerate(result.values):
        error = result.errors.get(index)
        print(f"task {index}: {error!r}" if error is not None else f"task {index}: {value!r}")
    failed = len(result.errors)
    print(f"{len(result) - failed} succeeded, {failed} failed in {elapsed:.1f} s")
    _report_stats(args, result.stats)
    return EXIT_OK


_HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {"run": _run, "demo": _demo}


def _one_line(text: str) -> str:
    return " ".join(text.split())


def main(argv: list[str] | None = None) -> int:
    """Run the ``parmap`` command line on ``argv`` (default: ``sys.argv[1:]``).

    Returns the exit status: 0 when every item succeeded, 1 when some item
    failed, 2 for a usage error, 130 when interrupted.
    """
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as exc:  # --help and --version end through argparse
            return exc.code if isinstance(exc.code, int) else EXIT_OK
        if args.command is None:
            raise UsageError("a command is required: 'run' or 'demo' (see parmap --help)")
        return _HANDLERS[args.command](args)
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
