"""Shared fixtures: every test must leave no child process behind."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator

import psutil
import pytest

from .checks import eventually
from .procs import running_children


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak",
        action="store_true",
        help=(
            "run the soak and chaos tests at full size (2,000 maps, 100,000 chaos items) "
            "and every row of the matrix tests"
        ),
    )


def pytest_configure(config: pytest.Config) -> None:
    # A shell started without job control (`cmd &`, nohup, some CI runners)
    # starts its children with SIGINT ignored, and an ignored disposition
    # survives exec: every Ctrl-C test would then fail for a reason that has
    # nothing to do with parmap. A handler is reset to the default on exec,
    # so installing Python's own gives the test subprocesses a normal SIGINT.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    # The soak and chaos modules read their sizes from the environment, so
    # that the sizes can also be set without the flag.
    if config.getoption("--soak"):
        os.environ.setdefault("PARMAP_SOAK", "2000")
        os.environ.setdefault("PARMAP_CHAOS_ITEMS", "100000")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Rows of the long matrices and the long soaks run with --soak; the default
    # run keeps a representative slice of each (deselected, not skipped).
    if config.getoption("--soak"):
        return
    keep = [
        item
        for item in items
        if item.get_closest_marker("matrix") is None and item.get_closest_marker("soak") is None
    ]
    if len(keep) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in keep])
        items[:] = keep


@pytest.fixture(autouse=True)
def no_leftover_processes(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that leaves a child process running.

    Pools owned by a test are closed by the test itself; a short grace period
    lets processes that were already told to stop finish exiting.
    """
    before = {p.pid for p in running_children()}
    yield
    if request.node.get_closest_marker("allow_leftover"):
        return

    def leftovers() -> list[psutil.Process]:
        return [p for p in running_children() if p.pid not in before]

    with contextlib.suppress(AssertionError):
        eventually(lambda: not leftovers(), within=5.0, message="", every=0.05)
    if left := leftovers():
        for proc in left:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        names = ", ".join(f"{p.pid}:{p.name()}" for p in left)
        pytest.fail(f"test left child processes behind: {names}")
