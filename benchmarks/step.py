"""Benchmark one FALCON training step against the official scheme, RMU and a forward-only floor.

Issue 5. Variants, measured side by side in one process, interleaved (ABCDABCD...), medians:

* ``ours``: the trainer's exact step: ``FALCON.compute_loss`` (frozen prefix pass 0..l* and a grad
  pass through the trainable layers, per-loss ``autograd.grad``, projection), ``backward`` of the
  surrogate, ``AdamW.step`` on the trainable tensors;
* ``official``: the official FALCON loop (github CharlesJW222/FALCON ``falcon/unlearning.py``): two
  full models, four full forwards with a hook at l*, two ``backward(retain_graph=True)``, per-tensor
  projection with ``.item()`` host syncs, optimizer step;
* ``rmu``: open-unlearning's RMU step (``src/trainer/unlearn/rmu.py`` under the HF Trainer):
  deep-copied reference model, full forwards (with labels) and a hook at l*, MSE losses, one
  backward, optimizer step;
* ``floor``: two no-grad forwards through layers 0..l* only (forget and retain).

Peak memory is measured per variant in a fresh subprocess (``--only X --memory``). MI layer
selection (``falcon_plugin.report.run_mi_selection``, all layers) is timed against one batched
forward pass over the same samples.

Run ``python benchmarks/step.py --help``; results go to ``benchmarks/results/step-<device>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as dt
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks.common import (  # noqa: E402
    REPO_ROOT,
    BenchData,
    PeakMemory,
    command_line,
    decoder_layers,
    environment,
    forward_to_layer,
    forward_with_cache,
    load_data,
    load_model,
    markdown_table,
    split_rows,
    summarize,
    timed,
    to_device,
)

logger = logging.getLogger("benchmarks.step")

SCHEMA = "falcon-bench-step/1"
VARIANTS = ("ours", "official", "rmu", "floor")
DESCRIPTIONS = {
    "ours": "FALCON.compute_loss (prefix pass 0..l* no-grad + grad pass first..l*) + backward + AdamW",
    "official": "2 models, 4 full forwards, 2 backward(retain_graph), per-tensor projection with .item(), step",
    "rmu": "host RMU: ref deepcopy, 3 full forwards (labels), MSE, 1 backward, step",
    "floor": "2 no-grad forwards through layers 0..l* (forget, retain)",
}
TARGETS = (
    # name, metric, threshold
    ("step_vs_official", "step time ours / official", 0.35),
    ("step_vs_rmu", "step time ours / rmu", 0.5),
    ("step_vs_floor", "step time ours / floor", 2.0),
    ("memory_vs_official", "peak memory ours / official", 0.6),
    ("mi_vs_forward", "MI selection / one batched forward", 1.5),
)
LR = 1e-5
STEERING_COEFF = 20.0
RETAIN_WEIGHT = 100.0
TEMPERATURE = 0.7
CONFLICT_WEIGHTS = (0.8, 1.2)
ALIGN_WEIGHTS = (0.1, 1.9)


def trainable_names(layer: int) -> list[str]:
    """The benchmark's trainable tensors: MLP down-projections of layers l*-2..l*."""
    return [f"model.layers.{i}.mlp.down_proj.weight" for i in range(max(0, layer - 2), layer + 1)]


