"""Step 1, criterion ``separability``: how much a layer's activation tells forget from retain samples.

The paper's criterion (:mod:`falcon_plugin.mi`, Eq. 2-4) scores a layer by I(F;R) with the i-th forget
paired with the i-th retain sample. Forget and retain samples are independent draws, so that I(F;R) is 0
at every layer and the estimate is the estimator's bias, which grows with the number of PCA components
a layer keeps (docs/mi.md, "Criteria"). This module scores what the paper's Sec. 3.1 asks for, how
entangled forget and retain are at a layer, with a quantity that is well-posed for unpaired samples:

    I(H_l; D),   D in {forget, retain} the set a sample came from, H_l its pooled activation at layer l,

which equals the pi-weighted Jensen-Shannon divergence between the two activation distributions and
lies in [0, H(D)] nats (H(D) = ln 2 for equal set sizes). 0: the layer cannot tell the sets apart
(fully entangled); H(D): it separates them perfectly.

Which layer: the argmax. FALCON unlearns where forget and retain knowledge are least entangled, so that
steering the forget activations away (the principal offset vectors, Step 2) moves as little of the
retain activations as possible; the layer whose activations tell the two sets apart best is that layer.
The paper's argmin of I(F;R) aims at the same thing: low mutual dependence, low entanglement.

Estimator (held-out, so it has no upward dimension artifact). Per layer the activations of all sets
are standardised per coordinate and projected on their top ``max_components`` principal components
(label-free, fitted on all samples; the same number of components at every layer gives every layer's
probe the same capacity), rescaled to a mean component variance of 1. For each pair of sets an
L2-regularised logistic-regression probe (scikit-learn) is fitted on ``folds - 1`` stratified folds and
scored on the held-out fold; with CE the held-out cross-entropy of the probe and CE_0 that of the
training folds' class prior (= H(D) for balanced folds),

    I_hat = max(0, CE_0 - CE).

A held-out cross-entropy is never below the true H(D | H) in expectation, so I_hat is a lower bound on
I(H;D) up to sampling noise: overfitting (more dimensions, fewer samples) pushes it down, never up, and
two samples from one distribution give I_hat = 0 after the clip whatever their dimension.

Ties. I(H;D) saturates at H(D) once a layer separates the sets perfectly, so several layers can tie
near the maximum. :func:`recommend_layer` treats the layers within ``tolerance`` (relative) of the best
score as tied and picks the one with the largest held-out discriminability d' (the separation of the
probe's held-out logits in pooled standard deviations, which does not saturate), then the shallowest.
``min_layer`` excludes shallow layers whose separability is surface-level (with ``mean`` pooling,
token identity already separates different authors at layer 0; see docs/mi.md).

Several forget domains F_1..F_k, mirroring the paper's sum_i I(F_i;R) + eta sum_{i<j} I(F_i;F_j):

    score_l = mean_i I_hat(F_i vs R) + eta * mean_{i<j} I_hat(F_i vs F_j)

(means, so the score keeps the [0, H(D)] scale of one pair; the forget-forget term rewards layers where
the forget domains are also disentangled from each other, as the paper's penalty on I(F_i;F_j) does).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from itertools import combinations

import numpy as np
from scipy.linalg import eigh
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from threadpoolctl import threadpool_limits

from .errors import SeparabilityInputError

logger = logging.getLogger(__name__)

CRITERION = "separability"
"""The name this criterion goes by (``mi.criterion``); the paper's I(F;R) is ``paper``."""


