"""The ``separability`` Step-1 criterion (held-out I(H; D)) against the paper's paired I(F;R),
on synthetic data."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from falcon_plugin.mi import mutual_information
from falcon_plugin.separability import (
    ProbeSettings,
    SeparabilityInputError,
    check_sample_counts,
    recommend_layer,
    score_layers_separability,
    separability,
)

HIDDEN = 576  # SmolLM2-135M's width
DIMS = (2, 10, 20, 40)


def same_distribution(d: int, n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two independent (n, 576) samples of one Gaussian with effective dimension d (plus 0.01 noise)."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((HIDDEN, d)))[0].T  # d orthonormal directions

    def draw() -> np.ndarray:
        return rng.standard_normal((n, d)) @ basis + 0.01 * rng.standard_normal((n, HIDDEN))

    return draw(), draw()


def test_same_distribution_scores_are_flat_in_dimension() -> None:
    scores = [separability(*same_distribution(d, seed=d)) for d in DIMS]
    values = np.array([e.mi for e in scores])
    assert (values < 0.05).all(), values
    slope = np.polyfit(DIMS, values, 1)[0]
    assert abs(slope) < 1e-3, slope  # nats per dimension
    # the unclipped estimate is a lower bound: it does not rise above noise level with dimension either
    assert max(e.raw for e in scores) < 0.02, [e.raw for e in scores]


def test_paper_criterion_grows_with_dimension_on_unpaired_samples() -> None:
    """Documented behaviour of the paper's I(F;R) (docs/mi.md, Criteria): on independent samples the
    true value is 0, but the estimate is the estimator's bias, which grows with the PCA dimension."""
    for estimator in ("kde", "gaussian"):
        values = [mutual_information(*same_distribution(d, seed=d), estimator=estimator).mi for d in DIMS]
        assert abs(values[0]) < 0.2, (estimator, values)
        assert all(b > a for a, b in zip(values, values[1:], strict=False)), (estimator, values)
        assert values[-1] > values[0] + 3.0, (estimator, values)


def test_planted_layer_is_picked_among_noise_layers_of_any_dimension() -> None:
    dims = [2, 4, 8, 16, 32, 64, 48, 24, 12, 6]
    planted = 6
    # layer i: a fixed random map of dims[i] standard normals to 64 coordinates, the same for both sets
    rng = np.random.default_rng(3)
    maps = [rng.standard_normal((d, 64)) / np.sqrt(d) for d in dims]
    forget = np.stack([rng.standard_normal((200, d)) @ m for d, m in zip(dims, maps, strict=True)])
    retain = np.stack([rng.standard_normal((200, d)) @ m for d, m in zip(dims, maps, strict=True)])
    forget[planted, :, :3] += 1.0  # a mean shift in 3 of 64 coordinates at one layer
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no convergence or deprecation warning from the probe
        scores = score_layers_separability([forget], retain)
    assert [s.layer for s in scores] == list(range(len(dims)))
    assert recommend_layer(scores) == planted
    assert scores[planted].score > 0.1
    assert max(s.score for i, s in enumerate(scores) if i != planted) < 0.05, [s.score for s in scores]
    assert scores[planted].score <= scores[planted].forget_retain[0].entropy == pytest.approx(np.log(2))


def test_paper_criterion_misses_the_planted_layer() -> None:
    """The same planted layer under the paper's argmin I(F;R): the pick follows the dimension,
    not the shift."""
    from falcon_plugin.mi import score_layers, select_layer

    dims = [2, 40, 40, 40]
    rng = np.random.default_rng(0)
    maps = [np.linalg.qr(rng.standard_normal((64, d)))[0].T for d in dims]
    forget = np.stack([rng.standard_normal((200, d)) @ m for d, m in zip(dims, maps, strict=True)])
    retain = np.stack([rng.standard_normal((200, d)) @ m for d, m in zip(dims, maps, strict=True)])
    forget[2, :, :] += 1.5 * maps[2][0]  # forget and retain differ only at layer 2
    assert select_layer(score_layers([forget], retain, "gaussian")) == 0  # the low-dimensional layer
    assert recommend_layer(score_layers_separability([forget], retain)) == 2


