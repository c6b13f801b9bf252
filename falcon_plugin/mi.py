"""Step 1: mutual-information-guided layer selection (pure numpy estimators and scoring).

For each decoder layer l, with forget activations F^(l) and retain activations R^(l) (one pooled
vector per sample), FALCON scores (paper Eq. 2-4)

    I(F;R) = H(F) + H(R) - H(F,R),     l* = argmin_l I(F^(l); R^(l)),

where each entropy is estimated on a PCA reduction keeping ``pca_variance`` of the variance, with a
Gaussian KDE (scipy ``gaussian_kde`` bandwidth, Scott's rule, as the official code; the density
at each sample leaves that sample out, see :func:`entropy_kde`) or in closed form for a Gaussian,
H = 1/2 log det(2 pi e Sigma).
The joint sample pairs the i-th forget with the i-th retain activation. With several forget
domains F_1..F_m the score is

    sum_i I(F_i; R) + eta * sum_{i<j} I(F_i; F_j).

PCA keeps at most n/2 components (n samples) so every covariance a KDE or Gaussian uses is
well-conditioned; scikit-learn's PCA and scipy's KDE do the numerics.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from itertools import combinations

import numpy as np
from scipy.special import logsumexp
from scipy.stats import gaussian_kde
from sklearn.decomposition import PCA
from threadpoolctl import threadpool_limits

from .config import ESTIMATORS


def pca_reduce(x: np.ndarray, variance: float) -> np.ndarray:
    """Project (n, d) samples onto the fewest principal components explaining ``variance`` (<= n/2 kept)."""
    if x.ndim != 2:
        raise ValueError(f"expected (n_samples, dim) activations, got shape {x.shape}")
    n, d = x.shape
    cap = max(1, min(d, n // 2))
    x = x.astype(np.float64, copy=False)
    if variance >= 1.0:
        keep = cap
    else:
        pca = PCA(n_components=min(d, n), svd_solver="full").fit(x)
        ratios = np.cumsum(pca.explained_variance_ratio_)
        keep = min(cap, int(np.searchsorted(ratios, variance - 1e-12) + 1))
        return pca.transform(x)[:, :keep]
    if keep >= d:
        return x - x.mean(0)
    return PCA(n_components=keep, svd_solver="full").fit_transform(x)


def entropy_kde(x: np.ndarray, leave_one_out: bool = True) -> float:
    """Differential entropy (nats) of (n, k) samples by Gaussian KDE: -mean_i log p(x_i).

    The kernel covariance is scipy's ``gaussian_kde`` (Scott's rule). With ``leave_one_out`` (the
    default) p(x_i) omits x_i's own kernel: the plain resubstitution of the official code counts it,
    which inflates every density by a dimension-dependent amount, so I(F;R) = H(F)+H(R)-H(F,R)
    (whose joint has twice the dimension) gets a large positive bias (measured in docs/mi.md).
    """
    x = _non_degenerate(x)
    try:
        kde = gaussian_kde(x.T)
    except np.linalg.LinAlgError:  # collinear samples: regularise the kernel covariance slightly
        x = x + np.random.default_rng(0).normal(scale=1e-6 * (x.std() + 1e-12), size=x.shape)
        kde = gaussian_kde(x.T)
    if not leave_one_out:
        return float(-np.mean(kde.logpdf(x.T)))
    n, dim = x.shape
    chol = np.linalg.cholesky(np.atleast_2d(kde.covariance))
    z = np.linalg.solve(chol, x.T).T  # whitened: kernel = standard normal in z
    sq = np.einsum("ij,ij->i", z, z)
    log_norm = -0.5 * dim * np.log(2.0 * np.pi) - np.log(np.diag(chol)).sum() - np.log(n - 1)
    log_density = np.empty(n)
    for start in range(0, n, 1024):  # rows in chunks: memory O(1024 n)
        stop = min(n, start + 1024)
        d2 = sq[start:stop, None] + sq[None, :] - 2.0 * z[start:stop] @ z.T
        logk = -0.5 * np.maximum(d2, 0.0)
        logk[np.arange(stop - start), np.arange(start, stop)] = -np.inf
        log_density[start:stop] = logsumexp(logk, axis=1) + log_norm
    return float(-np.mean(log_density))


def entropy_gaussian(x: np.ndarray) -> float:
    """Differential entropy (nats) of a Gaussian fitted to (n, k) samples: 1/2 log det(2 pi e Sigma)."""
    x = _non_degenerate(x)
    cov = np.atleast_2d(np.cov(x, rowvar=False))
    cov = cov + np.eye(cov.shape[0]) * 1e-9 * max(np.trace(cov) / cov.shape[0], 1e-30)
    sign, logdet = np.linalg.slogdet(2.0 * np.pi * np.e * cov)
    if sign <= 0:
        raise ValueError("covariance is not positive definite")
    return float(0.5 * logdet)


def _non_degenerate(x: np.ndarray) -> np.ndarray:
    if x.ndim == 1:
        x = x[:, None]
    if x.shape[0] < 3:
        raise ValueError(f"an entropy estimate needs at least 3 samples, got {x.shape[0]}")
    return x


def entropy(x: np.ndarray, estimator: str = "kde", pca_variance: float = 0.95) -> float:
    """H(X) of (n, d) samples after PCA, with the chosen estimator (one of :data:`ESTIMATORS`)."""
    reduced = pca_reduce(x, pca_variance)
    if estimator == "kde":
        return entropy_kde(reduced)
    if estimator == "gaussian":
        return entropy_gaussian(reduced)
    if estimator == "kde_resubstitution":
        return entropy_kde(reduced, leave_one_out=False)
    raise ValueError(f"unknown estimator {estimator!r}; expected one of {', '.join(ESTIMATORS)}")


@dataclass(frozen=True)
class MIEstimate:
    """I(X;Y) = H(X) + H(Y) - H(X,Y) and its three entropies (nats)."""

    mi: float
    h_x: float
    h_y: float
    h_xy: float


def mutual_information(
    x: np.ndarray, y: np.ndarray, estimator: str = "kde", pca_variance: float = 0.95
) -> MIEstimate:
    """I(X;Y) from paired samples: the first min(n_x, n_y) of each, for all three entropies."""
    n = min(len(x), len(y))
    x, y = x[:n], y[:n]
    h_x = entropy(x, estimator, pca_variance)
    h_y = entropy(y, estimator, pca_variance)
    h_xy = entropy(np.hstack([x, y]), estimator, pca_variance)
    return MIEstimate(h_x + h_y - h_xy, h_x, h_y, h_xy)


@dataclass
class LayerScore:
    """One layer's FALCON score and the terms it sums."""

    layer: int
    score: float
    forget_retain: list[MIEstimate] = field(default_factory=list)
    forget_forget: list[MIEstimate] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "layer": self.layer,
            "score": self.score,
            "forget_retain": [asdict(e) for e in self.forget_retain],
            "forget_forget": [asdict(e) for e in self.forget_forget],
        }


