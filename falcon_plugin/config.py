"""The ``method_args`` contract of the FALCON trainer: names, defaults, documentation and validation.

Every value a user can set is checked here, before any forward pass, and a bad value raises
:class:`~falcon_plugin.errors.FalconConfigError` naming the parameter, the bad value and what would
be valid. Checks that need the model (layer range, regex matches) live in
:func:`falcon_plugin.validation.validate_against_model`.

This module is the one home of each user-facing option: the ``help`` metadata of each dataclass
field is its documentation (the README's ``method_args`` table and ``configs/trainer/FALCON.yaml``
are checked against it by ``tests/test_method_args.py``), and :meth:`FalconConfig.from_method_args`
is the one rule for unknown names, in standalone and host use alike.

Defaults follow the paper (arXiv 2502.01472) and its official code (github CharlesJW222/FALCON):
temperature 0.7, steering coefficient 20, retain weight (alpha) 100, conflict weights (0.8, 1.2),
align weights (0.1, 1.9), per-tensor projection, MLP down-projections of layers l*-2..l* trainable,
MI on 200 samples with PCA keeping 95% of the variance and a Gaussian KDE (``mi.criterion: paper``).
Step 1's default criterion is not the paper's: ``separability`` (:mod:`falcon_plugin.separability`,
docs/mi.md "Criteria") replaces the paired I(F;R), whose estimate on independent forget and retain
samples is the estimator's dimension-dependent bias.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .errors import FalconConfigError, FalconDataError

logger = logging.getLogger(__name__)

PROJECTIONS = ("per_tensor", "global", "none")
CRITERIA = ("separability", "paper")
"""Step-1 criteria (``mi.criterion``): held-out I(H;D), argmax (default), or the paper's I(F;R), argmin."""
ESTIMATORS = ("kde", "gaussian", "kde_resubstitution")
POOLINGS = ("last", "mean")
MIN_MI_SAMPLES = 8
"""Fewest samples per set Step 1 accepts whatever the criterion (PCA keeps at most n/2 components; a KDE
needs a few samples per dimension); ``separability`` also needs ``mi.probe_folds`` per set
(:func:`min_mi_samples`). ``MIConfig.samples`` is checked against it, :func:`check_mi_sample_count`
checks the samples actually available."""
DEFAULT_TRAINABLE_BELOW = 2
"""The default trainable tensors span layers l*-2..l* (the official code's choice)."""
TRAINABLE_MODULES = {"mlp": r"mlp\.[^.]+\.weight", "down_proj": r"mlp\.down_proj\.weight"}
"""Which weights of layers l*-2..l* train by default: every MLP projection (``mlp``: gate, up and down
in Llama-family models) or the official code's MLP down-projections only (``down_proj``)."""
OFFICIAL_TRAINABLE_MODULES = "down_proj"
"""The official code's choice (and RMU's): the MLP down-projections."""


def default_trainable_layers(layer: int) -> range:
    """Decoder layers whose tensors FALCON trains by default: l*-2..l*, clamped at layer 0."""
    return range(max(0, layer - DEFAULT_TRAINABLE_BELOW), layer + 1)


def default_trainable_regex(
    layer: int, layers_path: str = "model.layers", modules: str = "mlp"
) -> tuple[str, ...]:
    """The default trainable tensors: the ``modules`` weights (:data:`TRAINABLE_MODULES`) of layers l*-2..l*.

    ``layers_path`` is the dotted name of the model's decoder layers (``model.layers`` for Llama,
    Mistral, Qwen; what :func:`falcon_plugin.activations.find_decoder_layers` returns).
    """
    if modules not in TRAINABLE_MODULES:
        raise _bad("trainable_modules", modules, f"one of {', '.join(TRAINABLE_MODULES)}")
    layers = "|".join(str(i) for i in default_trainable_layers(layer))
    return (rf"{re.escape(layers_path)}\.({layers})\.{TRAINABLE_MODULES[modules]}",)


def min_mi_samples(criterion: str, probe_folds: int) -> int:
    """Fewest samples per set Step 1 accepts under ``criterion`` (``mi.criterion``, ``mi.probe_folds``).

    :data:`MIN_MI_SAMPLES` for every criterion; with ``separability`` also ``probe_folds``, since every
    set is split into that many stratified folds (what
    :func:`falcon_plugin.separability.check_sample_counts` requires).
    """
    if criterion == "separability":
        return max(MIN_MI_SAMPLES, probe_folds)
    return MIN_MI_SAMPLES


