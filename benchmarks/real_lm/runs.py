"""One unlearning run on the cached SmolLM2 target: train FALCON (or the RMU-style baseline), evaluate, cache.

A run is named by its settings; its JSON (metrics, greedy answers, logged losses, wall time) lands in
``$FALCON_CACHE/<group>/<name>.json`` and a finished run is never redone, so a cut-off grid resumes.
Everything runs on the library API, batch 4 forget + 4 retain, a constant learning rate, seed 0.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from benchmarks.real_lm import common

logger = logging.getLogger(__name__)

QUICK_SETS = ("forget", "forget_para_question", "retain", "retain_para_question", "real_authors")
QUICK_ROWS = 20


@dataclass(frozen=True)
class RunSpec:
    """What one run trains: the method, its learning rate and step budget, and its ``method_args``."""

    name: str
    learning_rate: float
    steps: int = 100
    method: str = "FALCON"
    method_args: dict[str, Any] = field(default_factory=dict)
    quick: bool = False
    """Evaluate on the first 20 rows of the forget / retain (trained and reworded) and real-author
    sets only."""


def mlp_regex(first: int, last: int, part: str = r".*") -> list[str]:
    """``model.layers.(first..last).mlp.<part>.weight`` (part ``.*``: gate, up and down projections)."""
    ids = "|".join(str(i) for i in range(max(0, first), last + 1))
    return [rf"model\.layers\.({ids})\.mlp\.{part}\.weight"]


def quick_sets(sets: dict[str, Any]) -> dict[str, Any]:
    """The first 20 rows of the forget / retain (trained and reworded) and real-author sets."""
    return {name: sets[name][:QUICK_ROWS] for name in QUICK_SETS}


def _trainer(
    spec: RunSpec, model: torch.nn.Module, tokenizer: Any, args: Any, dataset: Any, collator: Any
) -> Any:
    if spec.method == "FALCON":
        from falcon_plugin import FALCON

        return FALCON(
            model=model,
            args=args,
            train_dataset=dataset,
            tokenizer=tokenizer,
            data_collator=collator,
            **spec.method_args,
        )
    if spec.method == "RMU":
        from falcon_plugin.tools.demo.baselines import RMUBaseline

        return RMUBaseline(
            model=model,
            args=args,
            train_dataset=dataset,
            tokenizer=tokenizer,
            data_collator=collator,
            **spec.method_args,
        )
    raise ValueError(f"unknown method {spec.method!r}; expected FALCON or RMU")


def run(spec: RunSpec, group: str) -> dict[str, Any]:
    """Train ``spec`` from the cached target, evaluate, write and return the result (cached)."""
    from transformers import TrainingArguments

    from falcon_plugin.data import ForgetRetainCollator, ForgetRetainDataset

    path = common.CACHE / group / f"{spec.name}.json"
    if path.is_file():
        return json.loads(path.read_text())
    target = common.CACHE / "models" / "target"
    tokenizer = common.load_tokenizer(target)
    model = common.load_model(target)
    forget, retain = common.train_rows()
    encode = lambda rows: [common.encode_chat(tokenizer, r["question"], r["answer"]) for r in rows]  # noqa: E731
    args = TrainingArguments(
        output_dir=str(common.CACHE / "work" / spec.name),
        per_device_train_batch_size=4,
        max_steps=spec.steps,
        learning_rate=spec.learning_rate,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        logging_steps=10,
        save_strategy="no",
        report_to=[],
        seed=0,
        use_cpu=True,
        disable_tqdm=True,
    )
    start = time.perf_counter()
    trainer = _trainer(
        spec,
        model,
        tokenizer,
        args,
        ForgetRetainDataset(encode(forget), encode(retain), seed=0),
        ForgetRetainCollator(tokenizer.pad_token_id),
    )
    trainer.train()
    train_seconds = time.perf_counter() - start
    sets = common.eval_sets(tokenizer)
    if spec.quick:
        sets = quick_sets(sets)
    result = common.evaluate(model, tokenizer, sets, samples=3 if spec.quick else 6)
    result.update(
        spec=asdict(spec),
        train_seconds=round(train_seconds, 1),
        logs=[h for h in trainer.state.log_history if "loss" in h],
    )
    common.atomic_json(path, result)
    return result
