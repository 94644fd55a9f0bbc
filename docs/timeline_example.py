"""Make the README's timeline picture: ``python docs/timeline_example.py``.

Writes docs/timeline.svg; render it with ``rsvg-convert -o docs/timeline.png
docs/timeline.svg`` (Debian's librsvg2-bin).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import parmap


def task(i: int) -> int:
    if i == 7:
        time.sleep(10)  # runs past the timeout: its worker is killed
    if i == 15:
        os._exit(1)  # the worker dies
    if i % 6 == 4:
        raise ValueError(i)
    time.sleep(0.05 + 0.03 * (i % 4) + (0.3 if i == 11 else 0))
    return i


if __name__ == "__main__":
    res = parmap.pmap(task, range(24), workers=3, timeout=0.5, on_error="collect")
    print(res.stats)
    res.stats.timeline(str(Path(__file__).with_name("timeline.svg")))