def check_mi_sample_count(count: int, what: str, config: MIConfig | None = None) -> None:
    """Raise :class:`FalconConfigError` when ``what`` (a sample set for Step 1) has fewer samples than
    ``config``'s criterion needs (:func:`min_mi_samples`); cheap, so it runs before any forward pass."""
    config = config or MIConfig()
    minimum = min_mi_samples(config.criterion, config.probe_folds)
    if count < minimum:
        why = (
            f" (criterion separability, mi.probe_folds={config.probe_folds})"
            if config.criterion == "separability" and minimum > MIN_MI_SAMPLES
            else ""
        )
        raise FalconConfigError(
            f"FALCON: {what} has {count} samples; MI layer selection (Step 1) needs >= {minimum}{why}"
        )


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


def _option(default: Any = None, help: str = "", *, factory: Any = None, choices: Sequence[str] = ()) -> Any:
    """A dataclass field that carries its documentation (``help``) and, for a choice, its ``choices``."""
    metadata = {"help": help, "choices": tuple(choices)}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class MIConfig:
    """Step 1 settings: how activations are sampled, which criterion scores each layer and how.

    ``criterion`` picks l*; the other criterion is scored too (from the same activations, for the
    report). ``pca_variance`` and ``estimator`` are the paper's I(F;R) (Eq. 2-4), ``probe_folds`` the
    separability estimate; ``samples``, ``eta``, ``pooling``, ``batch_size`` and ``min_layer`` apply to both.
    """

    criterion: str = _option(
        "separability",
        "Step-1 criterion that picks l*: `separability` (held-out I(H;D) of a layer's activation and the "
        "set it came from, argmax) or `paper` (the paper's paired I(F;R), argmin; on independent forget and "
        "retain samples it favours shallow layers) — both are reported, see [docs/mi.md](docs/mi.md)",
        choices=CRITERIA,
    )
    samples: int = _option(
        200, "forget and retain samples drawn (seeded by `args.seed`) from the train dataset"
    )
    pca_variance: float = _option(0.95, "variance fraction PCA keeps, in (0, 1] (criterion `paper`)")
    estimator: str = _option(
        "kde",
        "`kde` (leave-one-out), `kde_resubstitution` (the official code's), `gaussian` (criterion `paper`) — "
        "see [docs/mi.md](docs/mi.md)",
        choices=ESTIMATORS,
    )
    eta: float = _option(1.0, "weight of the pairwise forget-domain term")
    pooling: str = _option(
        "last",
        "`last` answer position (the last non-pad token without labels; official) or `mean` over them",
        choices=POOLINGS,
    )
    batch_size: int = _option(16, "samples per forward pass while capturing")
    probe_folds: int = _option(
        5, "held-out folds of the separability probe (criterion `separability`; every set needs >= this many)"
    )
    min_layer: int = _option(
        0, "shallowest decoder layer Step 1 may choose (both criteria; e.g. to skip surface-token layers)"
    )

    def __post_init__(self) -> None:
        _choice("mi.criterion", self.criterion, CRITERIA)
        _integer("mi.probe_folds", self.probe_folds, 2)
        minimum = min_mi_samples(self.criterion, self.probe_folds)
        if not isinstance(self.samples, bool) and isinstance(self.samples, int) and self.samples < minimum:
            folds = f" (mi.probe_folds={self.probe_folds} held-out folds)" if minimum > MIN_MI_SAMPLES else ""
            raise _bad("mi.samples", self.samples, f"an integer >= {minimum}{folds}")
        _integer("mi.samples", self.samples, minimum)
        pca = _number("mi.pca_variance", self.pca_variance)
        if not 0.0 < pca <= 1.0:
            raise _bad("mi.pca_variance", self.pca_variance, "a fraction in (0, 1]")
        _choice("mi.estimator", self.estimator, ESTIMATORS)
        _number("mi.eta", self.eta, non_negative=True)
        _choice("mi.pooling", self.pooling, POOLINGS)
        _integer("mi.batch_size", self.batch_size, 1)
        _integer("mi.min_layer", self.min_layer, 0)

    @classmethod
    def from_value(cls, value: MIConfig | Mapping[str, Any] | None) -> MIConfig:
        """Build from a mapping (Hydra DictConfig included); unknown keys are an error."""
        if value is None:
            return cls()
        if isinstance(value, MIConfig):
            return value
        known = [f.name for f in fields(cls)]
        if not isinstance(value, Mapping):
            raise _bad("mi", value, f"a mapping with keys {', '.join(known)}")
        unknown = sorted(set(value) - set(known))
        if unknown:
            raise _bad("mi", dict(value), f"only the keys {', '.join(known)} (unknown: {unknown})")
        return cls(**dict(value))


