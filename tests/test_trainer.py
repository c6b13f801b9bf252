"""FALCON trainer through the real HF Trainer, with host-shaped batches on tiny random Llamas.

The equivalence tests are the proof that the fast path (truncated forward, no model copy) computes
the paper's method: same losses and gradients as a naive full-forward + deep-copied reference.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import fresh_forget_retain, qa_items, tiny_llama
from transformers import Trainer, TrainingArguments

from falcon_plugin.data import ForgetRetainCollator, ForgetRetainDataset
from falcon_plugin.errors import FalconConfigError
from falcon_plugin.losses import cosine_retain_loss, info_nce_forget_loss
from falcon_plugin.masks import token_mask
from falcon_plugin.projection import resolve_gradient_conflict
from falcon_plugin.sharpness import perturbed, sam_perturbation
from falcon_plugin.trainer import FALCON, FalconMixin, falcon_trainer_class

MLP_WEIGHTS = ("gate_proj", "up_proj", "down_proj")
"""The default trainable tensors of a Llama layer (``trainable_modules: mlp``)."""


def make_args(tmp_path, **overrides) -> TrainingArguments:
    base = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=3,
        learning_rate=1e-3,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    base.update(overrides)
    return TrainingArguments(**base)


def make_trainer(tmp_path, model, dataset, tokenizer, **method_args) -> FALCON:
    args = method_args.pop("args", None) or make_args(tmp_path)
    return FALCON(
        model=model,
        train_dataset=dataset,
        eval_dataset=None,
        tokenizer=tokenizer,
        data_collator=ForgetRetainCollator(tokenizer.pad_token_id),
        args=args,
        evaluators=None,
        template_args=None,
        **method_args,
    )


def test_training_changes_only_the_trainable_tensors(tmp_path, tokenizer, forget_retain):
    model = tiny_llama()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = make_trainer(tmp_path, model, forget_retain, tokenizer, layer=3)
    trainer.train()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {f"model.layers.{i}.mlp.{m}.weight" for i in (1, 2, 3) for m in MLP_WEIGHTS}
    logs = [entry for entry in trainer.state.log_history if "falcon/forget_loss" in entry]
    assert logs and {"falcon/retain_loss", "falcon/grad_cosine", "falcon/projection_rate"} <= set(logs[0])
    assert logs[0]["falcon/layer"] == 3


def test_forget_loss_floor_is_logged_and_a_floor_over_every_token_freezes_the_model(
    tmp_path, tokenizer, forget_retain
):
    model = tiny_llama()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    # the InfoNCE term of a token is below log(2) + 1/tau (two logits): a floor of 100 stops every token;
    # the retain loss starts at its minimum (updated == frozen, a zero gradient up to rounding, which
    # plain SGD keeps at rounding size where Adam would normalise it up), so nothing moves
    sgd = make_args(tmp_path, optim="sgd")
    trainer = make_trainer(
        tmp_path, model, forget_retain, tokenizer, layer=3, forget_loss_floor=100.0, args=sgd
    )
    trainer.train()
    assert all(torch.allclose(p, before[n], atol=1e-7) for n, p in model.named_parameters())
    logs = [entry for entry in trainer.state.log_history if "falcon/forget_loss" in entry]
    assert logs and all(e["falcon/forget_at_floor"] == 1.0 for e in logs)
    assert all(e["falcon/forget_loss"] == pytest.approx(100.0) for e in logs)

    # each run gets a fresh dataset: a redrawing ForgetRetainDataset's partner RNG advances with every
    # item fetched, so a shared one would pair the second run's items differently
    low = make_trainer(
        tmp_path, tiny_llama(), fresh_forget_retain(tokenizer), tokenizer, layer=3, forget_loss_floor=1e-6
    )
    low.train()  # a floor under every token trains exactly as the paper's loss
    plain = make_trainer(tmp_path, tiny_llama(), fresh_forget_retain(tokenizer), tokenizer, layer=3)
    plain.train()
    low_logs = [e for e in low.state.log_history if "falcon/forget_loss" in e]
    plain_logs = [e for e in plain.state.log_history if "falcon/forget_loss" in e]
    # (two plain runs agree to ~1e-5 here, not bit for bit)
    assert [e["falcon/forget_loss"] for e in low_logs] == pytest.approx(
        [e["falcon/forget_loss"] for e in plain_logs], rel=1e-3
    )
    assert all(e["falcon/forget_at_floor"] == 0.0 for e in low_logs)
    assert all("falcon/forget_at_floor" not in e for e in plain_logs)


def _naive_step(model, reference, layer, batch, trainable_names, pov, cfg):
    """The official scheme: full forwards of the model and a deep-copied reference, hooks at l*."""
    forget_loss, retain_loss, g_f, g_r = _naive_gradients(
        model, reference, layer, batch, trainable_names, pov, cfg
    )
    combined = resolve_gradient_conflict(g_f, g_r, cfg.projection, cfg.conflict_weights, cfg.align_weights)
    return forget_loss, retain_loss, combined.grads


def _naive_gradients(model, reference, layer, batch, trainable_names, pov, cfg):
    """(L_F, L_R, g_F, g_R) of :func:`_naive_step`, before the projection."""

    def activation(m, inputs, grad):
        cache = []
        handle = m.model.layers[layer].register_forward_hook(
            lambda _m, _i, out: cache.append(out[0] if isinstance(out, tuple) else out)
        )
        with torch.set_grad_enabled(grad):
            m(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False)
        handle.remove()
        return cache[0]

    params = dict(model.named_parameters())
    trainable = [params[n] for n in trainable_names]
    f, r = batch["forget"], batch["retain"]
    forget_loss = info_nce_forget_loss(
        activation(model, f, True),
        cfg.steering_coeff * pov,
        activation(reference, f, False),
        token_mask(f["labels"], f["attention_mask"]),
        cfg.temperature,
    )
    retain_loss = cfg.retain_weight * cosine_retain_loss(
        activation(model, r, True),
        activation(reference, r, False),
        token_mask(r["labels"], r["attention_mask"]),
    )
    g_f = torch.autograd.grad(forget_loss, trainable)
    g_r = torch.autograd.grad(retain_loss, trainable)
    return forget_loss, retain_loss, list(g_f), list(g_r)


LAYER = 4
"""l* of the equivalence tests' 6-layer model."""