@dataclass(frozen=True)
class ProbeSettings:
    """Knobs of the held-out probe; validated on construction."""

    folds: int = 5
    """Stratified cross-validation folds: every set needs at least this many samples."""
    C: float = 0.1
    """Inverse L2 strength of the logistic-regression probe (scikit-learn's ``C``; features have mean
    component variance 1). Smaller: fewer false separations from noise, a looser lower bound."""
    max_components: int = 32
    """Principal components kept per layer (fewer when a layer has fewer samples or dimensions)."""
    seed: int = 0
    """Seed of the fold assignment (the only randomness): same seed and inputs, same scores."""

    def __post_init__(self) -> None:
        if isinstance(self.folds, bool) or not isinstance(self.folds, int) or self.folds < 2:
            raise SeparabilityInputError(
                f"separability: invalid folds={self.folds!r}; expected an integer >= 2"
            )
        if (
            isinstance(self.C, bool)
            or not isinstance(self.C, int | float)
            or not (math.isfinite(self.C) and self.C > 0)
        ):
            raise SeparabilityInputError(f"separability: invalid C={self.C!r}; expected a finite number > 0")
        if (
            isinstance(self.max_components, bool)
            or not isinstance(self.max_components, int)
            or self.max_components < 1
        ):
            raise SeparabilityInputError(
                f"separability: invalid max_components={self.max_components!r}; expected an integer >= 1"
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise SeparabilityInputError(f"separability: invalid seed={self.seed!r}; expected an integer")


@dataclass(frozen=True)
class ProbeEstimate:
    """Held-out I(H; D) between two sets at one layer (nats) and what it is made of."""

    mi: float
    """max(0, raw): the score."""
    raw: float
    """CE_0 - CE before the clip (negative: the probe did worse than the prior)."""
    entropy: float
    """H(D) of the two sets' sizes: the most ``mi`` can be, up to fold rounding (ln 2 for equal sizes)."""
    d_prime: float
    """Held-out discriminability: mean logit difference of the two sets over their pooled sd."""
    fold_mi: tuple[float, ...]
    """CE_0 - CE on each held-out fold (their spread is the estimate's noise)."""
    components: int
    """Features the probe saw (principal components kept)."""

    @property
    def fraction(self) -> float:
        """mi / H(D) in [0, 1]: comparable across set sizes."""
        return self.mi / self.entropy if self.entropy > 0 else 0.0


@dataclass
class SeparabilityScore:
    """One layer's separability score (higher: forget and retain less entangled) and its terms."""

    layer: int
    score: float
    d_prime: float
    forget_retain: list[ProbeEstimate] = field(default_factory=list)
    forget_forget: list[ProbeEstimate] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "layer": self.layer,
            "score": self.score,
            "d_prime": self.d_prime,
            "forget_retain": [asdict(e) for e in self.forget_retain],
            "forget_forget": [asdict(e) for e in self.forget_forget],
        }


# ------------------------------------------------------------------------------------------- input checks
def check_sample_counts(
    forget_counts: Sequence[int], retain_count: int, settings: ProbeSettings | None = None
) -> None:
    """Raise :class:`SeparabilityInputError` unless every set can be split into ``settings.folds`` folds.

    Cheap and model-free: call it before capturing any activation.
    """
    folds = (settings or ProbeSettings()).folds
    if len(forget_counts) == 0:
        raise SeparabilityInputError("separability: no forget domain given; expected at least one")
    named = [(f"forget domain {i}", c) for i, c in enumerate(forget_counts)] + [("retain set", retain_count)]
    for what, count in named:
        if count == 0:
            raise SeparabilityInputError(f"separability: {what} is empty (0 samples)")
        if count < folds:
            raise SeparabilityInputError(
                f"separability: {what} has {count} samples; "
                f"the held-out split (folds={folds}) needs >= {folds}"
            )


def _check_activations(forget: Sequence[np.ndarray], retain: np.ndarray, settings: ProbeSettings) -> None:
    arrays = [(f"forget domain {i}", np.asarray(f)) for i, f in enumerate(forget)] + [
        ("retain set", np.asarray(retain))
    ]
    if len(arrays) == 1:
        raise SeparabilityInputError("separability: no forget domain given; expected at least one")
    for what, a in arrays:
        if a.ndim != 3:
            raise SeparabilityInputError(
                f"separability: {what} activations have shape {a.shape}; expected (layers, samples, dim)"
            )
    layers, dim = arrays[-1][1].shape[0], arrays[-1][1].shape[2]
    if layers == 0 or dim == 0:
        raise SeparabilityInputError(
            f"separability: retain activations have shape {arrays[-1][1].shape}; "
            "expected at least one layer and one dimension"
        )
    for what, a in arrays[:-1]:
        if a.shape[0] != layers:
            raise SeparabilityInputError(
                f"separability: {what} has {a.shape[0]} layers, the retain set has {layers}"
            )
        if a.shape[2] != dim:
            raise SeparabilityInputError(
                f"separability: {what} has dim {a.shape[2]}, the retain set has dim {dim}"
            )
    check_sample_counts([a.shape[1] for _, a in arrays[:-1]], arrays[-1][1].shape[1], settings)
    for what, a in arrays:
        if not np.isfinite(a).all():
            raise SeparabilityInputError(f"separability: {what} activations contain NaN or inf")


