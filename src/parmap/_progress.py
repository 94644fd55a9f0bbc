"""Progress bars: tqdm, fed from the scheduler's counters."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._scheduler import Job


class Progress:
    """Shows a job's finished items (and failures) on a tqdm bar.

    ``spec`` is the ``progress`` option: ``False`` (no bar), ``True`` (a
    ``tqdm.auto`` bar with the input's length as total when known), a dict
    of tqdm keyword arguments, or a tqdm instance that is used as is and left
    open for its owner.
    """

    def __init__(self, spec: Any, total: int | None) -> None:
        self._bar: Any = None
        self._own = False
        self._done = 0
        self._failed = 0
        if spec is False or spec is None:
            return
        if spec is True or isinstance(spec, Mapping):
            from tqdm.auto import tqdm  # type: ignore[import-untyped, unused-ignore]

            kwargs: dict[str, Any] = {"total": total, "unit": "item"}
            if isinstance(spec, Mapping):
                kwargs.update(spec)
            self._bar = tqdm(**kwargs)
            self._own = True
        else:
            self._bar = spec

    def update(self, job: Job) -> None:
        """Bring the bar up to date with ``job``."""
        bar = self._bar
        if bar is None:
            return
        if job.failures != self._failed:
            self._failed = job.failures
            bar.set_postfix(failed=self._failed, refresh=False)
        delta = job.completed - self._done
        if delta > 0:
            self._done = job.completed
            bar.update(delta)

    def close(self) -> None:
        """Close a bar we made; refresh one we were given."""
        bar, self._bar = self._bar, None
        if bar is None:
            return
        if self._own:
            bar.close()
        else:
            bar.refresh()
