"""Step 1 end to end: MI layer selection on a model and examples, and its report (JSON + PNG)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .atomic import atomic_write, atomic_write_json
from .capture import capture_layer_activations
from .config import MIConfig, check_mi_sample_count
from .data import pad_examples
from .mi import LayerScore, score_layers, select_layer

logger = logging.getLogger(__name__)

REPORT_JSON = "mi_report.json"
REPORT_PNG = "mi_report.png"


@dataclass
class MIReport:
    """Per-layer I(F;R) scores and the chosen layer l* = argmin."""

    chosen_layer: int
    scores: list[LayerScore]
    config: dict[str, Any]
    samples: dict[str, int]
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "chosen_layer": self.chosen_layer,
            "layers": [s.layer for s in self.scores],
            "scores": [s.score for s in self.scores],
            "config": self.config,
            "samples": self.samples,
            "timings_s": self.timings,
            "details": [s.to_dict() for s in self.scores],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MIReport:
        from .mi import MIEstimate

        scores = [
            LayerScore(
                d["layer"],
                d["score"],
                [MIEstimate(**e) for e in d.get("forget_retain", [])],
                [MIEstimate(**e) for e in d.get("forget_forget", [])],
            )
            for d in data["details"]
        ]
        return cls(
            data["chosen_layer"],
            scores,
            dict(data["config"]),
            dict(data["samples"]),
            dict(data.get("timings_s", {})),
        )

    def save(self, out_dir: str | Path) -> tuple[Path, Path]:
        """Write ``mi_report.json`` and ``mi_report.png`` into ``out_dir`` (atomically)."""
        out = Path(out_dir)
        json_path = atomic_write_json(out / REPORT_JSON, self.to_dict())
        png_path = out / REPORT_PNG
        self.plot(png_path)
        return json_path, png_path

    def plot(self, path: str | Path) -> Path:
        """Line plot of the score per layer with l* starred."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        layers = [s.layer for s in self.scores]
        values = [s.score for s in self.scores]
        fig, ax = plt.subplots(figsize=(8, 4))
        ax.plot(layers, values, marker="o", color="tab:purple")
        best = next(s for s in self.scores if s.layer == self.chosen_layer)
        ax.scatter(
            [best.layer],
            [best.score],
            marker="*",
            s=300,
            color="gold",
            edgecolors="black",
            zorder=3,
            label=f"l* = {best.layer}",
        )
        ax.set_xlabel("decoder layer")
        ax.set_ylabel("I(F;R) score (nats)")
        ax.set_title(
            f"FALCON layer selection ({self.config.get('estimator')}, PCA {self.config.get('pca_variance')})"
        )
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
        plt.close(fig)
        return Path(path)


def _batches(examples: Sequence[Mapping[str, torch.Tensor]], batch_size: int, pad_token_id: int):
    for start in range(0, len(examples), batch_size):
        yield pad_examples(examples[start : start + batch_size], pad_token_id)


def run_mi_selection(
    model: nn.Module,
    forget_domains: Sequence[Sequence[Mapping[str, torch.Tensor]]],
    retain: Sequence[Mapping[str, torch.Tensor]],
    config: MIConfig,
    pad_token_id: int = 0,
    progress: bool = True,
) -> MIReport:
    """Capture pooled activations of every layer (one pass per batch) and pick l* = argmin score.

    ``forget_domains`` holds one list of tokenised examples per forget domain; ``retain`` the retain
    examples. Each needs at least :data:`~falcon_plugin.config.MIN_MI_SAMPLES` examples.
    """
    for i, domain in enumerate(forget_domains):
        check_mi_sample_count(len(domain), f"MI selection: forget domain {i}")
    check_mi_sample_count(len(retain), "MI selection: the retain set")
    start = time.perf_counter()
    forget_acts = [
        capture_layer_activations(
            model,
            _batches(d, config.batch_size, pad_token_id),
            config.pooling,
            progress,
            f"activations forget[{i}]",
        ).numpy()
        for i, d in enumerate(forget_domains)
    ]
    retain_acts = capture_layer_activations(
        model,
        _batches(retain, config.batch_size, pad_token_id),
        config.pooling,
        progress,
        "activations retain",
    ).numpy()
    captured = time.perf_counter()
    scores = score_layers(
        forget_acts, retain_acts, config.estimator, config.pca_variance, config.eta, progress=progress
    )
    chosen = select_layer(scores)
    done = time.perf_counter()
    logger.info("FALCON MI scores per layer: %s", ", ".join(f"{s.layer}:{s.score:.3f}" for s in scores))
    logger.info("FALCON MI selected layer l* = %d", chosen)
    return MIReport(
        chosen_layer=chosen,
        scores=scores,
        config={
            "estimator": config.estimator,
            "pca_variance": config.pca_variance,
            "eta": config.eta,
            "pooling": config.pooling,
        },
        samples={"forget": [len(d) for d in forget_domains], "retain": len(retain)},  # type: ignore
        timings={"capture": captured - start, "estimate": done - captured, "total": done - start},
    )
