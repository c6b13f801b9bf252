"""Step 1 end to end: layer selection on a model and examples, and its report (JSON + PNG).

:func:`run_mi_selection` captures the pooled activations of every decoder layer once (one forward
pass per batch, :mod:`falcon_plugin.capture`) and scores them with both Step-1 criteria:

* ``separability`` (:mod:`falcon_plugin.separability`): held-out I(H_l; D), l* = argmax;
* ``paper`` (:mod:`falcon_plugin.mi`, Eq. 2-4): paired I(F_l; R_l), l* = argmin.

``mi.criterion`` names the one whose pick is l*; the other is scored from the same activations (it
costs less than one forward pass) so the report shows what both would choose. A failure of the other
criterion is logged and recorded in the report, never fatal.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .activations import find_decoder_layers
from .atomic import atomic_write, atomic_write_json
from .capture import capture_layer_activations
from .config import CRITERIA, MIConfig, check_mi_sample_count
from .data import pad_examples
from .errors import FalconConfigError
from .mi import LayerScore, MIEstimate, score_layers, select_layer
from .separability import (
    ProbeEstimate,
    ProbeSettings,
    SeparabilityScore,
    recommend_layer,
    score_layers_separability,
)

logger = logging.getLogger(__name__)

REPORT_JSON = "mi_report.json"
REPORT_PNG = "mi_report.png"
RULES = {"separability": "argmax", "paper": "argmin"}
"""How each criterion turns its per-layer scores into l*."""
LABELS = {
    "separability": "separability I(H;D) (nats)",
    "paper": "paper I(F;R) (nats)",
}
"""Axis label of each criterion's score."""
DEFAULT_CRITERION = MIConfig().criterion


def probe_settings(config: MIConfig) -> ProbeSettings:
    """The separability probe's settings from ``mi.*`` (folds; the rest are the criterion's defaults)."""
    return ProbeSettings(folds=config.probe_folds)


@dataclass
class CriterionResult:
    """One criterion's per-layer scores and the layer it picks (``error`` set when it could not run)."""

    name: str
    chosen_layer: int | None
    scores: list[Any] = field(default_factory=list)
    """:class:`~falcon_plugin.separability.SeparabilityScore` or :class:`~falcon_plugin.mi.LayerScore`."""
    seconds: float = 0.0
    """Scoring time (reported in the report's ``timings_s``, not in this result's dict)."""
    error: str | None = None

    @property
    def rule(self) -> str:
        return RULES[self.name]

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "chosen_layer": self.chosen_layer,
            "layers": [s.layer for s in self.scores],
            "scores": [s.score for s in self.scores],
            "error": self.error,
            "details": [s.to_dict() for s in self.scores],
        }

    @classmethod
    def from_dict(cls, name: str, data: Mapping[str, Any]) -> CriterionResult:
        details = data.get("details", [])
        if name == "separability":
            scores: list[Any] = [
                SeparabilityScore(
                    d["layer"],
                    d["score"],
                    d["d_prime"],
                    [_probe_estimate(e) for e in d.get("forget_retain", [])],
                    [_probe_estimate(e) for e in d.get("forget_forget", [])],
                )
                for d in details
            ]
        else:
            scores = [
                LayerScore(
                    d["layer"],
                    d["score"],
                    [MIEstimate(**e) for e in d.get("forget_retain", [])],
                    [MIEstimate(**e) for e in d.get("forget_forget", [])],
                )
                for d in details
            ]
        return cls(name, data.get("chosen_layer"), scores, error=data.get("error"))


def _probe_estimate(data: Mapping[str, Any]) -> ProbeEstimate:
    return ProbeEstimate(**{**data, "fold_mi": tuple(data["fold_mi"])})


