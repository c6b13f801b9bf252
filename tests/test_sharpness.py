"""The sharpness-aware forget gradient's pure parts: the ascent step δ and the in-place perturbation."""

from __future__ import annotations

import pytest
import torch

from falcon_plugin.sharpness import perturbed, sam_perturbation


def test_the_step_has_length_rho_over_all_tensors_along_the_gradient() -> None:
    grads = [torch.tensor([3.0, 0.0]), torch.tensor([[0.0], [4.0]])]  # one norm over both: 5
    deltas = sam_perturbation(grads, 0.5)
    assert torch.allclose(deltas[0], torch.tensor([0.3, 0.0]))
    assert torch.allclose(deltas[1], torch.tensor([[0.0], [0.4]]))
    total = torch.sqrt(sum(d.pow(2).sum() for d in deltas))
    assert total.item() == pytest.approx(0.5)


def test_a_zero_gradient_gives_a_zero_step_and_a_bad_radius_is_refused() -> None:
    deltas = sam_perturbation([torch.zeros(3), torch.zeros(2, 2)], 0.1)
    assert all(torch.equal(d, torch.zeros_like(d)) for d in deltas)
    with pytest.raises(ValueError, match="rho must be > 0, got 0"):
        sam_perturbation([torch.ones(2)], 0.0)


def test_low_precision_gradients_keep_their_dtype_and_the_norm_is_float32() -> None:
    grads = [torch.full((1000,), 1e3, dtype=torch.bfloat16)]  # sum of squares overflows nothing in float32
    (delta,) = sam_perturbation(grads, 1.0)
    assert delta.dtype == torch.bfloat16
    assert delta.float().norm().item() == pytest.approx(1.0, rel=1e-2)


def test_the_parameters_come_back_bit_for_bit_even_where_the_addition_rounds() -> None:
    param = torch.nn.Parameter(torch.tensor([1.0, 256.0, -3.0], dtype=torch.bfloat16))
    original = param.detach().clone()
    delta = torch.tensor([1e-3, 0.7, 0.5], dtype=torch.bfloat16)  # 256 + 0.7 rounds in bfloat16
    with perturbed([param], [delta]):
        assert not torch.equal(param, original)
        assert param[2].item() == pytest.approx(-2.5)
    assert torch.equal(param, original)


def test_the_parameters_come_back_when_the_block_raises() -> None:
    param = torch.nn.Parameter(torch.ones(2))
    with pytest.raises(RuntimeError, match="inside"), perturbed([param], [torch.ones(2)]):
        raise RuntimeError("inside")
    assert torch.equal(param, torch.ones(2))
    with (
        pytest.raises(ValueError, match="1 parameters but 2 perturbations"),
        perturbed([param], [torch.ones(2)] * 2),
    ):
        pass
