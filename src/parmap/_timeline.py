"""Draw a map's timeline as SVG, by hand: one lane per worker, a bar per item.

No plotting dependency: the picture is a few hundred lines of SVG text at
most. Bars narrower than a pixel are merged, per lane, into runs at least a
pixel wide, so a map of 100,000 tiny items draws at most about as many
rectangles per lane as the picture has pixels across. Each run says on hover
(``<title>``) which items it holds and how they ended, takes the colour of
its most common outcome, and shows the failures it hides as a strip.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from xml.sax.saxutils import escape

from ._stats import CRASHED, MEMORY, OK, RAISED, TIMED_OUT, Bar, Mark

WIDTH = 960  # the time axis, in pixels
LEFT = 80
RIGHT = 50  # room for a kill's label at the very end
TOP = 40
LANE = 22
GAP = 6
BOTTOM = 40
COLOURS = {
    OK: "#4e79a7",
    RAISED: "#f28e2b",
    TIMED_OUT: "#b07aa1",
    CRASHED: "#e15759",
    MEMORY: "#9c2a2c",
}
LABELS = {
    OK: "succeeded",
    RAISED: "raised",
    TIMED_OUT: "timed out",
    CRASHED: "crashed",
    MEMORY: "out of memory",
}


def render(bars: Iterable[Bar], marks: Iterable[Mark], t0: float, wall: float) -> str:
    """The SVG text of a timeline starting at ``t0`` and lasting ``wall`` seconds."""
    bars = sorted(bars, key=lambda b: (b[0], b[1]))
    marks = list(marks)
    end = max([t0 + wall] + [b[2] for b in bars] + [m[1] for m in marks])
    span = max(end - t0, 1e-9)
    lanes = 1 + max([b[0] for b in bars] + [m[0] for m in marks] + [0])
    height = TOP + lanes * (LANE + GAP) + BOTTOM
    scale = WIDTH / span

    def x(t: float) -> float:
        return LEFT + (t - t0) * scale

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{LEFT + WIDTH + RIGHT}" '
        f'height="{height}" font-family="sans-serif" font-size="11">',
        '<rect width="100%" height="100%" fill="white"/>',
    ]
    out.extend(_legend())
    for lane in range(lanes):
        y = TOP + lane * (LANE + GAP)
        out.append(
            f'<g class="lane" data-lane="{lane}">'
            f'<rect x="{LEFT}" y="{y}" width="{WIDTH}" height="{LANE}" fill="#f4f4f4"/>'
            f'<text x="{LEFT - 8}" y="{y + LANE / 2 + 4}" text-anchor="end">worker {lane}</text>'
            "</g>"
        )
    for run in _runs(bars, x):
        out.extend(_draw(run, TOP + run.lane * (LANE + GAP)))
    for lane, t, kind in marks:
        y = TOP + lane * (LANE + GAP)
        px = x(t)
        if kind == "kill":
            out.append(
                f'<g class="kill"><line x1="{px:.2f}" y1="{y - 2}" x2="{px:.2f}" '
                f'y2="{y + LANE + 2}" stroke="#222" stroke-width="2"/>'
                f'<text x="{px + 2:.2f}" y="{y - 1}" font-size="9">killed</text></g>'
            )
        else:
            out.append(
                f'<g class="spawn"><path d="M {px:.2f} {y + LANE} l -4 5 l 8 0 z" fill="#2ca02c"/>'
                f"<title>replacement worker started</title></g>"
            )
    out.extend(_axis(t0, span, x, TOP + lanes * (LANE + GAP)))
    out.append("</svg>")
    return "\n".join(out) + "\n"


@dataclass(slots=True)
class _Run:
    """What one rectangle shows: items ``first … last`` of a lane, by outcome."""

    lane: int
    a: float  # left and right edges, in pixels
    b: float
    first: int
    last: int
    counts: dict[str, int]
    seconds: float

    @property
    def count(self) -> int:
        return sum(self.counts.values())

    def add(self, b: float, first: int, count: int, outcome: str, seconds: float) -> None:
        self.b = max(self.b, b)
        self.first = min(self.first, first)
        self.last = max(self.last, first + count - 1)
        self.counts[outcome] = self.counts.get(outcome, 0) + count
        self.seconds += seconds


def _runs(bars: list[Bar], x: Callable[[float], float]) -> Iterator[_Run]:
    """Bars as drawn: one of a pixel or more alone; narrower ones on the same
    lane join a run until it is a pixel wide (a gap of a pixel ends it too)."""
    run: _Run | None = None
    for lane, t0, t1, first, count, outcome in bars:
        a, b = x(t0), x(t1)
        wide = b - a >= 1.0
        if run is not None and (wide or run.lane != lane or a - run.b >= 1.0):
            yield run
            run = None
        if wide:
            yield _Run(lane, a, b, first, first + count - 1, {outcome: count}, t1 - t0)
            continue
        if run is None:
            run = _Run(lane, a, b, first, first + count - 1, {outcome: count}, t1 - t0)
        else:
            run.add(b, first, count, outcome, t1 - t0)
        if run.b - run.a >= 1.0:
            yield run
            run = None
    if run is not None:
        yield run


def _draw(run: _Run, y: float) -> list[str]:
    """A run's rectangle, coloured by its most common outcome, with its title.

    Failures that a run of mostly successes holds show as a strip along its
    foot, so that merging never hides a failure.
    """
    counts, count = run.counts, run.count
    # Most common first; on a tie, a failure before a success.
    ranked = sorted(counts, key=lambda o: (-counts[o], o == OK))
    main = ranked[0]
    if count == 1:
        what = f"item {run.first}: {LABELS[main]}, {_secs(run.seconds)}"
    else:
        parts = ", ".join(f"{counts[o]} {LABELS[o]}" for o in ranked)
        what = (
            f"{count} items ({run.first} … {run.last}): {parts}; {_secs(run.seconds / count)} each"
        )
    # A failure must show even when it took no time; an item that cost its
    # worker grows leftwards, clear of the kill mark at its end.
    lost = main in (TIMED_OUT, CRASHED, MEMORY)
    width = max(run.b - run.a, 1.0 if main == OK else 4.0 if lost else 3.0)
    left = run.b - width if lost else run.a
    # Wide bars get a hairline edge so that neighbours stay apart.
    edge = ' stroke="white" stroke-width="0.6"' if width >= 4 else ""
    out = [
        f'<rect class="bar" x="{left:.2f}" y="{y + 2}" width="{width:.2f}" '
        f'height="{LANE - 4}" fill="{COLOURS[main]}"{edge}>'
        f"<title>{escape(what)}</title></rect>"
    ]
    failures = [o for o in ranked if o != OK]
    if main == OK and failures:
        out.append(
            f'<rect class="minor" x="{run.a:.2f}" y="{y + LANE - 6}" width="{width:.2f}" '
            f'height="4" fill="{COLOURS[failures[0]]}"/>'
        )
    return out


def _legend() -> list[str]:
    out = []
    px = LEFT
    for outcome in (OK, RAISED, TIMED_OUT, CRASHED):
        out.append(
            f'<rect x="{px}" y="12" width="12" height="12" fill="{COLOURS[outcome]}"/>'
            f'<text x="{px + 16}" y="22">{LABELS[outcome]}</text>'
        )
        px += 24 + 7 * len(LABELS[outcome])
    out.append(
        f'<line x1="{px + 6}" y1="10" x2="{px + 6}" y2="26" stroke="#222" stroke-width="2"/>'
        f'<text x="{px + 12}" y="22">worker killed</text>'
    )
    px += 100
    out.append(
        f'<path d="M {px + 6} 18 l -5 6 l 10 0 z" fill="#2ca02c"/>'
        f'<text x="{px + 14}" y="22">replacement started</text>'
    )
    return out


def _axis(t0: float, span: float, x: Callable[[float], float], y: int) -> list[str]:
    step = _nice(span / 6)
    out = [f'<line x1="{LEFT}" y1="{y}" x2="{LEFT + WIDTH}" y2="{y}" stroke="#888"/>']
    for i in range(int(span / step) + 1):
        px = x(t0 + i * step)
        out.append(
            f'<line x1="{px:.2f}" y1="{y}" x2="{px:.2f}" y2="{y + 4}" stroke="#888"/>'
            f'<text x="{px:.2f}" y="{y + 16}" text-anchor="middle">'
            f"{_secs(i * step, tick=True)}</text>"
        )
    return out


def _nice(raw: float) -> float:
    """A round step (1, 2 or 5 times a power of ten) near ``raw``."""
    power = 10.0 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if raw <= factor * power:
            return factor * power
    return 10 * power


def _secs(seconds: float, *, tick: bool = False) -> str:
    if tick and seconds == 0:
        return "0"
    if seconds >= 1:
        return f"{seconds:g} s" if tick else f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:g} ms" if tick else f"{seconds * 1e3:.1f} ms"
    if seconds >= 1e-5 or tick:
        return f"{seconds * 1e6:.0f} µs"
    return f"{seconds * 1e6:.2f} µs"
