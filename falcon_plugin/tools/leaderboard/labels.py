"""Deterministic, non-overlapping placement of point labels on a matplotlib scatter.

Greedy, in display pixels: the most crowded point is labelled first; each label takes the first
candidate position (rings of growing distance around its point, eight directions each) whose box
stays inside the axes and touches no placed label, no marker and no leader line. A label away from
its point gets a thin leader line, which crosses no other label and no other marker. When some
label finds no free position, :func:`place_labels` gives up and says so,
so the caller can fall back to short labels (numbers keyed in the legend). Same input, same figure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

Box = tuple[float, float, float, float]
"""(x0, y0, x1, y1) in display pixels."""
Segment = tuple[float, float, float, float]
"""A line segment (x0, y0, x1, y1) in display pixels."""

_DIRECTIONS = (
    (1.0, 0.0),
    (-1.0, 0.0),
    (1.0, 1.0),
    (1.0, -1.0),
    (-1.0, 1.0),
    (-1.0, -1.0),
    (0.0, 1.0),
    (0.0, -1.0),
)
"""E, W, NE, SE, NW, SW, N, S: beside the point first (the least ambiguous), then diagonally, then above
or below."""
_GAPS = (2.0, 8.0, 16.0, 28.0, 44.0, 64.0, 90.0, 120.0, 160.0)
"""Distances (pixels) from the marker's edge to the label's box that are tried, nearest first."""
LEADER_GAP = 6.0
"""Labels farther than this from their marker get a leader line."""
_PAD = 2.0


@dataclass(frozen=True)
class Placement:
    """Where one label went: its box centre's offset from the point (pixels) and the gap to the marker."""

    dx: float
    dy: float
    gap: float


def overlaps(a: Box, b: Box, pad: float = 0.0) -> bool:
    """Whether two boxes intersect (``pad`` pixels of clearance required)."""
    return a[0] < b[2] + pad and b[0] < a[2] + pad and a[1] < b[3] + pad and b[1] < a[3] + pad


def _leader(x: float, y: float, box: Box) -> Segment:
    """The leader line from the point to the nearest point of the label's box."""
    return x, y, min(max(x, box[0]), box[2]), min(max(y, box[1]), box[3])


def crosses(segment: Segment, box: Box, pad: float = 1.0) -> bool:
    """Whether a line segment passes through a box (sampled every pixel)."""
    x0, y0, x1, y1 = segment
    steps = max(1, int(math.hypot(x1 - x0, y1 - y0)))
    for k in range(steps + 1):
        t = k / steps
        x, y = x0 + t * (x1 - x0), y0 + t * (y1 - y0)
        if box[0] - pad < x < box[2] + pad and box[1] - pad < y < box[3] + pad:
            return True
    return False


def _box(cx: float, cy: float, w: float, h: float) -> Box:
    return (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)


def _candidate(x: float, y: float, radius: float, gap: float, d: tuple[float, float], w: float, h: float):
    """The label's centre when its box sits ``gap`` pixels beyond a marker of ``radius`` along ``d``."""
    dx, dy = d
    cx = x + dx * (radius + gap + w / 2)
    cy = y + dy * (radius + gap + h / 2)
    if dx and dy:  # diagonal: the box corner, not its centre, at that distance
        step = (radius + gap) / math.sqrt(2)
        cx, cy = x + dx * (step + w / 2), y + dy * (step + h / 2)
    return cx, cy


def place_labels(
    points: Sequence[tuple[float, float]],
    sizes: Sequence[tuple[float, float]],
    radii: Sequence[float],
    area: Box,
    lines: Sequence[Segment] = (),
    max_gap: float | None = None,
) -> list[Placement] | None:
    """A position for every label, or None when one has no free position.

    Greedy in an order (the most crowded point first); when a label finds no room, it moves to the
    front of the order and the placement starts again, at most twice per label.

    Args:
        points: the points in display pixels.
        sizes: each label's (width, height) in pixels.
        radii: each point's marker radius in pixels (markers are obstacles for every label).
        area: the box every label must stay inside (the axes).
        lines: segments no label may cross (the Pareto front, reference lines), in display pixels.
        max_gap: the farthest a label may sit from its marker (None: any of the tried distances).
    """
    markers = [_box(x, y, 2 * r, 2 * r) for (x, y), r in zip(points, radii, strict=True)]

    def crowd(i: int) -> int:
        x, y = points[i]
        return sum(1 for j, (u, v) in enumerate(points) if j != i and abs(u - x) < 80 and abs(v - y) < 40)

    order = sorted(range(len(points)), key=lambda i: (-crowd(i), points[i][0], points[i][1], i))
    for _ in range(2 * len(points) + 1):
        gaps = [g for g in _GAPS if max_gap is None or g <= max_gap]
        placed, failed = _greedy(order, points, sizes, radii, markers, area, lines, gaps)
        if failed is None:
            return [placed[i] for i in range(len(points))]
        order = [failed] + [i for i in order if i != failed]
    return None


def _greedy(
    order: Sequence[int],
    points: Sequence[tuple[float, float]],
    sizes: Sequence[tuple[float, float]],
    radii: Sequence[float],
    markers: Sequence[Box],
    area: Box,
    lines: Sequence[Segment],
    gaps: Sequence[float],
) -> tuple[dict[int, Placement], int | None]:
    """One greedy pass in ``order``: the placements, and the first label that found no room (or None)."""
    placed: dict[int, Placement] = {}
    boxes: list[Box] = []
    leaders: list[Segment] = list(lines)
    for i in order:
        x, y = points[i]
        w, h = sizes[i]
        found = None
        for gap in gaps:
            for d in _DIRECTIONS:
                cx, cy = _candidate(x, y, radii[i], gap, d, w, h)
                box = _box(cx, cy, w, h)
                inside = box[0] >= area[0] and box[1] >= area[1] and box[2] <= area[2] and box[3] <= area[3]
                if not inside or any(overlaps(box, b, _PAD) for b in boxes):
                    continue
                if any(overlaps(box, m, 1.0) for j, m in enumerate(markers) if j != i):
                    continue
                if any(crosses(line, box) for line in leaders):
                    continue
                line = _leader(x, y, box) if gap > LEADER_GAP else None
                if line is not None and any(crosses(line, b) for b in boxes):
                    continue
                if line is not None and any(crosses(line, m) for j, m in enumerate(markers) if j != i):
                    continue
                found = Placement(cx - x, cy - y, gap)
                if line is not None:
                    leaders.append(line)
                break
            if found:
                break
        if found is None:
            return placed, i
        placed[i] = found
        boxes.append(_box(x + found.dx, y + found.dy, w, h))
    return placed, None


__all__ = ["LEADER_GAP", "Placement", "crosses", "overlaps", "place_labels"]
