"""A real Jupyter kernel (ipykernel, driven with jupyter_client) for the notebook tests."""

from __future__ import annotations

import contextlib
import os
import queue
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from jupyter_client.manager import KernelManager

from .procs import _is_mp_helper

SRC = Path(__file__).resolve().parent.parent / "src"
#: Generous: a loaded machine starts a kernel and its workers slowly.
CELL_TIMEOUT = 90.0


class CellError(AssertionError):
    """A cell raised; ``ename`` and ``traceback`` are what the notebook shows."""

    def __init__(self, cell: Cell) -> None:
        super().__init__(f"{cell.ename}: {cell.evalue}\n" + "\n".join(cell.traceback))
        self.cell = cell


@dataclass
class Cell:
    """What one executed cell sent to the frontend."""

    stdout: str = ""
    stderr: str = ""
    result: str | None = None
    ename: str | None = None
    evalue: str = ""
    traceback: list[str] = field(default_factory=list)
    #: comm_open and comm_msg contents, in order (ipywidgets' state updates).
    comms: list[dict[str, Any]] = field(default_factory=list)


class Kernel:
    """One kernel process; ``run`` executes a cell and waits until it is done."""

    def __init__(self, cwd: Path) -> None:
        self.manager = KernelManager(kernel_name="python3")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH")) if p)
        #: The kernel process's own stderr (and its workers'), outside any cell.
        self.log = cwd / "kernel-stderr.txt"
        # Kept open: a restart starts the new kernel with the same arguments.
        self._log_file = self.log.open("ab")
        self.manager.start_kernel(env=env, cwd=str(cwd), stderr=self._log_file)
        self.client = self.manager.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=CELL_TIMEOUT)
        self.pid = int(self.run("import os; print(os.getpid())").stdout)

    def submit(self, code: str) -> str:
        """Start executing ``code``; return the message id to ``collect`` with."""
        msg_id: str = self.client.execute(code)
        return msg_id

    def collect(self, msg_id: str, timeout: float = CELL_TIMEOUT) -> Cell:
        """Gather what cell ``msg_id`` sends until the kernel is idle again."""
        cell = Cell()
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"the cell did not finish in {timeout} s: {cell}")
            try:
                msg = self.client.get_iopub_msg(timeout=remaining)
            except queue.Empty:
                continue
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                if content["name"] == "stdout":
                    cell.stdout += content["text"]
                else:
                    cell.stderr += content["text"]
            elif kind == "execute_result":
                cell.result = content["data"].get("text/plain")
            elif kind == "error":
                cell.ename, cell.evalue = content["ename"], content["evalue"]
                cell.traceback = content["traceback"]
            elif kind in ("comm_open", "comm_msg"):
                cell.comms.append(content)
            elif kind == "status" and content["execution_state"] == "idle":
                return cell

    def run(self, code: str, timeout: float = CELL_TIMEOUT) -> Cell:
        """Execute ``code``; raise ``CellError`` if it raised."""
        cell = self.collect(self.submit(code), timeout)
        if cell.ename is not None:
            raise CellError(cell)
        return cell

    def children(self) -> list[psutil.Process]:
        """The kernel's child processes (its workers) at any depth, zombies too.

        multiprocessing's own helpers (resource tracker, forkserver) are left
        out: they are started once per interpreter and outlive every pool.
        """
        try:
            kernel = psutil.Process(self.pid)
            found = kernel.children(recursive=True)
            helpers = {p.pid for p in kernel.children() if _is_mp_helper(p)}
        except psutil.NoSuchProcess:
            return []
        # Forkserver workers are the helper's children (with its command line).
        return [p for p in found if p.pid not in helpers]

    def shutdown(self) -> float:
        """Shut the kernel down as a frontend does; return the seconds it took."""
        started = time.monotonic()
        self.manager.shutdown_kernel(now=False)
        return time.monotonic() - started

    def restart(self) -> float:
        """Restart the kernel as a frontend does; return the seconds until it is ready."""
        started = time.monotonic()
        self.manager.restart_kernel(now=False)
        self.client.wait_for_ready(timeout=CELL_TIMEOUT)
        elapsed = time.monotonic() - started
        self.pid = int(self.run("import os; print(os.getpid())").stdout)
        return elapsed

    def close(self) -> None:
        """Stop the channels and make sure the kernel process is gone."""
        with contextlib.suppress(Exception):
            self.client.stop_channels()
        if self.manager.has_kernel:
            self.manager.shutdown_kernel(now=True)
        self.manager.cleanup_resources()
        self._log_file.close()


@contextlib.contextmanager
def kernel(cwd: Path) -> Iterator[Kernel]:
    """A fresh kernel, shut down (and killed if need be) at the end."""
    k = Kernel(cwd)
    try:
        yield k
    finally:
        k.close()