# ------------------------------------------------------------------------------------------- estimator
def probe_features(x: np.ndarray, max_components: int) -> np.ndarray:
    """(n, d) activations -> (n, k) probe features, k <= max_components, mean component variance 1.

    Each coordinate is centred and divided by its standard deviation (constant coordinates dropped), then
    projected on the top-k principal components (eigenvectors of the n x n Gram or d x d scatter matrix,
    whichever is smaller), k = min(max_components, d, n - 1).
    """
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    x = x - x.mean(axis=0)
    sd = x.std(axis=0)
    keep = sd > 1e-8 * sd.max() if sd.size and sd.max() > 0 else np.zeros(sd.shape, bool)
    if not keep.any():
        return np.zeros((n, 1))
    z = x[:, keep] / sd[keep]
    d = z.shape[1]
    k = max(1, min(max_components, d, n - 1))
    if k < d:
        if n <= d:  # eigenvectors of the Gram matrix z z^T are the PC scores up to scale
            values, vectors = eigh(z @ z.T, subset_by_index=[n - k, n - 1])
            z = vectors[:, ::-1] * np.sqrt(np.maximum(values[::-1], 0.0))
        else:
            values, vectors = eigh(z.T @ z, subset_by_index=[d - k, d - 1])
            z = z @ vectors[:, ::-1]
    scale = math.sqrt(float(np.mean(np.sum(z * z, axis=0))) / n)
    return z / scale if scale > 0 else z


def _log_prior(y: np.ndarray, prior: float) -> np.ndarray:
    return np.where(y == 1, math.log(prior), math.log1p(-prior))


def _binary_entropy(p: float) -> float:
    return 0.0 if p <= 0 or p >= 1 else -(p * math.log(p) + (1 - p) * math.log1p(-p))


def _probe(features: np.ndarray, y: np.ndarray, settings: ProbeSettings) -> ProbeEstimate:
    """Held-out I_hat(features; y) for a binary label y (1: first set, 0: second set)."""
    folds = StratifiedKFold(n_splits=settings.folds, shuffle=True, random_state=settings.seed)
    gain = np.empty(len(y))
    logits = np.empty(len(y))
    fold_mi = []
    for train, test in folds.split(features, y):
        probe = LogisticRegression(C=settings.C, max_iter=1000).fit(features[train], y[train])
        z = probe.decision_function(features[test])
        cross_entropy = np.logaddexp(0.0, np.where(y[test] == 1, -z, z))  # -log p(y | h), stable
        gain[test] = -_log_prior(y[test], float(y[train].mean())) - cross_entropy  # CE_0 - CE
        logits[test] = z
        fold_mi.append(float(gain[test].mean()))
    raw = float(gain.mean())
    first, second = logits[y == 1], logits[y == 0]
    spread = math.sqrt((first.var() + second.var()) / 2.0)
    d_prime = float((first.mean() - second.mean()) / spread) if spread > 1e-12 else 0.0
    return ProbeEstimate(
        mi=max(0.0, raw),
        raw=raw,
        entropy=_binary_entropy(float(y.mean())),
        d_prime=d_prime,
        fold_mi=tuple(fold_mi),
        components=int(features.shape[1]),
    )


def separability(a: np.ndarray, b: np.ndarray, settings: ProbeSettings | None = None) -> ProbeEstimate:
    """Held-out I(H; D) between samples ``a`` (n_a, d) and ``b`` (n_b, d) of one layer (unpaired)."""
    settings = settings or ProbeSettings()
    scores = score_layers_separability([np.asarray(a)[None]], np.asarray(b)[None], settings)
    return scores[0].forget_retain[0]


