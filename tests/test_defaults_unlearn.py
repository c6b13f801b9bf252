"""FALCON's shipped defaults unlearn: the settings a user gets from the configs, on a model that
learnt its facts.

The trainer config (``configs/trainer/FALCON.yaml``: its ``budget`` of learning rate, batch and steps,
which the TOFU/MUSE experiments use, and its ``method_args``, ``layer: auto`` included) is read from
the shipped file, so this test fails whenever a default stops unlearning. Before the defaults were
chosen on a real LM (docs/real_lm.md) the shipped values were the paper's (now ``trainer=FALCON_paper``),
which leave the forget facts at the fine-tuned model's probability: pinned below as the reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import shipped_method_args

from falcon_plugin import FALCON
from falcon_plugin.data import ForgetRetainCollator, ForgetRetainDataset, tokenize_qa
from falcon_plugin.tools.demo.facts import generate_facts, split_by_entity
from falcon_plugin.tools.demo.finetune import FinetuneSpec, finetune
from falcon_plugin.tools.demo.metrics import answer_probabilities
from falcon_plugin.tools.demo.model import TinyModelSpec, build_tiny_llama
from falcon_plugin.tools.demo.runner import TEMPLATE_WORDS
from falcon_plugin.tools.demo.tokenizer import build_word_tokenizer

pytestmark = pytest.mark.slow

CONFIGS = Path(__file__).resolve().parents[1] / "falcon_plugin" / "configs"


def shipped_settings() -> dict[str, Any]:
    """Learning rate, method_args, batch size and steps: FALCON.yaml's ``budget`` and ``method_args``."""
    trainer = yaml.safe_load((CONFIGS / "trainer" / "FALCON.yaml").read_text())
    budget = trainer["budget"]
    return {
        "learning_rate": float(budget["learning_rate"]),
        "batch_size": int(budget["per_device_train_batch_size"]) * int(budget["gradient_accumulation_steps"]),
        "steps": int(budget["max_steps"]),
        "method_args": shipped_method_args(),  # the library's (TOFU's own: tofu_method_args)
    }


def test_trainer_and_experiments_take_the_budget() -> None:
    """FALCON.yaml's args and the TOFU/MUSE experiments' (which replace the host's 1e-5) read ``budget``.

    The experiments fall back to the host's own value for a trainer without a budget (trainer=NPO ...);
    tests/test_host_configs.py checks that such a run composes exactly as the host's.
    """
    trainer = yaml.safe_load((CONFIGS / "trainer" / "FALCON.yaml").read_text())
    expected = {key: f"${{trainer.budget.{key}}}" for key in trainer["budget"]}
    assert {k: trainer["args"][k] for k in expected} == expected
    for name in ("tofu", "muse"):
        experiment = yaml.safe_load((CONFIGS / "experiment" / "unlearn" / name / "falcon.yaml").read_text())
        args = experiment["trainer"]["args"]
        assert args, name
        for key, value in args.items():  # TOFU: its own `tofu_budget` first, then `budget`
            own = f"${{oc.select:trainer.{name}_budget.{key}," if name == "tofu" else "${"
            assert key in {**trainer["budget"], **trainer.get(f"{name}_budget", {})}, (name, key)
            assert value.startswith(own) and (
                f"${{oc.select:trainer.budget.{key}," in value or key not in trainer["budget"]
            ), (name, key, value)
    paper = yaml.safe_load((CONFIGS / "trainer" / "FALCON_paper.yaml").read_text())
    assert paper["defaults"][0] == "FALCON"
    assert {k: float(v) for k, v in paper["budget"].items()} == {"learning_rate": 5e-5}
    assert {k: float(v) for k, v in paper["tofu_budget"].items()} == {"learning_rate": 1e-4}
    assert paper["method_args"] == {"trainable_modules": "down_proj", "retain_weight": 100}


