"""Size presets of the demo: how many facts, how big a model, how many steps, which method settings.

``small`` is the default (the README's first command, a few minutes on 2 CPU cores); ``ci`` is the
reduced size the tests run. Every method gets the same unlearning step budget and batch size.

The method settings were tuned on the ``small`` demo (see docs/cli.md): FALCON at l* = L-2 with the
whole MLP of layers l*-2..l* trainable and a retain weight of 5; ``FALCON-MI`` is FALCON with
``layer: auto`` (Step 1 picks l*) and the core's default trainable tensors, at the same learning rate.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

from .finetune import FinetuneSpec
from .model import TinyModelSpec


@dataclass(frozen=True)
class MethodSpec:
    """One unlearning method's trainer, optimiser settings and ``method_args``."""

    trainer: str
    learning_rate: float
    method_args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MethodSettings:
    """The tuned hyperparameters; :func:`build_methods` turns them into per-method specs for a model."""

    mi_samples: int
    falcon_lr: float
    retain_weight: float
    graddiff_lr: float
    rmu_lr: float
    rmu_steering: float
    rmu_alpha: float = 10.0


@dataclass(frozen=True)
class DemoPreset:
    """Everything a demo run needs besides paths and the seed."""

    n_entities: int
    n_attributes: int
    forget_fraction: float
    model: TinyModelSpec
    finetune: FinetuneSpec
    unlearn_steps: int
    batch_size: int
    max_length: int
    settings: MethodSettings

    def with_steps(self, steps: int) -> DemoPreset:
        """The same preset with another unlearning step budget."""
        return replace(self, unlearn_steps=steps)


def _mlp_regex(layers_path: str, first: int, last: int) -> list[str]:
    ids = "|".join(str(i) for i in range(first, last + 1))
    return [re.escape(layers_path) + rf"\.({ids})\.mlp\..*"]


def build_methods(
    settings: MethodSettings, num_layers: int, layers_path: str = "model.layers"
) -> dict[str, MethodSpec]:
    """Per-method specs for a model with ``num_layers`` decoder layers under ``layers_path``.

    FALCON and RMU work at l* = L-2 (clamped at 0) and train the MLPs of layers l*-2..l*.
    """
    layer = max(0, num_layers - 2)
    trainable = _mlp_regex(layers_path, max(0, layer - 2), layer)
    return {
        "FALCON": MethodSpec(
            "FALCON",
            settings.falcon_lr,
            {
                "layer": layer,
                "trainable_params_regex": trainable,
                "retain_weight": settings.retain_weight,
            },
        ),
        "FALCON-MI": MethodSpec(
            "FALCON",
            settings.falcon_lr,
            {
                "layer": "auto",
                "retain_weight": settings.retain_weight,
                "mi": {"samples": settings.mi_samples},
            },
        ),
        "GradDiff": MethodSpec("GradDiff", settings.graddiff_lr, {"gamma": 1.0, "alpha": 1.0}),
        "RMU": MethodSpec(
            "RMU",
            settings.rmu_lr,
            {
                "layer": layer,
                "trainable_params_regex": trainable,
                "steering_coeff": settings.rmu_steering,
                "alpha": settings.rmu_alpha,
            },
        ),
    }


# Tuned on the small demo (docs/cli.md): per method, the grid point maximising retain_prob - forget_prob.
_TUNED = MethodSettings(
    mi_samples=30, falcon_lr=5e-3, retain_weight=5.0, graddiff_lr=5e-5, rmu_lr=5e-3, rmu_steering=20.0
)

PRESETS: dict[str, DemoPreset] = {
    "small": DemoPreset(
        n_entities=60,
        n_attributes=6,
        forget_fraction=0.1,
        model=TinyModelSpec(num_layers=6, hidden_size=128, intermediate_size=256, num_heads=4),
        finetune=FinetuneSpec(epochs=60, batch_size=32, learning_rate=3e-3),
        unlearn_steps=80,
        batch_size=16,
        max_length=48,
        settings=_TUNED,
    ),
    "ci": DemoPreset(
        n_entities=24,
        n_attributes=4,
        forget_fraction=0.25,
        model=TinyModelSpec(num_layers=4, hidden_size=64, intermediate_size=128, num_heads=4),
        finetune=FinetuneSpec(epochs=80, batch_size=16, learning_rate=3e-3),
        unlearn_steps=40,
        batch_size=8,
        max_length=48,
        settings=replace(_TUNED, mi_samples=24),
    ),
}