def _layer_score(
    layer: int, forget: Sequence[np.ndarray], retain: np.ndarray, settings: ProbeSettings, eta: float
) -> SeparabilityScore:
    sets = [*forget, retain]
    features = probe_features(np.concatenate(sets), settings.max_components)
    bounds = np.cumsum([0] + [len(s) for s in sets])
    parts = [features[bounds[i] : bounds[i + 1]] for i in range(len(sets))]

    def pair(i: int, j: int) -> ProbeEstimate:
        y = np.concatenate([np.ones(len(parts[i]), int), np.zeros(len(parts[j]), int)])
        return _probe(np.concatenate([parts[i], parts[j]]), y, settings)

    retain_index = len(sets) - 1
    fr = [pair(i, retain_index) for i in range(len(forget))]
    ff = [pair(i, j) for i, j in combinations(range(len(forget)), 2)]

    def aggregate(values_fr: list[float], values_ff: list[float]) -> float:
        total = float(np.mean(values_fr))
        return total + eta * float(np.mean(values_ff)) if values_ff else total

    score = aggregate([e.mi for e in fr], [e.mi for e in ff])
    d_prime = aggregate([e.d_prime for e in fr], [e.d_prime for e in ff])
    return SeparabilityScore(layer, score, d_prime, fr, ff)


def score_layers_separability(
    forget: Sequence[np.ndarray],
    retain: np.ndarray,
    settings: ProbeSettings | None = None,
    eta: float = 1.0,
    layers: Sequence[int] | None = None,
    progress: bool = False,
) -> list[SeparabilityScore]:
    """Score every layer: each forget domain is (L, n_i, d), the retain set (L, n_r, d); samples unpaired.

    ``layers`` names the L layers (default 0..L-1). All input is checked before any layer is scored.
    """
    settings = settings or ProbeSettings()
    if isinstance(eta, bool) or not isinstance(eta, int | float) or not (math.isfinite(eta) and eta >= 0):
        raise SeparabilityInputError(f"separability: invalid eta={eta!r}; expected a finite number >= 0")
    _check_activations(forget, retain, settings)
    n_layers = np.asarray(retain).shape[0]
    layer_ids = list(range(n_layers)) if layers is None else [int(i) for i in layers]
    if len(layer_ids) != n_layers:
        raise SeparabilityInputError(
            f"separability: layers={list(layers or [])!r} names {len(layer_ids)} layers; "
            f"the activations have {n_layers}"
        )
    iterator = range(n_layers)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc="separability per layer", unit="layer")
    scores = []
    # Small matrices: a multi-threaded BLAS only adds synchronisation (see falcon_plugin.mi.score_layers).
    with threadpool_limits(limits=1, user_api="blas"):
        for idx in iterator:
            layer_forget = [np.asarray(f[idx]) for f in forget]
            scores.append(
                _layer_score(layer_ids[idx], layer_forget, np.asarray(retain[idx]), settings, float(eta))
            )
    logger.debug("separability per layer: %s", ", ".join(f"{s.layer}:{s.score:.3f}" for s in scores))
    return scores


# ------------------------------------------------------------------------------------------- selection
def recommend_layer(
    scores: Sequence[SeparabilityScore], tolerance: float = 0.05, min_layer: int | None = None
) -> int:
    """l* = argmax of the separability score over layers >= ``min_layer``.

    Layers scoring within ``tolerance`` (a fraction of the best score) of the best are tied; among them
    the largest held-out d' wins, then the shallowest layer.
    """
    if isinstance(tolerance, bool) or not isinstance(tolerance, int | float) or not 0 <= tolerance < 1:
        raise SeparabilityInputError(
            f"separability: invalid tolerance={tolerance!r}; expected a fraction in [0, 1)"
        )
    if not scores:
        raise SeparabilityInputError("separability: no layer scores to select from")
    eligible = [s for s in scores if min_layer is None or s.layer >= min_layer]
    if not eligible:
        raise SeparabilityInputError(
            f"separability: min_layer={min_layer!r} leaves no layer "
            f"(scored layers {[s.layer for s in scores]})"
        )
    best = max(s.score for s in eligible)
    if best <= 0:
        logger.warning(
            "separability: no layer tells forget from retain (all scores 0); the pick is arbitrary"
        )
    tied = [s for s in eligible if s.score >= best * (1.0 - tolerance)]
    return max(tied, key=lambda s: (s.d_prime, -s.layer)).layer


__all__ = [
    "CRITERION",
    "ProbeEstimate",
    "ProbeSettings",
    "SeparabilityInputError",
    "SeparabilityScore",
    "check_sample_counts",
    "probe_features",
    "recommend_layer",
    "score_layers_separability",
    "separability",
]
