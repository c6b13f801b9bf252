"""The one Pareto-front function (leaderboard tables and plots, the TOFU quality report)."""

from __future__ import annotations

from collections.abc import Sequence


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """For each point (both coordinates to maximise), whether no other point dominates it.

    A point is dominated when another is at least as good in both coordinates and better in one;
    equal points do not dominate each other. Negate a coordinate to minimise it.
    """
    return [
        not any(
            o[0] >= p[0] and o[1] >= p[1] and (o[0] > p[0] or o[1] > p[1])
            for j, o in enumerate(points)
            if j != i
        )
        for i, p in enumerate(points)
    ]
