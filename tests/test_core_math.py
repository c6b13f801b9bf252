"""Unit tests of the pure tensor / numpy functions: losses, POV, projection, MI estimators."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from falcon_plugin.errors import EmptyMaskError
from falcon_plugin.losses import cosine_retain_loss, floored_mean, info_nce_forget_loss, info_nce_token_losses
from falcon_plugin.masks import token_mask
from falcon_plugin.mi import (
    entropy,
    entropy_gaussian,
    entropy_kde,
    mutual_information,
    pca_reduce,
    score_layer,
    score_layers,
    select_layer,
)
from falcon_plugin.pov import principal_directions, principal_offset_vector
from falcon_plugin.projection import resolve_gradient_conflict


# ----------------------------------------------------------------------------- losses
def test_token_mask_selects_positions_that_predict_answer_tokens():
    labels = torch.tensor([[-100, -100, 5, 6], [-100, -100, -100, 7]])
    attention = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 1]])
    # position t is selected iff token t+1 is an answer token (the causal LM's shift)
    assert token_mask(labels, attention).tolist() == [[False, True, True, False], [False, False, True, False]]
    left_padded = torch.tensor([[-100, -100, -100, 9, 9]])
    assert token_mask(left_padded, torch.tensor([[0, 1, 1, 1, 1]])).tolist() == [
        [False, False, True, True, False]
    ]
    assert token_mask(torch.tensor([-100, 4, 4]), None).tolist() == [True, True, False]  # 1-D works too
    assert token_mask(None, attention).tolist() == attention.bool().tolist()


def test_info_nce_matches_hand_computation_one_negative():
    torch.manual_seed(0)
    anchor, negatives = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    positive = torch.randn(8)
    mask = torch.tensor([[True, False, True], [True, True, False]])
    tau = 0.7
    expected = []
    for b in range(2):
        for t in range(3):
            if mask[b, t]:
                pos = F.cosine_similarity(anchor[b, t], positive, dim=0) / tau
                neg = F.cosine_similarity(anchor[b, t], negatives[b, t], dim=0) / tau
                expected.append(-(pos - torch.logsumexp(torch.stack([pos, neg]), 0)))
    got = info_nce_forget_loss(anchor, positive, negatives, mask, tau)
    assert torch.allclose(got, torch.stack(expected).mean(), atol=1e-6)


def test_info_nce_multiple_negatives_and_known_values():
    d = 4
    e = torch.eye(d)
    anchor = e[0].view(1, 1, d)
    mask = torch.ones(1, 1, dtype=torch.bool)
    # anchor equal to the positive, orthogonal to two negatives: loss = log(1 + 2 e^{-1/tau})
    negatives = torch.stack([e[1], e[2]]).view(1, 1, 2, d)
    got = info_nce_forget_loss(anchor, e[0], negatives, mask, temperature=1.0)
    assert got.item() == pytest.approx(math.log(1 + 2 * math.exp(-1.0)), abs=1e-6)
    # scale of the positive (steering coefficient) does not change a cosine-based InfoNCE
    assert info_nce_forget_loss(anchor, 20 * e[0], negatives, mask, 1.0).item() == pytest.approx(
        got.item(), abs=1e-6
    )


def test_forget_loss_floor_stops_the_tokens_below_it():
    terms = torch.tensor([0.2, 1.0, 2.0], requires_grad=True)
    loss = floored_mean(terms, 0.5)
    assert loss.item() == pytest.approx((0.5 + 1.0 + 2.0) / 3)
    loss.backward()
    assert terms.grad.tolist() == pytest.approx([0.0, 1 / 3, 1 / 3])  # the token under the floor: no push
    assert floored_mean(terms, None).item() == pytest.approx(3.2 / 3)

    torch.manual_seed(3)
    anchor, negatives = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    positive, mask = torch.randn(8), torch.ones(2, 3, dtype=torch.bool)
    tokens = info_nce_token_losses(anchor, positive, negatives, mask, 0.7)
    assert tokens.shape == (6,) and bool((tokens > 0).all())
    plain = info_nce_forget_loss(anchor, positive, negatives, mask, 0.7)
    assert plain.item() == pytest.approx(tokens.mean().item(), abs=1e-6)
    below_all = float(tokens.min()) / 2  # a floor under every term changes nothing
    assert info_nce_forget_loss(anchor, positive, negatives, mask, 0.7, floor=below_all).item() == (
        pytest.approx(plain.item(), abs=1e-6)
    )
    above_all = float(tokens.max()) + 1  # a floor over every term: the constant floor, no gradient
    anchor.requires_grad_(True)
    floored = info_nce_forget_loss(anchor, positive, negatives, mask, 0.7, floor=above_all)
    assert floored.item() == pytest.approx(above_all)
    (grad,) = torch.autograd.grad(floored, anchor)
    assert bool((grad == 0).all())


def test_losses_ignore_masked_tokens_and_run_in_float32():
    torch.manual_seed(1)
    updated = torch.randn(2, 5, 6, dtype=torch.bfloat16)
    frozen = updated.clone()
    frozen[:, 0] = -frozen[:, 0]  # masked-out position differs completely
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[:, 0] = False
    loss = cosine_retain_loss(updated, frozen, mask)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    assert cosine_retain_loss(updated, frozen, torch.ones_like(mask)).item() > 0.3
    nce = info_nce_forget_loss(updated, torch.randn(6), frozen, mask, 0.5)
    assert nce.dtype == torch.float32


def test_losses_reject_empty_masks():
    x = torch.randn(1, 3, 4)
    empty = torch.zeros(1, 3, dtype=torch.bool)
    with pytest.raises(EmptyMaskError, match="no token"):
        cosine_retain_loss(x, x, empty)
    with pytest.raises(EmptyMaskError):
        info_nce_forget_loss(x, torch.randn(4), x, empty, 0.7)
    with pytest.raises(ValueError, match="temperature"):
        info_nce_forget_loss(x, torch.randn(4), x, ~empty, 0.0)


def test_forget_loss_gradient_pulls_anchor_toward_positive():
    torch.manual_seed(2)
    anchor = torch.randn(1, 4, 8, requires_grad=True)
    positive, negatives = torch.randn(8), anchor.detach().clone()
    mask = torch.ones(1, 4, dtype=torch.bool)
    before = F.cosine_similarity(anchor.detach(), positive.expand(1, 4, 8), dim=-1).mean()
    opt = torch.optim.SGD([anchor], lr=0.5)
    for _ in range(20):
        opt.zero_grad()
        info_nce_forget_loss(anchor, positive, negatives, mask, 0.7).backward()
        opt.step()
    after = F.cosine_similarity(anchor.detach(), positive.expand(1, 4, 8), dim=-1).mean()
    assert after > before + 0.3


# ----------------------------------------------------------------------------- POV
def test_principal_directions_recover_dominant_subspace():
    torch.manual_seed(3)
    basis = torch.linalg.qr(torch.randn(16, 16)).Q
    coeffs = torch.randn(500, 16) * torch.tensor([10.0, 8.0] + [0.1] * 14)
    acts = coeffs @ basis.T
    v = principal_directions(acts, 2)
    assert v.shape == (2, 16)
    # span(v) equals span(basis[:, :2])
    proj = basis[:, :2] @ basis[:, :2].T
    assert torch.allclose(proj @ v.T, v.T, atol=1e-2)
    assert principal_directions(acts[:3], 10).shape == (3, 16)  # rank clipped to min(N, D)


def test_pov_is_unit_norm_seeded_and_orthogonal_without_noise():
    torch.manual_seed(4)
    v = principal_directions(torch.randn(200, 32) * torch.linspace(5, 0.1, 32), 4)
    pov = principal_offset_vector(v, weight=1.0, noise=0.0, generator=torch.Generator().manual_seed(0))
    assert pov.shape == (32,) and pov.norm().item() == pytest.approx(1.0, abs=1e-6)
    # tanh keeps signs; with w=1 and no noise the pre-activation has no component in span(v),
    # and the small-magnitude tanh keeps the result nearly orthogonal to it
    r = torch.randn(32, generator=torch.Generator().manual_seed(0))
    pre = r - v.T @ (v @ r)
    assert (v @ pre).abs().max() < 1e-5
    assert (v @ pov).abs().max() < 0.35 * pov.norm()
    again = principal_offset_vector(v, 1.0, 0.0, torch.Generator().manual_seed(0))
    other = principal_offset_vector(v, 1.0, 0.0, torch.Generator().manual_seed(1))
    assert torch.equal(pov, again) and not torch.allclose(pov, other)


# ----------------------------------------------------------------------------- projection
def _grads(seed: int, shapes=((4, 3), (5,))):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g) for s in shapes]


def test_projection_per_tensor_geometry():
    g_r = _grads(0)
    g_f = [-g_r[0] + 0.1 * _grads(1)[0], g_r[1] * 2.0]  # tensor 0 conflicts, tensor 1 aligns
    res = resolve_gradient_conflict(g_f, g_r, "per_tensor", (0.8, 1.2), (0.1, 1.9))
    assert res.conflicts.tolist() == [True, False]
    assert res.cosines[0] < 0 < res.cosines[1]
    # conflicting tensor: combined = 0.8 * proj + 1.2 g_R, with proj orthogonal to g_R
    proj = (res.grads[0] - 1.2 * g_r[0]) / 0.8
    assert abs(torch.dot(proj.flatten(), g_r[0].flatten()).item()) < 1e-4
    expected_proj = g_f[0] - torch.dot(g_f[0].flatten(), g_r[0].flatten()) / g_r[0].square().sum() * g_r[0]
    assert torch.allclose(proj, expected_proj, atol=1e-5)
    # aligned tensor untouched by projection: 0.1 g_F + 1.9 g_R
    assert torch.allclose(res.grads[1], 0.1 * g_f[1] + 1.9 * g_r[1], atol=1e-6)


def test_projection_global_takes_one_decision():
    g_r = _grads(2)
    g_f = [-3 * g_r[0], 0.5 * g_r[1]]  # globally conflicting, tensor 1 aligned on its own
    res = resolve_gradient_conflict(g_f, g_r, "global")
    assert res.cosines.shape == (1,) and res.conflicts.tolist() == [True]
    flat_f = torch.cat([g.flatten() for g in g_f])
    flat_r = torch.cat([g.flatten() for g in g_r])
    proj = flat_f - torch.dot(flat_f, flat_r) / flat_r.square().sum() * flat_r
    combined = torch.cat([g.flatten() for g in res.grads])
    assert torch.allclose(combined, 0.8 * proj + 1.2 * flat_r, atol=1e-5)


def test_projection_none_is_plain_sum():
    g_f, g_r = _grads(3), _grads(4)
    res = resolve_gradient_conflict(g_f, g_r, "none")
    for got, f, r in zip(res.grads, g_f, g_r, strict=True):
        assert torch.equal(got, f + r)
    assert not res.conflicts.any()
    with pytest.raises(ValueError, match="unknown projection"):
        resolve_gradient_conflict(g_f, g_r, "sideways")


@pytest.mark.parametrize("mode", ["per_tensor", "global", "none"])
def test_projection_in_place_is_bit_identical_and_reuses_forget_storage(mode):
    for dtype in (torch.float32, torch.bfloat16):
        g_r = [g.to(dtype) for g in _grads(5)]
        g_f = [(-g_r[0] + 0.1 * _grads(6)[0].to(dtype)), 2 * g_r[1]]
        expected = resolve_gradient_conflict([g.clone() for g in g_f], g_r, mode)
        ptrs = [g.data_ptr() for g in g_f]
        got = resolve_gradient_conflict(g_f, g_r, mode, inplace=True)
        for a, b in zip(got.grads, expected.grads, strict=True):
            assert a.dtype == dtype and torch.equal(a, b)
        assert [g.data_ptr() for g in got.grads] == ptrs
        assert torch.equal(got.cosines, expected.cosines) and torch.equal(got.conflicts, expected.conflicts)


def test_projection_in_place_leaves_a_non_contiguous_forget_gradient_alone():
    g_r = [torch.randn(4, 3, generator=torch.Generator().manual_seed(7))]
    g_f = [torch.tensor(-1.0).expand(4, 3)]  # what sum()'s backward returns: one element, stride 0
    got = resolve_gradient_conflict(g_f, g_r, "per_tensor", inplace=True)
    assert torch.equal(got.grads[0], resolve_gradient_conflict(g_f, g_r, "per_tensor").grads[0])
    assert torch.equal(g_f[0], torch.full((4, 3), -1.0))


def test_projection_chunked_dot_products_match_whole_tensor_sums(monkeypatch):
    import falcon_plugin.projection as projection

    g_r = _grads(8, shapes=((37, 11), (5,)))
    g_f = [-g_r[0] + 0.3 * _grads(9, shapes=((37, 11),))[0], 3 * g_r[1]]
    whole = resolve_gradient_conflict(g_f, g_r, "per_tensor")
    monkeypatch.setattr(projection, "DOT_CHUNK", 16)  # 407 elements -> 26 chunks, one ragged
    chunked = resolve_gradient_conflict(g_f, g_r, "per_tensor")
    assert chunked.conflicts.tolist() == whole.conflicts.tolist() == [True, False]
    assert torch.allclose(chunked.cosines, whole.cosines, rtol=1e-6)
    for a, b in zip(chunked.grads, whole.grads, strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    big = torch.randn(1000, dtype=torch.bfloat16, generator=torch.Generator().manual_seed(10))
    assert torch.allclose(projection.float32_sum(big), big.float().sum(), rtol=1e-5)
    assert projection._dot(big, big) > 0


# ----------------------------------------------------------------------------- MI estimators
def _correlated(n: int, dim: int, rho: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim))
    y = rho * x + math.sqrt(1 - rho**2) * rng.standard_normal((n, dim))
    return x, y, -0.5 * dim * math.log(1 - rho**2)


@pytest.mark.parametrize("dim,rho", [(1, 0.8), (2, 0.6), (3, 0.5)])
def test_gaussian_estimator_matches_analytic_mi(dim, rho):
    x, y, truth = _correlated(4000, dim, rho)
    est = mutual_information(x, y, "gaussian", pca_variance=1.0).mi
    # closed form on 4000 samples: within 5% of the true MI (0.51, 0.45, 0.43 nats)
    assert est == pytest.approx(truth, rel=0.05)


@pytest.mark.parametrize(
    "dim,rho,n,tolerance",
    [(1, 0.8, 200, 0.03), (1, 0.8, 1500, 0.03), (2, 0.6, 1500, 0.1), (3, 0.5, 1500, 0.15)],
)
def test_kde_estimator_matches_analytic_mi(dim, rho, n, tolerance):
    x, y, truth = _correlated(n, dim, rho, seed=1)
    est = mutual_information(x, y, "kde", pca_variance=1.0).mi
    # leave-one-out KDE: within 0.03 nats of the truth in 1-D, 0.1 in 2-D, 0.15 in 3-D per side (docs/mi.md)
    assert abs(est - truth) < tolerance, (est, truth)


def test_leave_one_out_kde_beats_resubstitution_on_independent_data():
    x, _, _ = _correlated(800, 2, 0.0, seed=3)
    y = np.random.default_rng(11).standard_normal((800, 2))
    loo = entropy_kde(x) + entropy_kde(y) - entropy_kde(np.hstack([x, y]))
    resub = (
        entropy_kde(x, leave_one_out=False)
        + entropy_kde(y, leave_one_out=False)
        - entropy_kde(np.hstack([x, y]), leave_one_out=False)
    )
    assert abs(loo) < abs(resub)
    assert resub > 0.1  # the official estimator's bias on independent 2-D data


def test_mi_orders_dependence_and_independent_is_near_zero():
    x, y_strong, _ = _correlated(1000, 2, 0.9, seed=2)
    _, y_weak, _ = _correlated(1000, 2, 0.3, seed=2)
    independent = np.random.default_rng(9).standard_normal((1000, 2))
    for estimator in ("kde", "gaussian"):
        strong = mutual_information(x, y_strong, estimator, 1.0).mi
        weak = mutual_information(x, y_weak, estimator, 1.0).mi
        none = mutual_information(x, independent, estimator, 1.0).mi
        assert strong > weak > none
        assert abs(none) < (0.1 if estimator == "kde" else 0.02)


def test_entropy_estimators_match_gaussian_entropy():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3000, 2)) * np.array([2.0, 0.5])
    truth = 0.5 * math.log((2 * math.pi * math.e) ** 2 * 4.0 * 0.25)
    assert entropy_gaussian(x) == pytest.approx(truth, abs=0.03)
    assert entropy_kde(x) == pytest.approx(truth, abs=0.15)
    with pytest.raises(ValueError, match="estimator"):
        entropy(x, "histogram")


def test_pca_reduce_keeps_variance_fraction_and_caps_dims():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((100, 10)) * np.array([10, 5, 1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1])
    assert pca_reduce(x, 0.95).shape == (100, 2)
    assert pca_reduce(x, 0.999).shape[1] >= 3
    assert pca_reduce(x[:8], 1.0).shape == (8, 4)  # capped at n/2


def test_multi_domain_score_is_sum_plus_eta_pairwise():
    rng = np.random.default_rng(7)
    f1, f2, r = (rng.standard_normal((300, 2)) for _ in range(3))
    score, fr, ff = score_layer([f1, f2], r, "gaussian", 1.0, eta=0.5)
    assert len(fr) == 2 and len(ff) == 1
    assert score == pytest.approx(fr[0].mi + fr[1].mi + 0.5 * ff[0].mi)


def test_score_layers_and_select_layer_pick_the_argmin():
    rng = np.random.default_rng(8)
    n, d = 400, 2
    forget = rng.standard_normal((3, n, d))
    retain = rng.standard_normal((3, n, d))
    retain[0] = forget[0] * 0.9 + 0.1 * retain[0]  # layer 0: strongly dependent
    retain[2] = forget[2] * 0.5 + 0.5 * retain[2]  # layer 2: partly dependent; layer 1 independent
    scores = score_layers([forget], retain, "gaussian", 1.0, layers=[4, 5, 6])
    assert [s.layer for s in scores] == [4, 5, 6]
    assert select_layer(scores) == 5
    assert scores[0].score > scores[2].score > scores[1].score


def test_mutual_information_uses_the_same_samples_for_every_entropy():
    x, y, _ = _correlated(600, 2, 0.5, seed=4)
    assert mutual_information(x, y[:300], "gaussian", 1.0) == mutual_information(
        x[:300], y[:300], "gaussian", 1.0
    )


def test_atomic_write_gives_the_usual_file_mode(tmp_path):
    import os

    from falcon_plugin.atomic import atomic_write_json

    path = atomic_write_json(tmp_path / "r.json", {"a": 1})
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert not list(tmp_path.glob(".r.json.*"))
