"""The ``method_args`` contract of the FALCON trainer, with validation.

Every value a user can set is checked here, before any forward pass, and a bad value raises
:class:`FalconConfigError` naming the parameter, the bad value and what would be valid. Checks that
need the model (layer range, regex matches) live in :func:`validate_against_model`.

Defaults follow the paper (arXiv 2502.01472) and its official code (github CharlesJW222/FALCON):
temperature 0.7, steering coefficient 20, retain weight (alpha) 100, conflict weights (0.8, 1.2),
align weights (0.1, 1.9), per-tensor projection, MLP down-projections of layers l*-2..l* trainable,
MI on 200 samples with PCA keeping 95% of the variance and a Gaussian KDE.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

PROJECTIONS = ("per_tensor", "global", "none")
ESTIMATORS = ("kde", "gaussian", "kde_resubstitution")
POOLINGS = ("last", "mean")
DEFAULT_TRAINABLE_TEMPLATE = r"model\.layers\.({layers})\.mlp\.down_proj\.weight"
MIN_MI_SAMPLES = 8


class FalconConfigError(ValueError):
    """A FALCON ``method_args`` value is invalid; the message names the parameter and the value."""


class FalconDataError(ValueError):
    """The train data cannot be used (empty, all padding, no answer tokens, token ids the model lacks).

    The message names the item and field (e.g. ``train_dataset[3]['forget'].input_ids``) and the bad value.
    """


def _bad(name: str, value: Any, expected: str) -> FalconConfigError:
    return FalconConfigError(f"FALCON method_args: invalid {name}={value!r}; expected {expected}")


def _number(name: str, value: Any, *, positive: bool = False, non_negative: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(name, value, "a number")
    value = float(value)
    if not math.isfinite(value):
        raise _bad(name, value, "a finite number")
    if positive and value <= 0:
        raise _bad(name, value, "a number > 0")
    if non_negative and value < 0:
        raise _bad(name, value, "a number >= 0")
    return value


def _integer(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(name, value, f"an integer >= {minimum}")
    if value < minimum:
        raise _bad(name, value, f"an integer >= {minimum}")
    return int(value)


def _choice(name: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise _bad(name, value, f"one of {', '.join(choices)}")
    return str(value)


def _weight_pair(name: str, value: Any) -> tuple[float, float]:
    if isinstance(value, str) or not isinstance(value, Sequence) or len(value) != 2:
        raise _bad(name, value, "a list of two numbers [forget_weight, retain_weight]")
    first = _number(f"{name}[0]", value[0], non_negative=True)
    second = _number(f"{name}[1]", value[1], non_negative=True)
    return first, second


@dataclass(frozen=True)
class MIConfig:
    """Step 1 settings: how activations are sampled and how I(F;R) is estimated per layer."""

    samples: int = 200
    """Forget and retain samples each (per forget domain) drawn from the train dataset."""
    pca_variance: float = 0.95
    """Fraction of the variance PCA keeps before the entropy estimate, in (0, 1]."""
    estimator: str = "kde"
    """``kde`` (Gaussian KDE as the paper, leave-one-out densities), ``kde_resubstitution`` (the
    official code's exact estimator, biased upward in I(F;R); docs/mi.md) or ``gaussian`` (closed
    form 0.5 log det(2 pi e Sigma))."""
    eta: float = 1.0
    """Weight of the pairwise forget-domain term sum_{i<j} I(F_i;F_j) in the multi-domain score."""
    pooling: str = "last"
    """Token pooling of a sample's activation: ``last`` non-pad token (official code) or ``mean``."""
    batch_size: int = 16
    """Samples per forward pass while capturing activations."""

    def __post_init__(self) -> None:
        _integer("mi.samples", self.samples, MIN_MI_SAMPLES)
        pca = _number("mi.pca_variance", self.pca_variance)
        if not 0.0 < pca <= 1.0:
            raise _bad("mi.pca_variance", self.pca_variance, "a fraction in (0, 1]")
        _choice("mi.estimator", self.estimator, ESTIMATORS)
        _number("mi.eta", self.eta, non_negative=True)
        _choice("mi.pooling", self.pooling, POOLINGS)
        _integer("mi.batch_size", self.batch_size, 1)

    @classmethod
    def from_value(cls, value: MIConfig | Mapping[str, Any] | None) -> MIConfig:
        """Build from a mapping (Hydra DictConfig included); unknown keys are an error."""
        if value is None:
            return cls()
        if isinstance(value, MIConfig):
            return value
        if not isinstance(value, Mapping):
            raise _bad("mi", value, f"a mapping with keys {', '.join(cls.__dataclass_fields__)}")
        unknown = sorted(set(value) - set(cls.__dataclass_fields__))
        if unknown:
            raise _bad("mi", dict(value), f"only the keys {', '.join(cls.__dataclass_fields__)} (unknown: {unknown})")
        return cls(**dict(value))


