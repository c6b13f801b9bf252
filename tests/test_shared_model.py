"""FALCON on the real pretrained SmolLM2-135M-Instruct (30 layers) with real TOFU data from ../shared.

Skipped with a reason where ../shared or the gguf package is absent; the core suite never needs it.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import SHARED
from transformers import TrainingArguments

from falcon_plugin.data import ForgetRetainCollator, ForgetRetainDataset, tokenize_qa
from falcon_plugin.trainer import FALCON

MODEL_DIR = SHARED / "models" / "smollm2-135m-instruct-gguf"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TOFU = SHARED / "data" / "tofu"

pytestmark = [
    pytest.mark.shared,
    pytest.mark.skipif(not (MODEL_DIR / GGUF).is_file(), reason=f"pretrained model not found at {MODEL_DIR}"),
    pytest.mark.skipif(not (TOFU / "forget01.json").is_file(), reason=f"TOFU data not found at {TOFU}"),
]


def _rows(name: str, count: int) -> list[dict]:
    with open(TOFU / name, encoding="utf-8") as handle:
        return [json.loads(line) for _, line in zip(range(count), handle, strict=False)]


@pytest.fixture(scope="module")
def smollm2():
    pytest.importorskip("gguf", reason="the gguf package is needed to read the GGUF weights")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)
    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR, gguf_file=GGUF, torch_dtype=torch.float32)
    model.hf_quantizer = None  # de-quantised fp32 tensors: make it an ordinary trainable model
    model.is_quantized = False
    return model, tokenizer


@pytest.fixture
def two_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


def test_real_30_layer_model_trains_at_layer_7_on_tofu(tmp_path, smollm2, two_threads):
    model, tokenizer = smollm2
    assert model.config.num_hidden_layers == 30
    forget = [tokenize_qa(tokenizer, r["question"], r["answer"], 96) for r in _rows("forget01.json", 8)]
    retain = [tokenize_qa(tokenizer, r["question"], r["answer"], 96) for r in _rows("retain99.json", 8)]
    before = {n: p.detach().clone() for n, p in model.named_parameters() if ".mlp.down_proj" in n}
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2,
        max_steps=2,
        learning_rate=5e-5,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = FALCON(
        model=model,
        train_dataset=ForgetRetainDataset(forget, retain),
        tokenizer=tokenizer,
        data_collator=ForgetRetainCollator(tokenizer.pad_token_id),
        args=args,
        layer=7,
    )
    trainer.train()
    changed = {n for n, p in model.named_parameters() if n in before and not torch.equal(p, before[n])}
    assert changed == {f"model.layers.{i}.mlp.down_proj.weight" for i in (5, 6, 7)}
    logs = [e for e in trainer.state.log_history if "falcon/forget_loss" in e]
    assert all(torch.isfinite(torch.tensor(e["falcon/forget_loss"])) for e in logs)