def _two_domain_layers(seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    """Layer 0: no signal. Layer 1: both forget domains shifted the same way from retain (forget-retain
    separable, forget-forget not). Layer 2: shifted opposite ways, less far (forget-forget very separable)."""
    rng = np.random.default_rng(seed)
    axis = np.zeros(32)
    axis[0] = 1.0
    shifts = [(0.0, 0.0), (2.0, 2.0), (1.5, -1.5)]
    f1 = np.stack([rng.standard_normal((200, 32)) + a * axis for a, _ in shifts])
    f2 = np.stack([rng.standard_normal((200, 32)) + b * axis for _, b in shifts])
    return [f1, f2], rng.standard_normal((3, 200, 32))


def test_multi_domain_aggregate_and_eta() -> None:
    forget, retain = _two_domain_layers()
    plain = score_layers_separability(forget, retain, eta=0.0)
    weighted = score_layers_separability(forget, retain, eta=1.0)
    for p, w in zip(plain, weighted, strict=True):
        assert len(w.forget_retain) == 2 and len(w.forget_forget) == 1
        fr = np.mean([e.mi for e in w.forget_retain])
        assert p.score == pytest.approx(fr)
        assert w.score == pytest.approx(fr + 1.0 * w.forget_forget[0].mi)
    assert recommend_layer(plain) == 1  # forget sets furthest from retain
    assert recommend_layer(weighted) == 2  # ... and from each other (the eta term), as the paper's eta does
    assert weighted[1].forget_forget[0].mi < 0.05 < 0.3 < weighted[2].forget_forget[0].mi


def test_tie_break_prefers_the_larger_margin_then_the_shallower_layer() -> None:
    rng = np.random.default_rng(0)
    axis = np.eye(16)[0]
    retain = rng.standard_normal((3, 100, 16))
    forget = rng.standard_normal((3, 100, 16))
    forget[0] += 12.0 * axis  # both separate the sets perfectly: the regularised probe's score saturates ...
    forget[1] += 30.0 * axis  # ... and layer 1 has the larger margin
    forget[2] = forget[1]
    retain[2] = retain[1]  # layer 2 identical to layer 1
    scores = score_layers_separability([forget], retain)
    assert 0.5 < scores[0].score <= scores[1].score < 1.05 * scores[0].score  # tied within the 5% tolerance
    assert scores[1].d_prime > scores[0].d_prime
    assert recommend_layer(scores) == 1  # not 2: same scores, shallower wins
    assert recommend_layer(scores, tolerance=0.0) in (0, 1, 2)
    assert recommend_layer(scores, min_layer=2) == 2


def test_unequal_set_sizes_are_bounded_by_their_entropy() -> None:
    rng = np.random.default_rng(0)
    forget = rng.standard_normal((40, 8)) + 25.0
    estimate = separability(forget, rng.standard_normal((200, 8)))
    h = -(1 / 6 * np.log(1 / 6) + 5 / 6 * np.log(5 / 6))
    assert estimate.entropy == pytest.approx(h)
    assert estimate.mi == pytest.approx(h, abs=0.03) and estimate.fraction == pytest.approx(1.0, abs=0.07)
    assert estimate.mi <= estimate.entropy + 1e-12


def test_deterministic_given_the_seed() -> None:
    forget, retain = _two_domain_layers(seed=5)
    first = score_layers_separability(forget, retain, ProbeSettings(seed=3))
    again = score_layers_separability(forget, retain, ProbeSettings(seed=3))
    assert [s.to_dict() for s in first] == [s.to_dict() for s in again]
    other = score_layers_separability(forget, retain, ProbeSettings(seed=4))
    assert [s.forget_retain[0].fold_mi for s in other] != [s.forget_retain[0].fold_mi for s in first]
    assert recommend_layer(other) == recommend_layer(first)
    json.dumps([s.to_dict() for s in first])  # a report can store them as they are


def test_layer_ids_name_the_scores() -> None:
    forget, retain = _two_domain_layers()
    scores = score_layers_separability(forget, retain, layers=[4, 7, 9], eta=0.0)
    assert [s.layer for s in scores] == [4, 7, 9] and recommend_layer(scores) == 7
    with pytest.raises(SeparabilityInputError, match=r"layers=\[4, 7\]"):
        score_layers_separability(forget, retain, layers=[4, 7])


@pytest.mark.parametrize(
    ("forget_counts", "retain_count", "folds", "match"),
    [
        ([3], 200, 5, r"forget domain 0 has 3 samples.*folds=5.*>= 5"),
        ([200, 4], 200, 5, r"forget domain 1 has 4 samples"),
        ([200], 2, 3, r"retain set has 2 samples.*folds=3"),
        ([0], 200, 5, r"forget domain 0 is empty \(0 samples\)"),
        ([200], 0, 5, r"retain set is empty"),
        ([], 200, 5, r"no forget domain"),
    ],
)
def test_too_few_samples_fail_before_any_work(forget_counts, retain_count, folds, match) -> None:
    with pytest.raises(SeparabilityInputError, match=match):
        check_sample_counts(forget_counts, retain_count, ProbeSettings(folds=folds))


def test_bad_activations_raise_naming_the_value() -> None:
    rng = np.random.default_rng(0)
    good = rng.standard_normal((2, 20, 8))
    cases = [
        (([good[:, :3]], good), r"forget domain 0 has 3 samples"),
        (([good[:, :0]], good), r"forget domain 0 is empty"),
        (([good], good[:, :4]), r"retain set has 4 samples"),
        (([good[..., :6]], good), r"forget domain 0 has dim 6, the retain set has dim 8"),
        (([good[:1]], good), r"forget domain 0 has 1 layers, the retain set has 2"),
        (([good[0]], good), r"forget domain 0 activations have shape \(20, 8\)"),
        (([], good), r"no forget domain"),
        (([np.where(good > 2.5, np.nan, good)], good), r"forget domain 0 activations contain NaN"),
    ]
    for (forget, retain), match in cases:
        with pytest.raises(SeparabilityInputError, match=match):
            score_layers_separability(forget, retain)
    assert issubclass(SeparabilityInputError, ValueError)
    with pytest.raises(SeparabilityInputError, match=r"eta=-1"):
        score_layers_separability([good], good, eta=-1)
    with pytest.raises(SeparabilityInputError, match=r"min_layer=5"):
        recommend_layer(score_layers_separability([good], good), min_layer=5)
    with pytest.raises(SeparabilityInputError, match=r"tolerance=1.5"):
        recommend_layer(score_layers_separability([good], good), tolerance=1.5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"folds": 1}, r"folds=1"),
        ({"folds": 2.5}, r"folds=2.5"),
        ({"C": 0}, r"C=0"),
        ({"C": float("inf")}, r"C=inf"),
        ({"max_components": 0}, r"max_components=0"),
        ({"seed": "a"}, r"seed='a'"),
    ],
)
def test_bad_settings_raise_naming_the_value(kwargs, match) -> None:
    with pytest.raises(SeparabilityInputError, match=match):
        ProbeSettings(**kwargs)