def _shifted_trainer_and_reference(tmp_path, tokenizer, forget_retain, padding_side="right", **method_args):
    """A set-up trainer on a 6-layer model whose trainable tensors left the frozen copies (a few
    optimizer-like steps' worth of noise), the reference model holding the frozen (original) tensors,
    and a batch."""
    model = tiny_llama(num_layers=6)
    trainer = make_trainer(tmp_path, model, forget_retain, tokenizer, layer=LAYER, **method_args)
    trainer._setup(None)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name in trainer.falcon_state.trainable_names:
            params[name].add_(0.05 * torch.randn_like(params[name]))
    reference = copy.deepcopy(model)
    with torch.no_grad():
        ref_params = dict(reference.named_parameters())
        for name, value in trainer.falcon_state.frozen.items():
            ref_params[name].copy_(value)
    model.train()
    collate = ForgetRetainCollator(tokenizer.pad_token_id, padding_side)
    batch = collate([forget_retain[i] for i in range(4)])
    return trainer, model, reference, batch


@pytest.mark.parametrize("projection", ["per_tensor", "global", "none"])
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_fast_path_equals_naive_full_forward_with_model_copy(
    tmp_path, tokenizer, forget_retain, projection, padding_side
):
    trainer, model, reference, batch = _shifted_trainer_and_reference(
        tmp_path, tokenizer, forget_retain, padding_side, projection=projection
    )
    forget_loss, retain_loss, expected = _naive_step(
        model,
        reference,
        LAYER,
        batch,
        trainer.falcon_state.trainable_names,
        trainer.falcon_state.pov,
        trainer.falcon_config,
    )
    model.zero_grad(set_to_none=True)
    surrogate = trainer.compute_loss(model, batch)
    surrogate.backward()
    assert surrogate.item() == pytest.approx((forget_loss + retain_loss).item(), rel=1e-5, abs=1e-6)
    assert trainer._falcon_metrics["falcon/forget_loss"][-1].item() == pytest.approx(
        forget_loss.item(), rel=1e-5
    )
    assert trainer._falcon_metrics["falcon/retain_loss"][-1].item() == pytest.approx(
        retain_loss.item(), rel=1e-4, abs=1e-7
    )
    params = dict(model.named_parameters())
    for name, grad in zip(trainer.falcon_state.trainable_names, expected, strict=True):
        assert torch.allclose(params[name].grad, grad, rtol=1e-4, atol=1e-6), name
    frozen_names = set(params) - set(trainer.falcon_state.trainable_names)
    assert all(params[n].grad is None for n in frozen_names)