# ---------------------------------------------------------------------------------------------- variants
class StepVariant:
    """One training-step implementation: set up in ``__init__`` (untimed), ``step()`` is timed."""

    name = ""

    def step(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release temporary resources (untimed)."""


class OursStep(StepVariant):
    """The plugin's step through ``falcon_plugin.trainer.FALCON`` (its ``compute_loss``, as the Trainer calls it)."""

    name = "ours"

    def __init__(self, model: nn.Module, data: BenchData, layer: int, device: torch.device) -> None:
        from transformers import TrainingArguments

        from falcon_plugin.data import ForgetRetainDataset
        from falcon_plugin.trainer import FALCON

        self.model = model
        self.tmpdir = tempfile.mkdtemp(prefix="falcon-bench-")
        dataset = ForgetRetainDataset(split_rows(data.forget), split_rows(data.retain), seed=0)
        args = TrainingArguments(
            output_dir=self.tmpdir, report_to="none", use_cpu=device.type == "cpu", seed=0,
            per_device_train_batch_size=data.forget["input_ids"].shape[0], save_strategy="no", disable_tqdm=True,
        )
        self.trainer = FALCON(model=model, args=args, train_dataset=dataset, layer=layer)  # default: down_proj l*-2..l*
        self.trainer._setup(None)  # what train() runs first: trainable flags, frozen copies, POV
        state = self.trainer.falcon_state
        assert state is not None
        params = dict(model.named_parameters())
        self.params = [params[n] for n in state.trainable_names]
        self.optimizer = torch.optim.AdamW(self.params, lr=LR)
        self.inputs = {"forget": to_device(data.forget, device), "retain": to_device(data.retain, device)}

    def step(self) -> None:
        loss = self.trainer.compute_loss(self.model, self.inputs)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def close(self) -> None:
        shutil.rmtree(self.tmpdir, ignore_errors=True)


def _unit_vector(dim: int, seed: int = 0) -> torch.Tensor:
    vector = torch.randn(dim, generator=torch.Generator().manual_seed(seed))
    return vector / vector.norm()


class OfficialStep(StepVariant):
    """The official FALCON loop body (``falcon/unlearning.py`` + ``algorithms.py``), re-written here.

    As there: every parameter of the train model keeps ``requires_grad=True`` (only the optimizer's
    tensors are zeroed), the reference model is a second full model, each activation comes from a
    full forward (LM head included) with a forward hook at l*, and the projection decides per tensor
    on the host (``cos.item()``). The optimizer is AdamW here (the official code uses SophiaG) so
    every variant pays the same update; the steering vector is made once, untimed.
    """

    name = "official"

    def __init__(self, model: nn.Module, data: BenchData, layer: int, device: torch.device) -> None:
        self.train_model = model.train()
        for param in model.parameters():
            param.requires_grad_(True)
        self.ref_model = copy.deepcopy(model).eval()
        self.train_module = decoder_layers(self.train_model)[layer]
        self.ref_module = decoder_layers(self.ref_model)[layer]
        params = dict(self.train_model.named_parameters())
        self.params = [params[n] for n in trainable_names(layer)]
        self.optimizer = torch.optim.AdamW(self.params, lr=LR)
        self.steer = _unit_vector(model.config.hidden_size).to(device, next(model.parameters()).dtype).view(1, 1, -1)
        self.forget = to_device(data.forget, device)
        self.retain = to_device(data.retain, device)

    @staticmethod
    def contrastive_loss(anchor: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        anchor, positive = F.normalize(anchor, dim=-1), F.normalize(positive, dim=-1)
        negatives = F.normalize(negatives, dim=-1).unsqueeze(2)
        pos = torch.sum(anchor * positive, dim=-1, keepdim=True)
        neg = torch.einsum("bld,blnd->bln", anchor, negatives)
        logits = torch.cat([pos, neg], dim=-1) / TEMPERATURE
        target = torch.zeros(logits.size(0) * logits.size(1), dtype=torch.long, device=logits.device)
        return F.cross_entropy(logits.view(-1, logits.size(-1)), target)

    @staticmethod
    def project(unlearn: list[torch.Tensor], retain: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[float]]:
        combined, cosines = [], []
        for u, r in zip(unlearn, retain, strict=True):
            cos = F.cosine_similarity(u.view(-1), r.view(-1), dim=0)
            cosines.append(cos.item())
            if cos < 0:
                proj = u - (torch.dot(u.view(-1), r.view(-1)) / torch.dot(r.view(-1), r.view(-1))) * r
                combined.append(CONFLICT_WEIGHTS[0] * proj + CONFLICT_WEIGHTS[1] * r)
            else:
                combined.append(ALIGN_WEIGHTS[0] * u + ALIGN_WEIGHTS[1] * r)
        return combined, cosines

    def step(self) -> None:
        train_forget = forward_with_cache(self.train_model, self.forget, self.train_module, grad=True)
        ref_forget = forward_with_cache(self.ref_model, self.forget, self.ref_module, grad=False)
        train_retain = forward_with_cache(self.train_model, self.retain, self.train_module, grad=True)
        ref_retain = forward_with_cache(self.ref_model, self.retain, self.ref_module, grad=False)
        steering = self.steer.expand(train_forget.size(0), train_forget.size(1), -1) * STEERING_COEFF
        unlearn_loss = self.contrastive_loss(train_forget, steering, ref_forget)
        retain_loss = (1 - F.cosine_similarity(train_retain, ref_retain, dim=-1).mean()) * RETAIN_WEIGHT
        self.optimizer.zero_grad()
        unlearn_loss.backward(retain_graph=True)
        unlearn_grads = [p.grad.clone() for p in self.params]
        self.optimizer.zero_grad()
        retain_loss.backward(retain_graph=True)
        retain_grads = [p.grad.clone() for p in self.params]
        final, _cosines = self.project(unlearn_grads, retain_grads)
        for param, grad in zip(self.params, final, strict=True):
            param.grad = grad
        self.optimizer.step()
        # the official loop's per-step logging: three loss .item() calls and the update size
        _ = unlearn_loss.item() + retain_loss.item(), self.params[0].grad.abs().mean().item()


class RMUStep(StepVariant):
    """open-unlearning's RMU step (``src/trainer/unlearn/rmu.py``) as the HF Trainer runs it, re-written here.

    As there: the reference model is a deep copy; ``create_optimizer`` builds the optimizer on the
    trainable tensors and then sets ``requires_grad=True`` on *every* parameter, so the backward
    computes gradients down to the embeddings; forwards carry ``labels`` (the LM loss is computed
    and discarded); ``retain_loss_type: EMBED_DIFF`` (configs/trainer/RMU.yaml); the Trainer's
    ``model.zero_grad()`` after each step. No gradient clipping (no variant clips).
    """

    name = "rmu"

    def __init__(self, model: nn.Module, data: BenchData, layer: int, device: torch.device) -> None:
        self.model = model.train()
        self.ref_model = copy.deepcopy(model).eval()
        params = dict(model.named_parameters())
        self.params = [params[n] for n in trainable_names(layer)]
        self.optimizer = torch.optim.AdamW(self.params, lr=LR)
        for param in model.parameters():
            param.requires_grad_(True)
        self.module = decoder_layers(self.model)[layer]
        self.ref_module = decoder_layers(self.ref_model)[layer]
        self.control = _unit_vector(model.config.hidden_size, seed=1).abs().view(1, 1, -1) * STEERING_COEFF
        self.forget = to_device(data.forget, device)
        self.retain = to_device(data.retain, device)
        self.gamma, self.alpha = 1.0, 1.0

    @staticmethod
    def activation_loss(activation1: torch.Tensor, activation2: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        squared = F.mse_loss(activation1, activation2, reduction="none")
        summed = (squared * mask.unsqueeze(-1).expand_as(squared)).mean(dim=2).sum(dim=1)
        return (summed / mask.sum(dim=-1, keepdim=True)).mean()  # (b,)/(b,1) broadcast, as the host

    def compute_loss(self) -> torch.Tensor:
        forget_acts = forward_with_cache(self.model, self.forget, self.module, grad=True, with_labels=True)
        control = self.control.to(forget_acts.device, forget_acts.dtype).expand_as(forget_acts)
        forget_loss = self.activation_loss(forget_acts, control, self.forget["labels"] != -100)
        retain_acts = forward_with_cache(self.model, self.retain, self.module, grad=True, with_labels=True)
        ref_acts = forward_with_cache(self.ref_model, self.retain, self.ref_module, grad=False, with_labels=True)
        retain_loss = self.activation_loss(retain_acts, ref_acts, self.retain["labels"] != -100)
        return self.gamma * forget_loss + self.alpha * retain_loss

    def step(self) -> None:
        loss = self.compute_loss()
        loss.backward()
        self.optimizer.step()
        self.model.zero_grad(set_to_none=True)


class FloorStep(StepVariant):
    """The floor: two no-grad forwards through layers 0..l* only."""

    name = "floor"

    def __init__(self, model: nn.Module, data: BenchData, layer: int, device: torch.device) -> None:
        self.model = model.eval()
        self.layer = decoder_layers(model)[layer]
        self.forget = to_device(data.forget, device)
        self.retain = to_device(data.retain, device)

    def step(self) -> None:
        with torch.no_grad():
            forward_to_layer(self.model, self.forget, self.layer)
            forward_to_layer(self.model, self.retain, self.layer)


VARIANT_CLASSES: dict[str, type[StepVariant]] = {
    "ours": OursStep, "official": OfficialStep, "rmu": RMUStep, "floor": FloorStep,
}


def build_variant(name: str, model: nn.Module, data: BenchData, layer: int, device: torch.device) -> StepVariant:
    """Set up variant ``name`` on ``model`` (which it may modify: pass a copy to keep the original)."""
    return VARIANT_CLASSES[name](model, data, layer, device)  # type: ignore[call-arg]


# ---------------------------------------------------------------------------------------------- measurements
def run_timing(model: nn.Module, data: BenchData, layer: int, device: torch.device, names: Sequence[str],
               warmup: int, repeats: int, profile: bool = False) -> dict[str, Any]:
    """Time each variant's step, interleaved (ABCD ABCD ...), after ``warmup`` untimed rounds."""
    variants: dict[str, StepVariant] = {}
    for name in names:
        own = model if name == "floor" else copy.deepcopy(model)  # no variant sees another's flags or updates
        variants[name] = build_variant(name, own, data, layer, device)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(warmup + repeats):
        for name, variant in variants.items():
            seconds = timed(variant.step, device)
            logger.info("round %d %-8s %.3f s%s", round_index, name, seconds, " (warm-up)" if round_index < warmup else "")
            if round_index >= warmup:
                times[name].append(seconds)
    if profile:
        for name, variant in variants.items():
            profile_step(name, variant.step)
    for variant in variants.values():
        variant.close()
    result = {
        "order": list(names),
        "warmup": warmup,
        "repeats": repeats,
        "variants": {name: {"description": DESCRIPTIONS[name], **summarize(ts)} for name, ts in times.items()},
    }
    result["ratios"] = _ratios({n: v["median_s"] for n, v in result["variants"].items()})
    # extra, not used for the targets: the median over rounds of ours/X within the same round (robust to
    # load drifting between rounds on a shared machine)
    result["paired_ratio_medians"] = {
        f"ours/{other}": statistics.median(a / b for a, b in zip(times["ours"], times[other], strict=True))
        for other in names if other != "ours" and "ours" in times
    }
    return result


def profile_step(name: str, step: Callable[[], None], rows: int = 25) -> str:
    """One step under ``torch.profiler`` (CPU, plus CUDA when available); logs and returns the op table."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities, record_shapes=False) as prof:
        step()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
    logger.info("profile of %s:\n%s", name, table)
    return table


def _ratios(values: dict[str, float]) -> dict[str, float | None]:
    ours = values.get("ours")
    return {
        f"ours/{other}": (ours / values[other] if ours is not None and values.get(other) else None)
        for other in VARIANTS if other != "ours"
    }


def run_memory_child(args: argparse.Namespace) -> dict[str, Any]:
    """Peak memory of one variant (``args.only``) in this process: load, reset the peak, set up, run steps."""
    (name,) = args.only
    device = torch.device(args.device)
    loaded = load_model(args.model, args.layers, args.hidden, _dtype(args.dtype), args.device, args.seed)
    layer = _layer(args.layer, loaded.info["layers"])
    data = load_data(loaded.tokenizer, loaded.info["vocab"], args.batch, args.seq_len, 0, args.seed)
    _preimport()
    meter = PeakMemory(device)
    meter.reset()
    variant = build_variant(name, loaded.model, data, layer, device)
    for _ in range(args.memory_steps):
        variant.step()
    peak = meter.peak_mib()
    variant.close()
    return {
        "variant": name,
        "peak_mib": round(peak, 1),
        "baseline_mib": round(meter.baseline_mib, 1),
        "delta_mib": round(peak - meter.baseline_mib, 1),
        "steps": args.memory_steps,
        "method": meter.method,
    }


def _preimport() -> None:
    """Import what any variant may import lazily (HF Trainer, DeepSpeed) so no variant's peak counts module code."""
    import transformers.trainer  # noqa: F401

    import falcon_plugin.trainer  # noqa: F401

    with contextlib.suppress(Exception):  # the HF Trainer imports it on construction when installed
        import deepspeed  # noqa: F401


def _child_argv(args: argparse.Namespace) -> list[str]:
    argv = ["--model", args.model, "--seq-len", str(args.seq_len), "--batch", str(args.batch),
            "--device", args.device, "--dtype", args.dtype, "--layer", str(args.layer), "--seed", str(args.seed),
            "--memory-steps", str(args.memory_steps), "--log-level", "WARNING"]
    if args.layers is not None:
        argv += ["--layers", str(args.layers)]
    if args.hidden is not None:
        argv += ["--hidden", str(args.hidden)]
    if args.threads is not None:
        argv += ["--threads", str(args.threads)]
    return argv


def run_memory(args: argparse.Namespace, names: Sequence[str]) -> dict[str, Any]:
    """Peak memory per variant, each in a fresh subprocess (``--only NAME --memory``), ``--memory-jobs`` at a time."""
    import json

    script = str(Path(__file__).resolve())
    tmpdir = Path(tempfile.mkdtemp(prefix="falcon-bench-mem-"))
    results: dict[str, dict[str, Any]] = {}
    try:
        pending = list(names)
        while pending:
            batch, pending = pending[: args.memory_jobs], pending[args.memory_jobs :]
            procs = []
            for name in batch:
                out = tmpdir / f"{name}.json"
                cmd = [sys.executable, script, *_child_argv(args), "--only", name, "--memory", "--memory-out", str(out)]
                logger.info("memory: %s", " ".join(cmd[1:]))
                env = {**os.environ, "TQDM_DISABLE": "1"}  # no model-loading progress bars from the children
                procs.append((name, out, subprocess.Popen(cmd, cwd=REPO_ROOT, env=env)))
            for name, out, proc in procs:
                if proc.wait() != 0:
                    raise RuntimeError(f"memory subprocess for {name!r} failed with exit code {proc.returncode}")
                results[name] = json.loads(out.read_text(encoding="utf-8"))
                logger.info("memory %-8s peak %.1f MiB (baseline %.1f MiB)", name, results[name]["peak_mib"],
                            results[name]["baseline_mib"])
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return summarize_memory(results)


def summarize_memory(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Memory section of the JSON from per-variant child results."""
    methods = {r["method"] for r in results.values()}
    return {
        "method": "; ".join(sorted(methods)),
        "unit": "MiB",
        "variants": {n: {k: v for k, v in r.items() if k not in ("variant", "method")} for n, r in results.items()},
        "ratios": _ratios({n: r["peak_mib"] for n, r in results.items()}),
        "delta_ratios": _ratios({n: r["delta_mib"] for n, r in results.items()}),
    }


def run_mi(model: nn.Module, data: BenchData, device: torch.device, repeats: int, batch_size: int) -> dict[str, Any]:
    """``run_mi_selection`` over all layers vs one batched no-grad forward over the same samples, interleaved."""
    from falcon_plugin.config import MIConfig
    from falcon_plugin.data import pad_examples
    from falcon_plugin.report import run_mi_selection

    config = MIConfig(samples=len(data.mi_forget), batch_size=batch_size)
    batches = [
        to_device(pad_examples(part[i : i + batch_size], data.pad_token_id), device)
        for part in (data.mi_forget, data.mi_retain)
        for i in range(0, len(part), batch_size)
    ]
    model.eval()

    def forward() -> None:
        with torch.no_grad():
            for batch in batches:
                model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)

    reports: list[Any] = []

    def select() -> None:
        reports.append(run_mi_selection(model, [data.mi_forget], data.mi_retain, config,
                                        pad_token_id=data.pad_token_id, progress=False))

    with torch.no_grad():  # untimed warm-up on one batch
        model(input_ids=batches[0]["input_ids"], attention_mask=batches[0]["attention_mask"], use_cache=False)
    fwd_times: list[float] = []
    mi_times: list[float] = []
    for i in range(repeats):
        order = [(forward, fwd_times), (select, mi_times)]
        for fn, sink in order if i % 2 == 0 else order[::-1]:
            sink.append(timed(fn, device))
            logger.info("MI round %d %s %.3f s", i, "forward" if fn is forward else "mi_selection", sink[-1])
    fwd, mi = summarize(fwd_times), summarize(mi_times)
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    padded = sum(b["input_ids"].numel() for b in batches)
    return {
        "samples": {"forget": len(data.mi_forget), "retain": len(data.mi_retain)},
        "batch_size": batch_size,
        "tokens": tokens,
        "padded_tokens": padded,
        "layers_scored": len(reports[-1].scores),
        "chosen_layer": reports[-1].chosen_layer,
        "estimator": config.estimator,
        "forward": fwd,
        "mi_selection": mi,
        "mi_breakdown_s": reports[-1].timings,
        "ratio": mi["median_s"] / fwd["median_s"],
    }


# ---------------------------------------------------------------------------------------------- report
def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """PASS/FAIL (or SKIP when not measured) for each issue target."""
    step = (results.get("step") or {}).get("ratios", {})
    memory = (results.get("memory") or {}).get("ratios", {})
    mi = results.get("mi") or {}
    values = {
        "step_vs_official": step.get("ours/official"),
        "step_vs_rmu": step.get("ours/rmu"),
        "step_vs_floor": step.get("ours/floor"),
        "memory_vs_official": memory.get("ours/official"),
        "mi_vs_forward": mi.get("ratio"),
    }
    out = []
    for name, metric, threshold in TARGETS:
        value = values[name]
        status = "SKIP" if value is None else ("PASS" if value <= threshold else "FAIL")
        out.append({"name": name, "metric": metric, "value": value, "threshold": threshold, "status": status})
    return out


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def render_table(results: dict[str, Any]) -> str:
    """The human-readable summary (markdown): step times and memory, targets, MI."""
    step = results.get("step") or {"variants": {}}
    memory = results.get("memory") or {"variants": {}}
    ours_t = step["variants"].get("ours", {}).get("median_s")
    ours_m = memory["variants"].get("ours", {}).get("peak_mib")
    rows = []
    for name in VARIANTS:
        t = step["variants"].get(name)
        m = memory["variants"].get(name)
        if t is None and m is None:
            continue
        median = t["median_s"] if t else None
        peak = m["peak_mib"] if m else None
        paired = step.get("paired_ratio_medians", {}).get(f"ours/{name}", 1.0 if name == "ours" else None)
        rows.append([
            name, _fmt(median), f"{_fmt(t['min_s'])}-{_fmt(t['max_s'])}" if t else "-",
            _fmt(ours_t / median if ours_t and median else None, 2), _fmt(paired if t else None, 2),
            _fmt(peak, 0), _fmt(ours_m / peak if ours_m and peak else None, 2),
        ])
    parts = [markdown_table(["variant", "median step (s)", "range (s)", "ours / this (time)", "paired median",
                             "peak memory (MiB)", "ours / this (memory)"], rows)]
    mi = results.get("mi")
    if mi:
        samples = f"{mi['samples']['forget']}+{mi['samples']['retain']}"
        breakdown = mi["mi_breakdown_s"]
        parts.append(markdown_table(
            ["MI over all layers", "median (s)", "samples", "tokens", "of which"],
            [["one batched forward", _fmt(mi["forward"]["median_s"]), samples, mi["tokens"], "-"],
             ["run_mi_selection", _fmt(mi["mi_selection"]["median_s"]), samples, mi["tokens"],
              f"capture {breakdown['capture']:.1f} s, estimate {breakdown['estimate']:.1f} s"]],
        ))
    parts.append(markdown_table(
        ["target", "value", "threshold", "result"],
        [[t["metric"], _fmt(t["value"]), f"<= {t['threshold']}", t["status"]] for t in results["targets"]],
    ))
    return "\n\n".join(parts)


# ---------------------------------------------------------------------------------------------- CLI
def _dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def _layer(requested: int, layers: int) -> int:
    if requested < layers:
        return requested
    logger.warning("--layer %d does not exist in a %d-layer model; using l* = %d", requested, layers, layers - 1)
    return layers - 1


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="benchmarks/step.py",
        description="Benchmark one FALCON step (ours) against the official scheme, RMU and a forward-only floor; "
                    "peak memory per variant (fresh subprocesses); MI layer selection against one batched forward.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", default="auto",
                        help="auto (shared SmolLM2-135M-Instruct GGUF if present, else random), random, or a model folder")
    parser.add_argument("--layers", type=int, default=None, help="decoder layers of --model random (default 30)")
    parser.add_argument("--hidden", type=int, default=None, help="hidden size of --model random (default 576)")
    parser.add_argument("--layer", type=int, default=7, help="unlearning layer l*; trainable: down_proj of l*-2..l*")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per variant (medians reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per sequence")
    parser.add_argument("--batch", type=int, default=4, help="sequences per forget and per retain batch")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default=None,
                        help=f"comma-separated subset of {','.join(VARIANTS)} (timing); exactly one with --memory")
    parser.add_argument("--out", default=None, help="JSON output (default benchmarks/results/step-<device>.json)")
    parser.add_argument("--skip-step", action="store_true", help="do not time the step variants")
    parser.add_argument("--skip-mi", action="store_true", help="do not time MI selection")
    parser.add_argument("--skip-memory", action="store_true", help="do not measure peak memory")
    parser.add_argument("--mi-samples", type=int, default=200, help="forget and retain samples each for MI")
    parser.add_argument("--mi-batch", type=int, default=16, help="MI capture and forward batch size")
    parser.add_argument("--mi-max-len", type=int, default=256, help="MI samples are truncated to this many tokens")
    parser.add_argument("--mi-repeats", type=int, default=1, help="interleaved MI/forward rounds")
    parser.add_argument("--memory", action="store_true", help="child mode: peak memory of the single --only variant")
    parser.add_argument("--memory-out", default=None, help="child mode: write its JSON here")
    parser.add_argument("--memory-steps", type=int, default=2, help="steps run while measuring peak memory")
    parser.add_argument("--memory-jobs", type=int, default=1, help="memory subprocesses run at once")
    parser.add_argument("--profile", action="store_true", help="after timing, profile one step per variant (torch.profiler)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args(argv)
    only = list(VARIANTS) if args.only is None else [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in only if s not in VARIANTS]
    if unknown or not only:
        parser.error(f"--only: unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    if args.memory and len(only) != 1:
        parser.error("--memory needs exactly one --only variant")
    args.only = only
    for name in ("repeats", "seq_len", "batch", "mi_batch", "mi_max_len", "mi_repeats", "memory_steps", "memory_jobs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    if not args.skip_mi and args.mi_samples < 8:
        parser.error("--mi-samples must be >= 8 (MI selection's minimum)")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device available")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns (and writes) the results dict. In ``--memory`` mode, the child result."""
    from falcon_plugin.io import atomic_write_json

    args = parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.memory:
        result = run_memory_child(args)
        if args.memory_out:
            atomic_write_json(args.memory_out, result)
        return result

    device = torch.device(args.device)
    env_start = environment()
    loaded = load_model(args.model, args.layers, args.hidden, _dtype(args.dtype), args.device, args.seed)
    layer = _layer(args.layer, loaded.info["layers"])
    data = load_data(loaded.tokenizer, loaded.info["vocab"], args.batch, args.seq_len,
                     0 if args.skip_mi else args.mi_samples, args.seed, args.mi_max_len)
    logger.info("model %s, data %s, l* = %d", loaded.info, data.info, layer)
    results: dict[str, Any] = {
        "schema": SCHEMA,
        "command": command_line(argv),
        "created_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "environment": env_start,
        "config": {
            "device": args.device, "dtype": args.dtype, "seq_len": args.seq_len, "batch": args.batch,
            "layer": layer, "trainable": trainable_names(layer), "optimizer": f"AdamW(lr={LR})", "seed": args.seed,
        },
        "model": loaded.info,
        "data": data.info,
    }
    results["step"] = None if args.skip_step else run_timing(loaded.model, data, layer, device, args.only, args.warmup,
                                                             args.repeats, args.profile)
    results["mi"] = None if args.skip_mi else run_mi(loaded.model, data, device, args.mi_repeats, args.mi_batch)
    results["memory"] = None if args.skip_memory else run_memory(args, args.only)
    results["environment_end"] = {"loadavg": environment()["loadavg"]}
    results["targets"] = evaluate_targets(results)
    out = Path(args.out) if args.out else REPO_ROOT / "benchmarks" / "results" / f"step-{args.device}.json"
    atomic_write_json(out, results)
    print(render_table(results))  # the one print: the final table
    print(f"\nJSON: {out}")
    return results


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        main()
