"""The leaderboard's utility-vs-forgetting scatter per benchmark, the unlearning runs' Pareto front marked.

One colour and marker per method (legend outside the axes), reference models as black stars (a
reference without the forgetting metric, e.g. TOFU's retain model, as a dotted line at its utility),
the Pareto front of each model/split ringed in red and joined. Every point is labelled with a name
that tells its run apart (``NPO (lr 2e-5)`` when a method ran twice); the labels are placed so that
they overlap neither each other nor the markers nor the title (:mod:`.labels`), else the points are
numbered and the numbers keyed in the legend. A log axis of a bounded metric (a p-value) stops at
its bound.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from falcon_plugin.tools.common.benchmarks import Axis, Benchmark

from .labels import LEADER_GAP, Segment, place_labels
from .read import Row
from .table import run_names

DPI = 110
FONT = 8
NAME_GAP = 28.0
"""Pixels a name label may sit from its marker (first try)."""
FAR_NAMES = 12
"""Up to this many points, names may also sit farther away, on leader lines; beyond, numbers instead."""
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "h", "<", ">")
_SIZE, _REF_SIZE = 60, 220
_FLOOR = 1e-300


def _lr_text(lr: float) -> str:
    """A learning rate as a paper writes it: ``2e-05`` -> ``2e-5``, ``0.00015`` -> ``1.5e-4``, ``0.1``."""
    if lr == 0 or abs(lr) >= 0.01:
        return f"{lr:g}"
    mantissa, exponent = f"{lr:.6e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def point_labels(rows: Sequence[Row]) -> list[str]:
    """One label per row, distinct: the method, plus what tells two runs of one method apart.

    The first of learning rate, split, model, task name, run folder (:func:`.table.run_names`, the
    table's ``run`` column) whose values differ within the method's runs is added (``NPO (lr 2e-5)``);
    a run alone under its name keeps the bare name.
    """
    runs = run_names(rows)
    keys: list[Callable[[int], Any]] = [
        lambda i: None if rows[i].learning_rate is None else f"lr {_lr_text(rows[i].learning_rate)}",
        lambda i: rows[i].split or None,
        lambda i: rows[i].model or None,
        lambda i: rows[i].task or None,
        lambda i: runs[i],
    ]
    labels = [r.method for r in rows]
    groups: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        groups.setdefault(label, []).append(i)
    for name, members in groups.items():
        if len(members) < 2:
            continue
        for key in keys:
            values = [key(i) for i in members]
            if None not in values and len(set(values)) == len(values):
                for i, value in zip(members, values, strict=True):
                    labels[i] = f"{name} ({value})"
                break
        else:  # the same run folder read twice (two summaries of one run): numbered
            for n, i in enumerate(members, 1):
                labels[i] = f"{name} ({runs[i]} #{n})"
    return labels


def _y(row: Row, axis: Axis) -> float:
    value = row.value(axis.key)
    assert value is not None
    return max(value, _FLOOR) if axis.log else value


def _limits(values: Sequence[float], axis: Axis) -> tuple[float, float] | None:
    """Log-axis limits with room around the points, never past the metric's bounds."""
    if not axis.log:
        return None
    low, high = min(values), max(values)
    room = 10 ** max(0.5, 0.06 * (math.log10(high) - math.log10(low)))  # 6% of the range each side
    bottom, top = low / room, high * room
    lo_bound, hi_bound = axis.bounds
    if hi_bound is not None:
        top = min(top, hi_bound)
    if lo_bound is not None:
        bottom = max(bottom, lo_bound)
    if top <= bottom:
        top = bottom * 10
    return bottom, top


def scatter_figure(rows: Sequence[Row], bench: Benchmark) -> Any | None:
    """The matplotlib figure of the scatter, or None when no row has both axes' metrics."""
    if bench.utility is None or bench.forget is None:
        return None
    util, forget = bench.utility, bench.forget
    points = [r for r in rows if r.value(util.key) is not None and r.value(forget.key) is not None]
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    fig, ax = plt.subplots(figsize=(8.6, 5.0), dpi=DPI)
    methods = list(dict.fromkeys(r.method for r in points if r.role == "unlearn"))
    style = {m: (f"C{i % 10}", _MARKERS[i % len(_MARKERS)]) for i, m in enumerate(methods)}
    xs = [r.value(util.key) for r in points]
    ys = [_y(r, forget) for r in points]
    handles: list[Any] = []
    for method in methods:
        color, marker = style[method]
        handles.append(Line2D([], [], color=color, marker=marker, linestyle="none", label=method))
    for row, x, y in zip(points, xs, ys, strict=True):
        ref = row.role != "unlearn"
        color, marker = ("black", "*") if ref else style[row.method]
        ax.scatter(
            x,
            y,
            marker=marker,
            s=_REF_SIZE if ref else _SIZE,
            color=color,
            edgecolors="red" if row.pareto else "none",
            linewidths=1.8,
            zorder=3,
            clip_on=False,
        )
    if any(r.role != "unlearn" for r in points):
        handles.append(
            Line2D(
                [], [], color="black", marker="*", markersize=11, linestyle="none", label="reference model"
            )
        )
    verticals = []
    for row in rows:  # a reference without the forgetting metric: its utility as a line
        if row.role != "unlearn" and row not in points and row.value(util.key) is not None:
            verticals.append(row.value(util.key))
            ax.axvline(row.value(util.key), color="0.35", linestyle=":", linewidth=1.2, zorder=1)
            handles.append(
                Line2D(
                    [], [], color="0.35", linestyle=":", label=f"{row.method}: {util.key} (no {forget.key})"
                )
            )
    fronts: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for row, x, y in zip(points, xs, ys, strict=True):
        if row.pareto:
            fronts.setdefault((row.model, row.split), []).append((x, y))  # type: ignore[arg-type]
    for front in fronts.values():
        if len(front) > 1:
            front.sort()
            ax.plot(*zip(*front, strict=True), color="red", linestyle="--", linewidth=1, zorder=2)
    if fronts:
        handles.append(
            Line2D(
                [],
                [],
                color="red",
                linestyle="--",
                marker="o",
                markerfacecolor="none",
                markeredgecolor="red",
                label="Pareto front (unlearning runs)",
            )
        )
    if forget.log:
        ax.set_yscale("log")
        ax.set_ylim(*_limits(ys, forget))  # type: ignore[misc]
    ax.set_xlabel(util.label)
    ax.set_ylabel(forget.label)
    ax.set_title(f"{bench.name}: utility vs forgetting", fontsize=11)
    ax.grid(alpha=0.3)
    ax.margins(x=0.08)

    labels = point_labels(points)
    lines = _Lines(list(fronts.values()), verticals)
    # names close to their points; with few points, names farther away on leader lines; else numbers
    tiers = [(False, NAME_GAP)] + ([(False, None)] if len(points) <= FAR_NAMES else []) + [(True, None)]
    for numbered, max_gap in tiers:
        for text in list(ax.texts):
            text.remove()
        if _annotate(fig, ax, points, xs, ys, labels, handles, lines, numbered, max_gap):
            break
    return fig


@dataclass
class _Lines:
    """What the plot draws as lines, in data coordinates: labels must not cross them."""

    fronts: list[list[tuple[float, float]]]
    verticals: list[float]

    def segments(self, ax: Any) -> list[Segment]:
        to_display = ax.transData.transform
        out: list[Segment] = []
        for front in self.fronts:
            pts = [tuple(to_display(p)) for p in front]
            out += [(*a, *b) for a, b in zip(pts, pts[1:], strict=False)]
        frame = ax.get_window_extent()
        for x in self.verticals:
            px = to_display((x, 1.0))[0]
            out.append((px, frame.y0, px, frame.y1))
        return out


def _legend(ax: Any, handles: list[Any], key: Sequence[str]) -> None:
    from matplotlib.lines import Line2D

    entries = list(handles) + [Line2D([], [], linestyle="none", label=k) for k in key]
    old = ax.get_legend()
    if old is not None:
        old.remove()
    ax.legend(
        handles=entries,
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        fontsize=FONT - (1 if len(entries) > 24 else 0),
        frameon=False,
        handletextpad=0.5,
        borderaxespad=0.0,
        ncol=1 if len(entries) <= 36 else 2,
    )


def _annotate(
    fig: Any,
    ax: Any,
    points: Sequence[Row],
    xs: Sequence[Any],
    ys: Sequence[float],
    labels: Sequence[str],
    handles: list[Any],
    lines: _Lines,
    numbered: bool,
    max_gap: float | None,
) -> bool:
    """Lay out, then place the labels (numbers keyed in the legend when ``numbered``) at most
    ``max_gap`` pixels from their markers; False if some label found no free position (with
    ``numbered``, the best effort is drawn anyway)."""
    texts = [str(i) for i in range(1, len(points) + 1)] if numbered else list(labels)
    _legend(
        ax, handles, [f"{t}  {label}" for t, label in zip(texts, labels, strict=True)] if numbered else []
    )
    if numbered and len(handles) + len(points) > 36:  # a two-column key: widen so the axes keep their size
        fig.set_size_inches(11.0, fig.get_size_inches()[1])
    fig.tight_layout()
    renderer = fig.canvas.get_renderer()
    display = [tuple(ax.transData.transform((x, y))) for x, y in zip(xs, ys, strict=True)]
    sizes = []
    for text in texts:
        probe = ax.text(0, 0, text, fontsize=FONT)
        box = probe.get_window_extent(renderer)
        sizes.append((box.width + 2, box.height + 1))
        probe.remove()
    radii = [math.sqrt(_REF_SIZE if r.role != "unlearn" else _SIZE) / 2 * DPI / 72 + 1.5 for r in points]
    frame = ax.get_window_extent(renderer)
    area = (frame.x0 + 2, frame.y0 + 2, frame.x1 - 2, frame.y1 - 2)
    placements = place_labels(display, sizes, radii, area, lines.segments(ax), max_gap)
    if placements is None and not numbered:
        return False
    if placements is None:  # too dense even for numbers: beside each point, overlaps possible
        from .labels import Placement

        placements = [Placement(r + w / 2 + 2, 0.0, 2.0) for r, (w, _) in zip(radii, sizes, strict=True)]
    to_points = 72 / DPI
    for x, y, text, place, radius in zip(xs, ys, texts, placements, radii, strict=True):
        arrow = None
        if place.gap > LEADER_GAP:
            arrow = {
                "arrowstyle": "-",
                "color": "0.55",
                "linewidth": 0.6,
                "shrinkA": 0,
                "shrinkB": radius * to_points,
            }
        ax.annotate(
            text,
            (x, y),
            xytext=(place.dx * to_points, place.dy * to_points),
            textcoords="offset points",
            ha="center",
            va="center",
            fontsize=FONT,
            arrowprops=arrow,
            zorder=4,
            annotation_clip=False,
        )
    return True


def scatter_png(rows: Sequence[Row], bench: Benchmark) -> bytes | None:
    """PNG bytes of :func:`scatter_figure`, or None without data."""
    fig = scatter_figure(rows, bench)
    if fig is None:
        return None
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    plt.close(fig)
    return buffer.getvalue()


__all__ = ["point_labels", "scatter_figure", "scatter_png"]