@pytest.fixture(scope="module")
def learnt() -> dict[str, Any]:
    """A 4-layer Llama fine-tuned on procedurally generated facts until it knows them."""
    facts = generate_facts(24, 4, seed=0)
    forget_facts, retain_facts = split_by_entity(facts, 0.25, seed=0)
    tokenizer = build_word_tokenizer([f.question + " " + f.answer for f in facts], TEMPLATE_WORDS)
    model = build_tiny_llama(
        tokenizer, TinyModelSpec(num_layers=4, hidden_size=64, intermediate_size=128), seed=0
    )
    forget = [tokenize_qa(tokenizer, f.question, f.answer, 48) for f in forget_facts]
    retain = [tokenize_qa(tokenizer, f.question, f.answer, 48) for f in retain_facts]
    finetune(
        model, forget + retain, tokenizer.pad_token_id, FinetuneSpec(epochs=80, batch_size=16), progress=False
    )
    state = {k: v.clone() for k, v in model.state_dict().items()}
    pad = tokenizer.pad_token_id
    before = (
        _mean(answer_probabilities(model, forget, pad)),
        _mean(answer_probabilities(model, retain, pad)),
    )
    assert before[0] > 0.8 and before[1] > 0.8, f"the fine-tune did not learn the facts: {before}"
    return {
        "model": model,
        "state": state,
        "tokenizer": tokenizer,
        "forget": forget,
        "retain": retain,
        "before": before,
    }


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _unlearn(
    learnt: dict[str, Any],
    tmp_path: Path,
    learning_rate: float,
    method_args: dict[str, Any],
    batch_size: int,
    steps: int,
    seed: int = 0,
) -> tuple[float, float]:
    from transformers import TrainingArguments

    model, tokenizer = learnt["model"], learnt["tokenizer"]
    model.load_state_dict(learnt["state"])
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=batch_size,
        max_steps=steps,
        learning_rate=learning_rate,
        lr_scheduler_type="constant",
        save_strategy="no",
        report_to=[],
        seed=seed,
        use_cpu=True,
        disable_tqdm=True,
        logging_steps=steps,
    )
    trainer = FALCON(
        model=model,
        args=args,
        tokenizer=tokenizer,
        train_dataset=ForgetRetainDataset(learnt["forget"], learnt["retain"], seed=0),
        data_collator=ForgetRetainCollator(tokenizer.pad_token_id),
        **method_args,
    )
    trainer.train()
    pad = tokenizer.pad_token_id
    with torch.no_grad():
        return (
            _mean(answer_probabilities(model, learnt["forget"], pad)),
            _mean(answer_probabilities(model, learnt["retain"], pad)),
        )


SEEDS = (0, 1, 2)
"""The Trainer seeds the shipped defaults are checked at (data order, retain pairing, the POV's draws)."""


def test_shipped_defaults_forget_and_retain(learnt: dict[str, Any], tmp_path: Path) -> None:
    """At three seeds: the forget answer probability falls to at most 10 % of the fine-tuned model's
    at the median and 15 % at every seed, the retain probability keeps 90 %.

    One seed is not a claim here: seeds 0-4 leave 8.8 / 4.8 / 2.3 / 5.1 / 2.0 % of the forget
    probability and keep 95-96 % of the retain probability (measured with torch 2.13.0, transformers
    4.57.6-5.24.0); the paper's values (below) leave over half of it.
    """
    settings = shipped_settings()
    forget0, retain0 = learnt["before"]
    shares = []
    for seed in SEEDS:
        forget, retain = _unlearn(
            learnt,
            tmp_path / f"seed{seed}",
            settings["learning_rate"],
            settings["method_args"],
            settings["batch_size"],
            settings["steps"],
            seed,
        )
        shares.append(forget / forget0)
        assert forget <= 0.15 * forget0, (
            f"seed {seed}: forget answer probability {forget:.4f} (fine-tuned {forget0:.4f})"
        )
        assert retain >= 0.9 * retain0, (
            f"seed {seed}: retain answer probability {retain:.4f} (fine-tuned {retain0:.4f})"
        )
    assert sorted(shares)[len(shares) // 2] <= 0.10, (
        f"median forget share {sorted(shares)[len(shares) // 2]:.3f} ({shares})"
    )


def test_the_paper_values_forget_nothing(learnt: dict[str, Any], tmp_path: Path) -> None:
    """Why the defaults changed: trainer=FALCON_paper (lr 5e-5, down_proj, retain weight 100)
    barely moves it."""
    settings = shipped_settings()
    paper = {**settings["method_args"], "trainable_modules": "down_proj", "retain_weight": 100}
    forget, _ = _unlearn(learnt, tmp_path, 5e-5, paper, settings["batch_size"], settings["steps"])
    assert forget >= 0.5 * learnt["before"][0], f"forget {forget:.4f} moved at lr 5e-5"


def test_the_down_projections_alone_forget_only_part_of_it_at_the_library_budget(
    learnt: dict[str, Any], tmp_path: Path
) -> None:
    """Why the library keeps every MLP weight while the TOFU experiment trains the down-projections
    (`tofu_method_args`, chosen on TOFU's forget_quality, docs/results/README.md): at the library's
    budget they leave about half of the forget facts here (measured 0.47 of 0.98)."""
    settings = shipped_settings()
    down = {**settings["method_args"], "trainable_modules": "down_proj"}
    forget, _ = _unlearn(
        learnt, tmp_path, settings["learning_rate"], down, settings["batch_size"], settings["steps"]
    )
    assert forget >= 0.25 * learnt["before"][0], f"forget {forget:.4f}: the down-projections alone now forget"