def score_layer(
    forget: Sequence[np.ndarray], retain: np.ndarray, estimator: str, pca_variance: float, eta: float
) -> tuple[float, list[MIEstimate], list[MIEstimate]]:
    """sum_i I(F_i; R) + eta * sum_{i<j} I(F_i; F_j) for one layer's (n, d) activations."""
    fr = [mutual_information(f, retain, estimator, pca_variance) for f in forget]
    ff = [mutual_information(a, b, estimator, pca_variance) for a, b in combinations(forget, 2)]
    return sum(e.mi for e in fr) + eta * sum(e.mi for e in ff), fr, ff


def score_layers(
    forget: Sequence[np.ndarray],
    retain: np.ndarray,
    estimator: str = "kde",
    pca_variance: float = 0.95,
    eta: float = 1.0,
    layers: Sequence[int] | None = None,
    progress: bool = False,
) -> list[LayerScore]:
    """Score every layer from stacked activations: each forget domain and the retain set are (L, n, d)."""
    if len(forget) == 0:
        raise ValueError("score_layers needs at least one forget domain")
    n_layers = retain.shape[0]
    for i, f in enumerate(forget):
        if f.shape[0] != n_layers:
            raise ValueError(f"forget domain {i} has {f.shape[0]} layers, retain has {n_layers}")
    layer_ids = list(range(n_layers)) if layers is None else list(layers)
    iterator = range(n_layers)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc="MI per layer", unit="layer")
    scores = []
    # The matrices are tiny (n samples x d): a multi-threaded BLAS only adds synchronisation, and on a
    # busy machine its spinning threads make each SVD ~100x slower. One BLAS thread, restored after.
    with threadpool_limits(limits=1, user_api="blas"):
        for idx in iterator:
            score, fr, ff = score_layer([f[idx] for f in forget], retain[idx], estimator, pca_variance, eta)
            scores.append(LayerScore(layer_ids[idx], score, fr, ff))
    return scores


def select_layer(scores: Sequence[LayerScore]) -> int:
    """l* = argmin over layers of the score (the lowest index wins a tie)."""
    if not scores:
        raise ValueError("no layer scores to select from")
    return min(scores, key=lambda s: (s.score, s.layer)).layer