def test_sam_rho_takes_the_forget_gradient_at_the_ascent_point_and_restores_the_weights(
    tmp_path, tokenizer, forget_retain
):
    """g_F at θ + ρ g_F/‖g_F‖ (full forwards at the shifted weights), g_R at θ, then the projection."""
    rho = 0.5
    trainer, model, reference, batch = _shifted_trainer_and_reference(
        tmp_path, tokenizer, forget_retain, sam_rho=rho
    )
    cfg, state = trainer.falcon_config, trainer.falcon_state
    params = dict(model.named_parameters())
    trainable = [params[n] for n in state.trainable_names]
    naive = (model, reference, LAYER, batch, state.trainable_names, state.pov, cfg)
    forget_loss, _, g_f, g_r = _naive_gradients(*naive)
    before = [p.detach().clone() for p in trainable]
    with perturbed(trainable, sam_perturbation(g_f, rho)):
        adv_loss, _, g_f_adv, _ = _naive_gradients(*naive)
    expected = resolve_gradient_conflict(
        g_f_adv, g_r, cfg.projection, cfg.conflict_weights, cfg.align_weights
    )
    assert adv_loss.item() > forget_loss.item()  # an ascent step on L_F
    assert not torch.allclose(g_f_adv[0], g_f[0], rtol=1e-2)  # the step is large enough to tell them apart

    model.zero_grad(set_to_none=True)
    trainer.compute_loss(model, batch).backward()
    assert all(torch.equal(p, b) for p, b in zip(trainable, before, strict=True))  # θ, not θ + δ
    for name, grad in zip(state.trainable_names, expected.grads, strict=True):
        assert torch.allclose(params[name].grad, grad, rtol=1e-4, atol=1e-6), name
    metrics = trainer._falcon_metrics
    assert metrics["falcon/forget_loss"][-1].item() == pytest.approx(forget_loss.item(), rel=1e-5)
    assert metrics["falcon/sam_forget_loss"][-1].item() == pytest.approx(adv_loss.item(), rel=1e-5)


def test_sam_rho_is_refused_under_zero3_before_training(tmp_path, tokenizer, forget_retain, monkeypatch):
    import transformers.integrations

    monkeypatch.setattr(transformers.integrations, "is_deepspeed_zero3_enabled", lambda: True)
    with pytest.raises(FalconConfigError, match=r"sam_rho=0\.1 is not supported under DeepSpeed ZeRO-3"):
        make_trainer(tmp_path, tiny_llama(), forget_retain, tokenizer, layer=3, sam_rho=0.1)
    make_trainer(tmp_path, tiny_llama(), forget_retain, tokenizer, layer=3)  # without sam_rho it is built


def test_no_layer_above_l_star_or_lm_head_runs(tmp_path, tokenizer, forget_retain):
    model = tiny_llama(num_layers=6)
    trainer = make_trainer(tmp_path, model, forget_retain, tokenizer, layer=2)
    trainer._setup(None)
    calls = []
    hooks = [
        m.register_forward_hook(lambda mod, i, o, name=name: calls.append(name))
        for name, m in [("lm_head", model.lm_head), ("norm", model.model.norm)]
        + [(f"layer{i}", model.model.layers[i]) for i in range(6)]
    ]
    batch = ForgetRetainCollator(0)([forget_retain[i] for i in range(2)])
    trainer.compute_loss(model, batch)
    for h in hooks:
        h.remove()
    assert "lm_head" not in calls and "norm" not in calls
    assert not any(c in calls for c in ("layer3", "layer4", "layer5"))
    # each batch (forget, retain): frozen pass through 0..2, then live pass through trainable layers 0..2
    assert calls.count("layer0") == 4 and calls.count("layer2") == 4