@dataclass(frozen=True)
class FalconConfig:
    """FALCON's ``method_args`` (the names are public API: configs and users set them).

    Paper notation: ``temperature`` is tau of the InfoNCE forget loss L_F (Eq. 6); ``pov_rank`` K,
    ``pov_weight`` w and ``pov_noise`` eps define H+ = f(r (I - w sum_i v_i v_i^T), eps) (Sec. 3.2);
    ``conflict_weights`` / ``align_weights`` are the (alpha, beta) of the gradient projection.
    """

    layer: int | str = _option(
        "auto",
        "unlearning layer l* (index into the decoder layers), or `auto` for Step 1 at train start "
        "(writes `mi_report.json` + `mi_report.png` into the run's output dir)",
    )
    trainable_params_regex: tuple[str, ...] | None = _option(
        None,
        "list of regexes (`re.fullmatch` on parameter names); `null` = the `trainable_modules` weights of "
        "decoder layers l*-2..l*. Must match only tensors of decoder layers ≤ l*",
    )
    trainable_modules: str = _option(
        "mlp",
        "default trainable tensors of layers l*-2..l* when `trainable_params_regex` is null: "
        "`mlp` (every MLP weight; unlearns a real LM, docs/real_lm.md) or `down_proj` (the official code's; "
        "what the TOFU experiment trains, docs/results/README.md)",
        choices=tuple(TRAINABLE_MODULES),
    )
    temperature: float = _option(0.7, "InfoNCE temperature τ (official code)")
    forget_loss_floor: float | None = _option(
        None,
        "per-token floor of the InfoNCE forget loss: a token whose term is below it stops pushing, so "
        "forgetting converges at a set depth instead of where the step budget ends; `null` = the paper's "
        "loss (no floor)",
    )
    sam_rho: float | None = _option(
        None,
        "radius ρ of a sharpness-aware forget gradient (g_F taken at θ + ρ g_F/‖g_F‖ over the trainable "
        "tensors; Fan et al. 2025), for robustness to relearning; `null` = the paper's gradient. "
        "Not under ZeRO-3",
    )
    steering_coeff: float = _option(
        20.0,
        "scale of the POV positive (official code; a cosine InfoNCE is scale-invariant, kept for parity)",
    )
    pov_rank: int = _option(8, "K, number of principal directions")
    pov_weight: float = _option(1.0, "w; 1 removes r's component in the principal subspace")
    pov_noise: float = _option(0.01, "ε, noise standard deviation before tanh (official code's 0.01)")
    pov_seed: int | None = _option(
        None,
        "seed of the POV's draws (its forget sample, r and the noise); `null` = the Trainer's `args.seed`. "
        "Set it to vary the POV with the data order fixed, or the data order with the POV fixed",
    )
    retain_weight: float = _option(
        10.0, "multiplier of the retain loss (the official `alpha` is 100; 10 measured in docs/real_lm.md)"
    )
    conflict_weights: tuple[float, float] = _option((0.8, 1.2), "(α, β) when cos(g_F, g_R) < 0 (official)")
    align_weights: tuple[float, float] = _option((0.1, 1.9), "(α, β) otherwise (official)")
    projection: str = _option(
        "per_tensor",
        "`per_tensor` (official), `global` (one decision on the flattened gradient) or `none` (g_F + g_R)",
        choices=PROJECTIONS,
    )
    mi: MIConfig = _option(
        help="Step 1 settings, used when `layer: auto` (the `mi.*` rows)", factory=MIConfig
    )

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
                raise _bad(
                    "trainable_params_regex",
                    self.trainable_params_regex,
                    "a non-empty list of regexes or null",
                )
            for pattern in regex:
                if not isinstance(pattern, str):
                    raise _bad("trainable_params_regex", pattern, "a regex string")
                try:
                    re.compile(pattern)
                except re.error as err:
                    raise _bad("trainable_params_regex", pattern, f"a valid regex ({err})") from None
            object.__setattr__(self, "trainable_params_regex", tuple(regex))

        _number("temperature", self.temperature, positive=True)
        if self.forget_loss_floor is not None:
            _number("forget_loss_floor", self.forget_loss_floor, positive=True)
        if self.sam_rho is not None:
            _number("sam_rho", self.sam_rho, positive=True)
        _number("steering_coeff", self.steering_coeff, positive=True)
        _integer("pov_rank", self.pov_rank, 1)
        _number("pov_weight", self.pov_weight, non_negative=True)
        _number("pov_noise", self.pov_noise, non_negative=True)
        if self.pov_seed is not None:
            _integer("pov_seed", self.pov_seed, 0)
        _number("retain_weight", self.retain_weight, non_negative=True)
        object.__setattr__(self, "conflict_weights", _weight_pair("conflict_weights", self.conflict_weights))
        object.__setattr__(self, "align_weights", _weight_pair("align_weights", self.align_weights))
        _choice("projection", self.projection, PROJECTIONS)
        _choice("trainable_modules", self.trainable_modules, tuple(TRAINABLE_MODULES))
        object.__setattr__(self, "mi", MIConfig.from_value(self.mi))

    @classmethod
    def from_method_args(cls, **method_args: Any) -> FalconConfig:
        """Build from ``method_args``: the one rule for their names, in standalone and host use.

        Hydra containers (DictConfig / ListConfig) become plain values. A name FALCON does not know is
        dropped when its value is null (logged): Hydra cannot delete a key an experiment inherits
        (e.g. RMU's ``gamma`` in the host's WMDP experiment), only null it. Any other unknown name is a
        :class:`FalconConfigError` naming it and listing the valid names.
        """
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(method_args) - set(known))
        nulled = [k for k in unknown if method_args[k] is None]
        if nulled:
            logger.info("FALCON: ignoring null method_args %s", nulled)
        rejected = [k for k in unknown if k not in nulled]
        if rejected:
            raise FalconConfigError(
                f"FALCON method_args: unknown argument(s) {rejected}; known: {', '.join(known)} "
                "(an experiment written for another method may set them: override them with null)"
            )
        return cls(**{k: _plain(v) for k, v in method_args.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly view (for reports and checkpoints)."""
        out = asdict(self)
        out["trainable_params_regex"] = (
            list(self.trainable_params_regex) if self.trainable_params_regex else None
        )
        out["conflict_weights"] = list(self.conflict_weights)
        out["align_weights"] = list(self.align_weights)
        return out


def _plain(value: Any) -> Any:
    """Turn OmegaConf containers into plain Python (without importing omegaconf)."""
    if hasattr(value, "_content") and hasattr(value, "_get_node"):  # DictConfig / ListConfig
        from omegaconf import OmegaConf

        return OmegaConf.to_container(value, resolve=True)
    return value


def split_method_args(
    kwargs: Mapping[str, Any], trainer_parameters: Collection[str]
) -> tuple[FalconConfig, dict[str, Any]]:
    """Split a trainer constructor's keywords into FALCON's config and the Trainer's own keywords.

    FALCON's field names come first; a name the trainer class accepts (``trainer_parameters``) goes
    to the Trainer; every other name is an unknown method_arg for :meth:`FalconConfig.from_method_args`
    (dropped if null, an error otherwise), so a typo fails here, before the Trainer is built.
    """
    known = {f.name for f in fields(FalconConfig)}
    method_args = {k: v for k, v in kwargs.items() if k in known or k not in trainer_parameters}
    trainer_kwargs = {k: v for k, v in kwargs.items() if k not in method_args}
    return FalconConfig.from_method_args(**method_args), trainer_kwargs


def method_args_docs() -> list[tuple[str, Any, str, tuple[str, ...]]]:
    """(name, default, help, choices) of every method_arg, ``mi.*`` flattened, in declaration order."""
    rows: list[tuple[str, Any, str, tuple[str, ...]]] = []
    for option in fields(FalconConfig):
        if option.name == "mi":
            for sub in fields(MIConfig):
                rows.append((f"mi.{sub.name}", sub.default, sub.metadata["help"], sub.metadata["choices"]))
        else:
            rows.append((option.name, option.default, option.metadata["help"], option.metadata["choices"]))
    return rows


__all__ = [
    "DEFAULT_TRAINABLE_BELOW",
    "CRITERIA",
    "ESTIMATORS",
    "MIN_MI_SAMPLES",
    "POOLINGS",
    "PROJECTIONS",
    "FalconConfig",
    "FalconConfigError",
    "FalconDataError",
    "MIConfig",
    "check_mi_sample_count",
    "default_trainable_layers",
    "default_trainable_regex",
    "OFFICIAL_TRAINABLE_MODULES",
    "TRAINABLE_MODULES",
    "method_args_docs",
    "min_mi_samples",
    "split_method_args",
]
