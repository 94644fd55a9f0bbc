"""Memory of worker processes: sizes, resident memory, the kernel's OOM kills.

Nothing here keeps state about a pool; the scheduler decides what a reading
means, and the engine takes the readings it asks for.

Resident memory is read from ``/proc/<pid>/statm`` on Linux (one small read,
no dependency). Elsewhere ``psutil`` is used when it is installed; without
either, ``max_memory_per_worker`` is refused when the pool is made, rather
than silently not enforced.

The out-of-memory killer's count comes from the cgroup the parent runs in:
``memory.events`` (cgroup v2) or ``memory.oom_control`` (cgroup v1), both of
which carry an ``oom_kill`` line.
"""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import sys
from pathlib import Path

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
}
_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*")
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_PROC = Path("/proc")


def parse_size(value: object, name: str = "max_memory_per_worker") -> int | None:
    """Bytes from an int or a string such as ``"512MB"`` or ``"2GiB"``; None stays None.

    Decimal units (kB, MB, GB, TB) are powers of 1000, binary ones (KiB, MiB,
    GiB, TiB) powers of 1024, as their names say. Raises ``TypeError`` or
    ``ValueError`` naming the option.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TypeError(
            f"{name} must be a number of bytes, a size such as '512MB', or None, got {value!r}"
        )
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE.fullmatch(value)
        unit = match.group(2).lower() if match else ""
        if match is None or unit not in _UNITS:
            raise ValueError(
                f"{name} must be a number of bytes or a size such as '512MB' or '2GiB', "
                f"got {value!r}"
            )
        size = int(float(match.group(1)) * _UNITS[unit])
    if size <= 0:
        raise ValueError(f"{name} must be > 0 bytes, got {value!r}")
    return size


def format_size(size: int) -> str:
    """A size for people: ``412.3 MB``."""
    for unit, factor in (("GB", 1000**3), ("MB", 1000**2), ("kB", 1000)):
        if size >= factor:
            return f"{size / factor:.1f} {unit}"
    return f"{size} B"


def rss_supported() -> bool:
    """Whether another process's resident memory can be read here."""
    return (_PROC / "self" / "statm").exists() or importlib.util.find_spec("psutil") is not None


def read_rss(pid: int) -> int | None:
    """Resident memory of process ``pid`` in bytes, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            # "size resident shared text lib data dt", in pages.
            return int(f.read().split()[1]) * _PAGE
    except FileNotFoundError:
        # No /proc: another system (psutil, if installed); on Linux, it is gone.
        return None if _PROC.exists() else _psutil_rss(pid)
    except (OSError, ValueError, IndexError):
        return None


def _psutil_rss(pid: int) -> int | None:
    try:
        psutil = importlib.import_module("psutil")  # optional: only where /proc is missing
    except ImportError:
        return None
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return None


def _cgroup_files() -> list[Path]:
    """The files of this process's cgroups that count OOM kills."""
    try:
        lines = (_PROC / "self" / "cgroup").read_text().splitlines()
    except OSError:
        return []
    root = Path("/sys/fs/cgroup")
    found: list[Path] = []
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        rel = path.lstrip("/")
        if hierarchy == "0" and not controllers:
            for base in (root, root / "unified"):
                found.append(base / rel / "memory.events")
        elif "memory" in controllers.split(","):
            found.append(root / "memory" / rel / "memory.oom_control")
    return [p for p in found if p.exists()]


def oom_kills() -> int | None:
    """How many processes the OOM killer took in this process's cgroup, or None."""
    total: int | None = None
    for path in _cgroup_files():
        try:
            text = path.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            key, _, count = line.partition(" ")
            if key == "oom_kill" and count.strip().isdigit():
                total = (total or 0) + int(count)
    return total


class OomWatch:
    """Says why a worker died of a SIGKILL that parmap did not send.

    Made when a pool starts: it notes the cgroup's OOM-kill count then, so that
    a later death can say whether the OOM killer struck meanwhile.
    """

    def __init__(self) -> None:
        self._start = oom_kills()

    def explain(self, exitcode: int | None) -> str | None:
        """The hint for a worker that exited with ``exitcode``, or None."""
        if exitcode != -signal.SIGKILL:
            return None
        now = oom_kills()
        if self._start is not None and now is not None and now > self._start:
            cause = (
                f"the out-of-memory killer: this cgroup's oom_kill count rose by "
                f"{now - self._start} while the pool ran"
            )
        elif sys.platform.startswith("linux"):
            cause = "most likely the kernel's out-of-memory killer"
        else:  # pragma: no cover - not Linux
            cause = "most likely the system, for lack of memory"
        return (
            f"parmap did not send that SIGKILL; its likely cause is {cause}. "
            "Set max_memory_per_worker to fail such an item with WorkerMemoryError "
            "before the system kills its worker"
        )


class Gauge:
    """Reads how much memory each worker of a pool holds, for the scheduler.

    A forked worker starts with the parent's resident pages mapped, shared
    until written; ``statm`` counts them as the child's. They are not the
    worker's doing, and would put every worker of a large parent over any
    limit at birth: the parent's resident memory when a worker is forked is
    subtracted from that worker's readings. Under spawn and forkserver the
    whole resident memory counts.
    """

    def __init__(self, *, forked: bool) -> None:
        self._forked = forked
        self._inherited: dict[int, int] = {}

    def spawned(self, wid: int) -> None:
        """Worker ``wid`` is being started now."""
        if self._forked:
            self._inherited[wid] = read_rss(os.getpid()) or 0

    def read(self, wid: int, pid: int | None) -> int | None:
        """Worker ``wid``'s own resident memory in bytes, or None if unknown."""
        rss = None if pid is None else read_rss(pid)
        if rss is None:
            self._inherited.pop(wid, None)
            return None
        return max(0, rss - self._inherited.get(wid, 0))
