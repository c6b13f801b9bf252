"""Running recovery attacks on a saved model folder: validate, measure before, attack, measure after.

Copy-on-write: the model folder is only read. Each attack starts from a fresh load of it, changes the
weights in memory, and anything written goes under ``out`` (``attacks.json`` atomically, and with
``save_models`` the attacked models, each saved to a temporary folder and renamed into place). Every
input is checked (attack names, options, data, the output folder) before the model is loaded.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from falcon_plugin.atomic import atomic_write_json

from ..common.errors import InputError
from ..common.hf import load_causal_lm
from .data import AttackData, encode_train, resolve_template
from .lora import check_peft, relearn_lora
from .metrics import evaluate_part
from .quantize import quantize_weights
from .relearn import relearn
from .result import RESULT_FILE, SCHEMA
from .specs import LoraSpec, QuantSpec, RelearnSpec

logger = logging.getLogger(__name__)
ATTACKS = ("relearn", "relearn-lora", "quantize-8bit", "quantize-4bit")
ALIASES = {"quantize": ("quantize-8bit", "quantize-4bit"), "all": ATTACKS}
_QUANT = re.compile(r"quantize-(\d+)bit")


@dataclass(frozen=True)
class AttackOptions:
    """Everything an attack run depends on besides the model and the data."""

    seed: int = 0
    template: str = "auto"
    """How QA pairs are formatted: ``plain`` (``Question: ...\\nAnswer: ...``), ``chat`` (the tokenizer's
    chat template with the host's system prompt), ``auto`` (chat when the tokenizer has a template)."""
    max_length: int = 256
    max_new_tokens: int | None = None
    batch_size: int = 16
    """Evaluation batch size."""
    eval_train: bool = True
    """Also measure the train part (what the fine-tuning attacks saw)."""
    save_models: bool = False
    """Write each attacked model to ``out/models/<attack>/`` (LoRA: merged)."""
    progress: bool = True
    relearn: RelearnSpec = field(default_factory=RelearnSpec)
    lora: LoraSpec = field(default_factory=LoraSpec)
    quant: QuantSpec = field(default_factory=QuantSpec)


def parse_attacks(attacks: str | Iterable[str]) -> tuple[str, ...]:
    """Attack names (a comma-separated string or a sequence) -> unique names in order; aliases expanded."""
    items = [a.strip() for a in (attacks.split(",") if isinstance(attacks, str) else attacks)]
    out: list[str] = []
    for name in items:
        if not name:
            continue
        expanded = ALIASES.get(name, (name,))
        for item in expanded:
            if item not in ATTACKS and not _QUANT.fullmatch(item):
                known = ", ".join([*ATTACKS, *ALIASES, "quantize-<N>bit"])
                raise InputError(f"unknown attack {name!r}; expected some of {known}")
            if item not in out:
                out.append(item)
    if not out:
        raise InputError("no attack given")
    return tuple(out)


def _bits(name: str) -> int | None:
    match = _QUANT.fullmatch(name)
    return int(match.group(1)) if match else None


def validate(
    model_dir: str | Path, attacks: Sequence[str], options: AttackOptions, out: str | Path | None
) -> None:
    """Every check that needs no model: options, model folder layout, and ``out`` outside the model folder."""
    if options.max_length < 8:
        raise InputError(f"max length must be >= 8, got {options.max_length}")
    if options.max_new_tokens is not None and options.max_new_tokens < 1:
        raise InputError(f"max new tokens must be >= 1, got {options.max_new_tokens}")
    if options.batch_size < 1:
        raise InputError(f"batch size must be >= 1, got {options.batch_size}")
    for name in attacks:
        if name == "relearn":
            options.relearn.validate()
        elif name == "relearn-lora":
            options.lora.validate()
            check_peft()
        else:
            options.quant.validate(_bits(name))
    model_path = Path(model_dir)
    if not model_path.is_dir():
        raise InputError(f"model folder not found: {model_path}")
    if not (model_path / "config.json").is_file():
        raise InputError(f"model folder has no config.json (not a Hugging Face model folder): {model_path}")
    if options.save_models and out is None:
        raise InputError("save_models needs an output folder (out)")
    if out is not None:
        target = Path(out).resolve()
        if target == model_path.resolve() or model_path.resolve() in target.parents:
            raise InputError(f"--out {out} is inside the model folder {model_dir}; attacks never write there")


def _versions(attacks: Sequence[str]) -> dict[str, str]:
    import transformers

    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    if "relearn-lora" in attacks:
        import peft

        versions["peft"] = peft.__version__
    return versions


def _measure(
    model: torch.nn.Module, tokenizer: Any, data: AttackData, template: str, options: AttackOptions
) -> dict[str, float]:
    kwargs = {
        "max_length": options.max_length,
        "max_new_tokens": options.max_new_tokens,
        "batch_size": options.batch_size,
    }
    metrics = {
        f"forget_{k}": v for k, v in evaluate_part(model, tokenizer, data.test, template, **kwargs).items()
    }
    if options.eval_train:
        train = evaluate_part(model, tokenizer, data.train, template, **kwargs)
        metrics.update({f"forget_train_{k}": v for k, v in train.items()})
    return metrics


def _save_model(model: torch.nn.Module, tokenizer: Any, target: Path) -> None:
    """``save_pretrained`` into a temporary sibling folder, then rename it into place."""
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def run_attacks(
    model_dir: str | Path,
    data: AttackData,
    attacks: str | Iterable[str] = ("relearn",),
    options: AttackOptions | None = None,
    out: str | Path | None = None,
) -> dict[str, Any]:
    """Run ``attacks`` on the model in ``model_dir``; returns the result (and writes it to ``out``).

    The result's layout is :mod:`.result`'s (``attacks.json``). ``before`` is measured once on the
    unattacked model and repeated in every attack's entry, so each entry reads on its own.
    """
    options = options or AttackOptions()
    names = parse_attacks(attacks)
    validate(model_dir, names, options, out)
    out_path = Path(out) if out is not None else None
    if out_path is not None:
        out_path.mkdir(parents=True, exist_ok=True)
    model_dir = Path(model_dir)

    tokenizer, model = load_causal_lm(model_dir)
    template = resolve_template(tokenizer, options.template)
    train_examples = encode_train(tokenizer, data.train, template, options.max_length)
    start = time.perf_counter()
    before = _measure(model, tokenizer, data, template, options)
    logger.info("before: %s (%.1f s)", before, time.perf_counter() - start)

    entries: dict[str, Any] = {}
    protocol: dict[str, Any] = {}
    for i, name in enumerate(names):
        start = time.perf_counter()
        if i > 0:  # a fresh copy of the folder's weights for every attack
            tokenizer, model = load_causal_lm(model_dir)
        torch.manual_seed(options.seed)
        if name == "relearn":
            details = relearn(
                model, train_examples, tokenizer.pad_token_id, options.relearn, options.seed, options.progress
            )
            protocol[name] = options.relearn.protocol()
        elif name == "relearn-lora":
            model, details = relearn_lora(
                model, train_examples, tokenizer.pad_token_id, options.lora, options.seed, options.progress
            )
            protocol[name] = options.lora.protocol(len(train_examples))
        else:
            bits = _bits(name)
            details = quantize_weights(model, bits, options.quant)
            protocol[name] = options.quant.protocol(bits)
        after = _measure(model, tokenizer, data, template, options)
        entries[name] = {"before": dict(before), "after": after, "details": details}
        logger.info("%s: after %s (%.1f s)", name, after, time.perf_counter() - start)
        if options.save_models and out_path is not None:
            _save_model(model, tokenizer, out_path / "models" / name)
        del model

    result = {
        "schema": SCHEMA,
        "model": str(model_dir.resolve()),
        "seed": options.seed,
        "data": {**data.describe(), "template": template},
        "attacks": entries,
        "protocol": protocol,
        "versions": _versions(names),
    }
    if out_path is not None:
        atomic_write_json(out_path / RESULT_FILE, result)
        logger.info("attack result written to %s", out_path / RESULT_FILE)
    return result


__all__ = ["ALIASES", "ATTACKS", "AttackOptions", "parse_attacks", "run_attacks", "validate"]
