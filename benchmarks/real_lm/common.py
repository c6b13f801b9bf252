"""The real-LM set-up shared by the ablation and layer-sweep benchmarks (library level, no host).

SmolLM2-135M-Instruct (``../shared/models``, GGUF de-quantised to fp32 and saved once as an ordinary HF
folder), chat template, labels on the answer tokens. The *target* model is a full fine-tune on TOFU
forget01 (2 authors, 40 QA) plus the first 80 rows of retain90 (4 authors): AdamW lr 1e-4, batch 8,
5 epochs (75 steps). Every stage is cached under ``$FALCON_CACHE`` (default
``~/.cache/falcon-unlearning/real-lm``) and skipped when present, so a cut-off run resumes.

Evaluation sets (answer probability = exp of minus the mean answer-token NLL, as the host's
``*_Q_A_Prob``): ``forget`` (the 40 trained forget QA), ``forget_para_answer`` (TOFU's paraphrased
answer to each forget question), ``forget_para_question`` (the reworded question, original answer),
``retain`` (the 80 trained retain QA), ``retain_para_answer`` / ``retain_para_question`` (the same
paraphrases of the retain rows: held-out wording of retained facts), ``real_authors`` and
``world_facts`` (general knowledge, TOFU's utility sets, first 40 rows each). Greedy answers to the
first forget questions are kept so a reader sees what the model says afterwards.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from falcon_plugin.data import IGNORE_INDEX, pad_examples
from falcon_plugin.tools.demo.metrics import answer_probabilities

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("FALCON_SHARED", REPO.parent / "shared"))
GGUF_DIR = SHARED / "models" / "smollm2-135m-instruct-gguf"
TOFU = SHARED / "data" / "tofu"
CACHE = Path(os.environ.get("FALCON_CACHE", Path.home() / ".cache" / "falcon-unlearning" / "real-lm"))
SMOLLM2_ROPE_THETA = 100000.0
EVAL_ROWS = 40
TARGET_RECIPE = {"learning_rate": 1e-4, "batch_size": 8, "epochs": 5, "seed": 0, "retain_rows": 80}

Example = dict[str, torch.Tensor]


def read_jsonl(name: str) -> list[dict[str, Any]]:
    with open(TOFU / f"{name}.json") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def atomic_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True))
    os.replace(tmp, path)


def export_base_model(out: Path | None = None) -> Path:
    """The GGUF as an fp32 HF folder that transformers 4.45.1 and 5.x read the same.

    (``rope_theta`` written flat.)
    """
    from transformers import AutoModelForCausalLM

    out = out or CACHE / "models" / "smollm2-135m-instruct"
    if (out / "config.json").is_file():
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    gguf = next(p.name for p in GGUF_DIR.iterdir() if p.suffix == ".gguf")
    model = AutoModelForCausalLM.from_pretrained(GGUF_DIR, gguf_file=gguf, dtype=torch.float32)
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp)
    write_portable_config(tmp)
    copy_tokenizer(GGUF_DIR, tmp)
    os.replace(tmp, out)
    return out


def write_portable_config(folder: Path) -> None:
    """Write ``rope_theta`` at the top level too.

    4.45.1 ignores 5.x's ``rope_parameters`` and would use 10000.
    """
    path = folder / "config.json"
    config = json.loads(path.read_text())
    theta = (config.get("rope_parameters") or {}).get(
        "rope_theta", config.get("rope_theta", SMOLLM2_ROPE_THETA)
    )
    config["rope_theta"] = theta
    config.setdefault("rope_scaling", None)
    path.write_text(json.dumps(config, indent=2, sort_keys=True))


def copy_tokenizer(src: Path, dst: Path) -> None:
    """The shared tokenizer files, with the chat template also inside tokenizer_config.json.

    (4.45.1 reads it there.)
    """
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(src / name, dst / name)
    config = json.loads((dst / "tokenizer_config.json").read_text())
    config["chat_template"] = (src / "chat_template.jinja").read_text()
    config["model_input_names"] = ["input_ids", "attention_mask"]
    (dst / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def load_model(folder: Path) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
    return model.eval()


def load_tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def encode_chat(tokenizer: Any, question: str, answer: str, max_length: int = 200) -> Example:
    """Chat-template prompt for ``question``; labels on the answer and its end-of-turn token only."""
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = (prompt_ids + answer_ids)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + answer_ids)[:max_length]
    return {
        "input_ids": torch.tensor(ids),
        "attention_mask": torch.ones(len(ids), dtype=torch.long),
        "labels": torch.tensor(labels),
    }


def train_rows() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(forget rows, retain rows) of the target's fine-tune: TOFU forget01 and retain90[:80]."""
    return read_jsonl("forget01"), read_jsonl("retain90")[: TARGET_RECIPE["retain_rows"]]