def test_layer_auto_picks_the_argmin_and_writes_its_report(tmp_path, tokenizer, forget_retain):
    model = tiny_llama(num_layers=5)
    trainer = make_trainer(
        tmp_path,
        model,
        forget_retain,
        tokenizer,
        layer="auto",
        mi={"criterion": "paper", "samples": 16, "estimator": "gaussian"},
    )
    trainer.train()
    report = json.loads((tmp_path / "mi_report.json").read_text())
    assert (tmp_path / "mi_report.png").stat().st_size > 1000
    assert len(report["scores"]) == 5
    argmin = min(range(5), key=lambda i: (report["scores"][i], i))
    assert report["chosen_layer"] == argmin == trainer.falcon_layer
    expected = {
        f"model.layers.{i}.mlp.{m}.weight" for i in range(max(0, argmin - 2), argmin + 1) for m in MLP_WEIGHTS
    }
    assert set(trainer.falcon_state.trainable_names) == expected


def test_gradient_accumulation_and_clipping_run(tmp_path, tokenizer, forget_retain):
    model = tiny_llama()
    args = make_args(tmp_path, gradient_accumulation_steps=2, max_grad_norm=0.01, max_steps=2)
    trainer = make_trainer(tmp_path, model, forget_retain, tokenizer, layer=2, args=args)
    trainer.train()
    grad_norms = [e["grad_norm"] for e in trainer.state.log_history if "grad_norm" in e]
    assert len(grad_norms) == 2 and all(g > 0 for g in grad_norms)


def test_unlearning_pushes_forget_activations_away_and_keeps_retain(tmp_path, tokenizer, forget_retain):
    model = tiny_llama(num_layers=4, hidden=48)
    args = make_args(tmp_path, max_steps=30, learning_rate=3e-3, logging_steps=10)
    trainer = make_trainer(tmp_path, model, forget_retain, tokenizer, layer=2, args=args)
    trainer.train()
    logs = [e for e in trainer.state.log_history if "falcon/forget_loss" in e]
    assert logs[-1]["falcon/forget_loss"] < logs[0]["falcon/forget_loss"] - 0.05
    assert (
        logs[-1]["falcon/retain_loss"] < 5.0
    )  # 100 * (1 - cos): retain activations stay aligned (cos > 0.95)


def test_host_style_class_factory(tmp_path, tokenizer, forget_retain):
    class HostBase(Trainer):
        def __init__(self, evaluators=None, template_args=None, *args, **kwargs):
            self.evaluators, self.template_args = evaluators, template_args
            super().__init__(*args, **kwargs)

    cls = falcon_trainer_class(HostBase)
    assert cls.__name__ == "FALCON" and issubclass(cls, FalconMixin) and issubclass(cls, HostBase)
    trainer = cls(
        model=tiny_llama(),
        train_dataset=forget_retain,
        eval_dataset=None,
        tokenizer=tokenizer,
        data_collator=ForgetRetainCollator(0),
        args=make_args(tmp_path),
        evaluators={"x": 1},
        template_args={"t": 1},
        layer=1,
        temperature=0.5,
    )
    assert trainer.evaluators == {"x": 1} and trainer.falcon_config.temperature == 0.5
    with pytest.raises(TypeError, match="Trainer subclass"):
        falcon_trainer_class(object)


def test_thirty_layer_model_trains_at_layer_seven(tmp_path, tokenizer):
    model = tiny_llama(num_layers=30, hidden=32)
    dataset = ForgetRetainDataset(qa_items(tokenizer, 8, "zq", 3), qa_items(tokenizer, 8, "ab", 4))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = make_trainer(
        tmp_path, model, dataset, tokenizer, layer=7, args=make_args(tmp_path, max_steps=2)
    )
    trainer.train()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {f"model.layers.{i}.mlp.{m}.weight" for i in (5, 6, 7) for m in MLP_WEIGHTS}


def test_optimizer_has_no_empty_parameter_groups(tmp_path, tokenizer, forget_retain):
    """DeepSpeed drops empty groups and the LR scheduler then fails: FALCON never creates one."""
    trainer = make_trainer(tmp_path, tiny_llama(), forget_retain, tokenizer, layer=2)
    trainer.train()
    groups = trainer.optimizer.param_groups
    assert groups and all(group["params"] for group in groups)
    assert sum(len(g["params"]) for g in groups) == 3 * len(MLP_WEIGHTS)