@dataclass(frozen=True)
class FalconConfig:
    """FALCON's ``method_args`` (the names are public API: configs and users set them)."""

    layer: int | str = "auto"
    """Unlearning layer l*: an index into the decoder layers, or ``auto`` for MI-guided selection (Step 1)."""
    trainable_params_regex: tuple[str, ...] | None = None
    """Regexes (``re.fullmatch`` on parameter names); None: MLP down-projections of layers l*-2..l*."""
    temperature: float = 0.7
    """InfoNCE temperature tau (Eq. for L_F)."""
    steering_coeff: float = 20.0
    """Scale of the principal offset vector used as the InfoNCE positive."""
    pov_rank: int = 8
    """K: number of principal directions v_1..v_K of the frozen forget activations."""
    pov_weight: float = 1.0
    """w in H+ = f(r (I - w sum v_i v_i^T), eps); 1 removes the principal subspace from r."""
    pov_noise: float = 0.01
    """eps: standard deviation of the noise added before the nonlinearity f = tanh."""
    retain_weight: float = 100.0
    """Multiplier of the retain loss 1 - cos(updated, frozen) (alpha in the official code)."""
    conflict_weights: tuple[float, float] = (0.8, 1.2)
    """(alpha, beta) on (projected g_F, g_R) when cos(g_F, g_R) < 0."""
    align_weights: tuple[float, float] = (0.1, 1.9)
    """(alpha, beta) on (g_F, g_R) when cos(g_F, g_R) >= 0."""
    projection: str = "per_tensor"
    """``per_tensor`` (official code), ``global`` (one decision on the flattened gradient) or ``none``."""
    mi: MIConfig = field(default_factory=MIConfig)

    def __post_init__(self) -> None:
        layer = self.layer
        if isinstance(layer, str) and layer != "auto":
            if not layer.lstrip("-").isdigit():
                raise _bad("layer", layer, "a layer index (int >= 0) or 'auto'")
            layer = int(layer)
        if not isinstance(layer, str):
            _integer("layer", layer, 0)
        object.__setattr__(self, "layer", layer)

        regex = self.trainable_params_regex
        if regex is not None:
            if isinstance(regex, str):
                regex = (regex,)
            if not isinstance(regex, Sequence) or len(regex) == 0:
                raise _bad("trainable_params_regex", self.trainable_params_regex, "a non-empty list of regexes or null")
            for pattern in regex:
                if not isinstance(pattern, str):
                    raise _bad("trainable_params_regex", pattern, "a regex string")
                try:
                    re.compile(pattern)
                except re.error as err:
                    raise _bad("trainable_params_regex", pattern, f"a valid regex ({err})") from None
            object.__setattr__(self, "trainable_params_regex", tuple(regex))

        _number("temperature", self.temperature, positive=True)
        _number("steering_coeff", self.steering_coeff, positive=True)
        _integer("pov_rank", self.pov_rank, 1)
        _number("pov_weight", self.pov_weight, non_negative=True)
        _number("pov_noise", self.pov_noise, non_negative=True)
        _number("retain_weight", self.retain_weight, non_negative=True)
        object.__setattr__(self, "conflict_weights", _weight_pair("conflict_weights", self.conflict_weights))
        object.__setattr__(self, "align_weights", _weight_pair("align_weights", self.align_weights))
        _choice("projection", self.projection, PROJECTIONS)
        object.__setattr__(self, "mi", MIConfig.from_value(self.mi))

    @classmethod
    def from_method_args(cls, **method_args: Any) -> FalconConfig:
        """Build from host ``method_args``; unknown names are an error that lists the known ones."""
        unknown = sorted(set(method_args) - set(cls.__dataclass_fields__))
        if unknown:
            raise FalconConfigError(
                f"FALCON method_args: unknown argument(s) {unknown}; known: {', '.join(cls.__dataclass_fields__)}"
            )
        return cls(**{k: _plain(v) for k, v in method_args.items()})

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly view (for reports and checkpoints)."""
        out = asdict(self)
        out["trainable_params_regex"] = list(self.trainable_params_regex) if self.trainable_params_regex else None
        out["conflict_weights"] = list(self.conflict_weights)
        out["align_weights"] = list(self.align_weights)
        return out


def _plain(value: Any) -> Any:
    """Turn OmegaConf containers into plain Python (without importing omegaconf)."""
    if hasattr(value, "_content") and hasattr(value, "_get_node"):  # DictConfig / ListConfig
        from omegaconf import OmegaConf

        return OmegaConf.to_container(value, resolve=True)
    return value


def default_trainable_regex(layer: int) -> tuple[str, ...]:
    """The official choice: MLP down-projections of layers l*-2..l* (clamped at layer 0)."""
    layers = "|".join(str(i) for i in range(max(0, layer - 2), layer + 1))
    return (DEFAULT_TRAINABLE_TEMPLATE.format(layers=layers),)
