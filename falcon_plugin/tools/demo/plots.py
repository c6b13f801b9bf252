"""The demo's forget-vs-retain scatter plot."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from falcon_plugin.atomic import atomic_write


def forget_retain_scatter(rows: Sequence[dict[str, Any]], path: str | Path, reference: str) -> Path:
    """Two panels (answer probability, ROUGE-L recall): forget on x (lower better), retain on y (higher).

    ``rows`` are result dicts with ``method``, ``forget_prob``, ``retain_prob``, ``forget_rougeL``,
    ``retain_rougeL``; the row named ``reference`` is drawn as a star.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    panels = (("prob", "answer probability"), ("rougeL", "ROUGE-L recall"))
    for ax, (key, title) in zip(axes, panels, strict=True):
        for i, row in enumerate(rows):
            is_ref = row["method"] == reference
            ax.scatter(
                row[f"forget_{key}"],
                row[f"retain_{key}"],
                s=260 if is_ref else 90,
                marker="*" if is_ref else "o",
                color="black" if is_ref else f"C{i}",
                label=row["method"],
                zorder=3,
                alpha=0.85,
            )
        ax.set_xlim(-0.04, 1.04)
        ax.set_ylim(-0.04, 1.04)
        ax.set_xlabel(f"forget {title} (lower is better)")
        ax.set_ylabel(f"retain {title} (higher is better)")
        ax.set_title(title + " (ideal: top-left)")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return Path(path)