def eval_sets(tokenizer: Any) -> dict[str, list[Example]]:
    forget, retain = train_rows()
    forget_p = read_jsonl("forget01_perturbed")
    retain_p = {r["question"]: r for r in read_jsonl("retain_perturbed")}
    retain_p_rows = [retain_p[r["question"]] for r in retain[::2]][:EVAL_ROWS]
    enc = lambda rows, q, a: [encode_chat(tokenizer, r[q], r[a]) for r in rows]  # noqa: E731
    return {
        "forget": enc(forget, "question", "answer"),
        "forget_para_answer": enc(forget_p, "question", "paraphrased_answer"),
        "forget_para_question": enc(forget_p, "paraphrased_question", "answer"),
        "retain": enc(retain, "question", "answer"),
        "retain_para_answer": enc(retain_p_rows, "question", "paraphrased_answer"),
        "retain_para_question": enc(retain_p_rows, "paraphrased_question", "answer"),
        "real_authors": enc(read_jsonl("real_authors")[:EVAL_ROWS], "question", "answer"),
        "world_facts": enc(read_jsonl("world_facts")[:EVAL_ROWS], "question", "answer"),
    }


@torch.no_grad()
def greedy(
    model: torch.nn.Module, tokenizer: Any, examples: Sequence[Example], max_new_tokens: int = 40
) -> list[str]:
    out = []
    for example in examples:
        cut = int((example["labels"] != IGNORE_INDEX).nonzero()[0])
        ids = example["input_ids"][:cut][None]
        gen = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        out.append(tokenizer.decode(gen[0, cut:], skip_special_tokens=True).strip())
    return out


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def evaluate(
    model: torch.nn.Module, tokenizer: Any, sets: dict[str, list[Example]], samples: int = 6
) -> dict[str, Any]:
    """Answer probability on every set, and greedy answers to the first ``samples`` forget questions."""
    model.eval()
    result: dict[str, Any] = {
        name: _mean(answer_probabilities(model, rows, tokenizer.pad_token_id, batch_size=16))
        for name, rows in sets.items()
    }
    result["forget_greedy"] = greedy(model, tokenizer, sets["forget"][:samples])
    return result


def finetune_target(base: Path, out: Path | None = None) -> Path:
    """The target: full fine-tune of the base on forget01 + retain90[:80] (cached)."""
    from transformers import Trainer, TrainingArguments

    out = out or CACHE / "models" / "target"
    if (out / "config.json").is_file():
        return out
    tokenizer = load_tokenizer(base)
    model = load_model(base)
    forget, retain = train_rows()
    data = [encode_chat(tokenizer, r["question"], r["answer"]) for r in forget + retain]
    recipe = TARGET_RECIPE
    args = TrainingArguments(
        output_dir=str(out.with_name(out.name + ".work")),
        per_device_train_batch_size=recipe["batch_size"],
        num_train_epochs=recipe["epochs"],
        learning_rate=recipe["learning_rate"],
        lr_scheduler_type="constant",
        weight_decay=0.0,
        logging_steps=5,
        save_strategy="no",
        report_to=[],
        seed=recipe["seed"],
        use_cpu=True,
        dataloader_num_workers=0,
    )
    pad = tokenizer.pad_token_id
    trainer = Trainer(
        model=model, args=args, train_dataset=data, data_collator=lambda rows: pad_examples(rows, pad)
    )
    trainer.train()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    write_portable_config(tmp)
    copy_tokenizer(GGUF_DIR, tmp)
    os.replace(tmp, out)
    return out


def cached_eval(
    name: str, folder_or_model: Any, tokenizer: Any, sets: dict[str, list[Example]]
) -> dict[str, Any]:
    path = CACHE / "evals" / f"{name}.json"
    if path.is_file():
        return json.loads(path.read_text())
    model = load_model(folder_or_model) if isinstance(folder_or_model, Path) else folder_or_model
    result = evaluate(model, tokenizer, sets)
    atomic_json(path, result)
    return result