@dataclass
class MIReport:
    """Step 1's outcome: l* (the pick of ``criterion``) and every criterion's per-layer scores."""

    criterion: str
    chosen_layer: int
    criteria: dict[str, CriterionResult]
    config: dict[str, Any]
    samples: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def scores(self) -> list[Any]:
        """The per-layer scores of the criterion that chose l*."""
        return self.criteria[self.criterion].scores

    def to_dict(self) -> dict[str, Any]:
        return {
            "criterion": self.criterion,
            "rule": RULES[self.criterion],
            "chosen_layer": self.chosen_layer,
            "layers": [s.layer for s in self.scores],
            "scores": [s.score for s in self.scores],
            "criteria": {name: result.to_dict() for name, result in self.criteria.items()},
            "config": self.config,
            "samples": self.samples,
            "timings_s": self.timings,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MIReport:
        """Read :meth:`to_dict`'s output; a report written before the criteria existed is ``paper``'s."""
        if "criteria" in data:
            criterion = data["criterion"]
            criteria = {name: CriterionResult.from_dict(name, d) for name, d in data["criteria"].items()}
        else:
            criterion = "paper"
            criteria = {"paper": CriterionResult.from_dict("paper", data)}
        return cls(
            criterion,
            data["chosen_layer"],
            criteria,
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
        """One panel per criterion (the one that chose l* on top), each with its pick starred."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator

        names = [self.criterion, *(n for n in self.criteria if n != self.criterion)]
        fig, axes = plt.subplots(len(names), 1, figsize=(8, 3.2 * len(names)), sharex=True, squeeze=False)
        min_layer = int(self.config.get("min_layer", 0) or 0)
        for ax, name in zip(axes[:, 0], names, strict=True):
            result = self.criteria[name]
            used = name == self.criterion
            if result.error is not None or not result.scores:
                ax.text(0.5, 0.5, f"{name}: not scored ({result.error})", ha="center", transform=ax.transAxes)
                ax.set_ylabel(LABELS[name])
                continue
            layers = [s.layer for s in result.scores]
            values = [s.score for s in result.scores]
            ax.plot(layers, values, marker="o", color="tab:purple" if used else "tab:gray")
            best = next(s for s in result.scores if s.layer == result.chosen_layer)
            label = f"{result.rule} = {best.layer}" + (" (l*, used)" if used else " (not used)")
            ax.scatter(
                [best.layer],
                [best.score],
                marker="*",
                s=300,
                color="gold" if used else "white",
                edgecolors="black",
                zorder=3,
                label=label,
            )
            if min_layer > 0:
                ax.axvspan(
                    min(layers) - 0.5, min_layer - 0.5, color="0.9", label=f"below min_layer={min_layer}"
                )
            ax.set_ylabel(LABELS[name])
            detail = (
                f"{self.config.get('estimator')}, PCA {self.config.get('pca_variance')}"
                if name == "paper"
                else f"held-out probe, {self.config.get('probe_folds')} folds"
            )
            ax.set_title(f"criterion {name}{' (default)' if name == DEFAULT_CRITERION else ''}: {detail}")
            ax.grid(alpha=0.3)
            ax.legend(loc="best")
        axes[-1, 0].set_xlabel("decoder layer")
        axes[-1, 0].xaxis.set_major_locator(MaxNLocator(integer=True))
        fig.suptitle(f"FALCON layer selection: l* = {self.chosen_layer} by {self.criterion}")
        fig.tight_layout()
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
        plt.close(fig)
        return Path(path)


def _batches(examples: Sequence[Mapping[str, torch.Tensor]], batch_size: int, pad_token_id: int):
    for start in range(0, len(examples), batch_size):
        yield pad_examples(examples[start : start + batch_size], pad_token_id)


def score_criterion(
    name: str,
    forget: Sequence[np.ndarray],
    retain: np.ndarray,
    config: MIConfig,
    layers: Sequence[int] | None = None,
    progress: bool = False,
) -> CriterionResult:
    """Score (L, n, d) activations with criterion ``name`` and pick its layer among those >= ``min_layer``."""
    start = time.perf_counter()
    if name == "separability":
        scores: list[Any] = score_layers_separability(
            forget, retain, probe_settings(config), config.eta, layers=layers, progress=progress
        )
        chosen = recommend_layer(scores, min_layer=config.min_layer)
    elif name == "paper":
        scores = score_layers(
            forget,
            retain,
            config.estimator,
            config.pca_variance,
            config.eta,
            layers=layers,
            progress=progress,
        )
        eligible = [s for s in scores if s.layer >= config.min_layer]
        if not eligible:
            raise FalconConfigError(
                f"FALCON: invalid mi.min_layer={config.min_layer!r}; it leaves no layer "
                f"(scored layers {[s.layer for s in scores]})"
            )
        chosen = select_layer(eligible)
    else:
        raise FalconConfigError(
            f"FALCON: invalid mi.criterion={name!r}; expected one of {', '.join(CRITERIA)}"
        )
    return CriterionResult(name, chosen, scores, time.perf_counter() - start)


def check_mi_inputs(
    model: nn.Module, forget_counts: Sequence[int], retain_count: int, config: MIConfig
) -> None:
    """Everything Step 1 can check before its forward passes: sample counts under the criterion
    (:func:`~falcon_plugin.config.check_mi_sample_count`) and ``mi.min_layer`` against the model."""
    if not forget_counts:
        raise FalconConfigError("FALCON: MI selection needs at least one forget domain")
    for i, count in enumerate(forget_counts):
        check_mi_sample_count(count, f"MI selection: forget domain {i}", config)
    check_mi_sample_count(retain_count, "MI selection: the retain set", config)
    _, layers = find_decoder_layers(model)
    if config.min_layer >= len(layers):
        raise FalconConfigError(
            f"FALCON: invalid mi.min_layer={config.min_layer!r}; the model has {len(layers)} decoder layers "
            f"(valid: 0..{len(layers) - 1})"
        )


def _fallback_criterion(config: MIConfig, criteria: Mapping[str, CriterionResult]) -> str:
    """The criterion whose pick is l*: ``config.criterion``, unless separability has no evidence.

    When no layer's held-out separability is above 0 (the probe cannot tell forget from retain at any
    layer: too few samples, or sets that really look alike), its pick would be a tie-break among noise;
    l* is then the paper criterion's pick, and the report names ``paper`` as the criterion that chose.
    """
    if config.criterion != "separability":
        return config.criterion
    paper = criteria.get("paper")
    if any(s.score > 0 for s in criteria["separability"].scores) or paper is None or paper.error is not None:
        return config.criterion
    logger.warning(
        "FALCON Step 1: no layer's activations tell forget from retain on held-out samples (separability "
        "0 at every layer); l* falls back to the paper criterion's pick, layer %s",
        paper.chosen_layer,
    )
    return "paper"


def run_mi_selection(
    model: nn.Module,
    forget_domains: Sequence[Sequence[Mapping[str, torch.Tensor]]],
    retain: Sequence[Mapping[str, torch.Tensor]],
    config: MIConfig,
    pad_token_id: int = 0,
    progress: bool = True,
) -> MIReport:
    """Capture pooled activations of every layer (one pass per batch), score them with every criterion,
    and take l* from ``config.criterion``.

    ``forget_domains`` holds one list of tokenised examples per forget domain; ``retain`` the retain
    examples. Their counts are checked (:func:`check_mi_inputs`) before any forward pass.
    """
    check_mi_inputs(model, [len(d) for d in forget_domains], len(retain), config)
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
    criteria: dict[str, CriterionResult] = {}
    for name in (config.criterion, *(c for c in CRITERIA if c != config.criterion)):
        try:
            criteria[name] = score_criterion(name, forget_acts, retain_acts, config, progress=progress)
        except ValueError as err:  # FALCON's input errors and numerical failures alike
            if name == config.criterion:
                raise
            logger.warning(
                "FALCON: the %s criterion (reported only) could not score the layers: %s", name, err
            )
            criteria[name] = CriterionResult(name, None, [], 0.0, f"{type(err).__name__}: {err}")
    done = time.perf_counter()
    chosen_by = _fallback_criterion(config, criteria)
    result = criteria[chosen_by]
    assert result.chosen_layer is not None
    for name, other in criteria.items():
        if other.error is None:
            logger.info(
                "FALCON Step 1 %s scores per layer: %s",
                name,
                ", ".join(f"{s.layer}:{s.score:.3f}" for s in other.scores),
            )
    others = ", ".join(
        f"{n} would pick {r.chosen_layer}" for n, r in criteria.items() if n != config.criterion
    )
    logger.info(
        "FALCON Step 1 (criterion %s) selected layer l* = %d (%s)",
        chosen_by,
        result.chosen_layer,
        others,
    )
    return MIReport(
        criterion=chosen_by,
        chosen_layer=result.chosen_layer,
        criteria=criteria,
        config={
            "criterion": config.criterion,
            "estimator": config.estimator,
            "pca_variance": config.pca_variance,
            "eta": config.eta,
            "pooling": config.pooling,
            "probe_folds": config.probe_folds,
            "min_layer": config.min_layer,
        },
        samples={"forget": [len(d) for d in forget_domains], "retain": len(retain)},
        timings={
            "capture": captured - start,
            "estimate": done - captured,
            **{f"estimate_{n}": r.seconds for n, r in criteria.items()},
            "total": done - start,
        },
    )


__all__ = [
    "DEFAULT_CRITERION",
    "LABELS",
    "REPORT_JSON",
    "REPORT_PNG",
    "RULES",
    "CriterionResult",
    "MIReport",
    "check_mi_inputs",
    "probe_settings",
    "run_mi_selection",
    "score_criterion",
]
