"""Forget/retain batches in the host's shape, for standalone use (demo, CLI, tests).

Inside open-unlearning the host builds these itself; the shapes here match it: each item is
``{"forget": {input_ids, attention_mask, labels}, "retain": {...}}`` with ``labels ==``
:data:`~falcon_plugin.masks.IGNORE_INDEX` on prompt and padding tokens, so the losses see exactly the
answer tokens.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .masks import IGNORE_INDEX

Example = dict[str, torch.Tensor]
MODEL_INPUT_KEYS = ("input_ids", "attention_mask")
"""The batch fields FALCON hands the model (labels only choose the positions the losses see)."""


def tokenize_qa(tokenizer: Any, question: str, answer: str, max_length: int = 256) -> Example:
    """Tokenise one question/answer pair; labels cover only the answer (and the EOS token).

    The prompt is ``"Question: {q}\\nAnswer:"`` and the answer follows after a space, as in the
    TOFU-style data the host and the official MI code use.
    """
    prompt_ids = tokenizer(f"Question: {question}\nAnswer:", add_special_tokens=True)["input_ids"]
    answer_ids = tokenizer(" " + answer, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        answer_ids = answer_ids + [tokenizer.eos_token_id]
    input_ids = (prompt_ids + answer_ids)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + answer_ids)[:max_length]
    return {
        "input_ids": torch.tensor(input_ids, dtype=torch.long),
        "attention_mask": torch.ones(len(input_ids), dtype=torch.long),
        "labels": torch.tensor(labels, dtype=torch.long),
    }


def tokenize_text(tokenizer: Any, text: str, max_length: int = 256) -> Example:
    """Tokenise plain text (a corpus document); every token is a label."""
    ids = tokenizer(text, add_special_tokens=True, truncation=True, max_length=max_length)["input_ids"]
    tensor = torch.tensor(ids, dtype=torch.long)
    return {"input_ids": tensor, "attention_mask": torch.ones_like(tensor), "labels": tensor.clone()}


class ForgetRetainDataset(torch.utils.data.Dataset):
    """Anchored on the forget set, as the host's: item i pairs forget[i] with a retain item.

    With ``redraw`` (the default, as the host's dataset) the retain item is drawn afresh, from a
    generator seeded by ``seed``, on every access, so training sees the whole retain set. With
    ``redraw=False`` each forget item keeps one seeded retain partner: items then depend on the
    index alone, which makes a resumed run bit-identical to an uninterrupted one.
    """

    def __init__(
        self, forget: Sequence[Example], retain: Sequence[Example], seed: int = 0, redraw: bool = True
    ) -> None:
        if len(forget) == 0:
            raise ValueError("ForgetRetainDataset: the forget set is empty")
        if len(retain) == 0:
            raise ValueError("ForgetRetainDataset: the retain set is empty")
        self.forget = list(forget)
        self.retain = list(retain)
        self.redraw = redraw
        self._rng = random.Random(seed)
        self._retain_index = [self._rng.randrange(len(self.retain)) for _ in self.forget]

    def __len__(self) -> int:
        return len(self.forget)

    def __getitem__(self, index: int) -> dict[str, Example]:
        partner = self._rng.randrange(len(self.retain)) if self.redraw else self._retain_index[index]
        return {"forget": self.forget[index], "retain": self.retain[partner]}


def model_inputs(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The fields of a host batch (one of its ``forget`` / ``retain`` parts) the model is called with."""
    return {k: batch[k] for k in MODEL_INPUT_KEYS if k in batch}


def pad_token_id(tokenizer: Any) -> int:
    """The id to pad with: the tokenizer's pad token, else its EOS token, else 0 (also for no tokenizer)."""
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = getattr(tokenizer, "eos_token_id", None)
    return int(pad) if pad is not None else 0


def pad_examples(
    examples: Sequence[Mapping[str, torch.Tensor]], pad_token_id: int, side: str = "right"
) -> Example:
    """Pad ``input_ids``/``attention_mask``/``labels`` to the longest example (labels with IGNORE_INDEX)."""
    if side not in ("left", "right"):
        raise ValueError(f"padding side must be 'left' or 'right', got {side!r}")
    length = max(int(e["input_ids"].shape[0]) for e in examples)
    fill = {"input_ids": pad_token_id, "attention_mask": 0, "labels": IGNORE_INDEX}
    out: Example = {}
    for key, value in fill.items():
        rows = []
        for example in examples:
            tensor = (
                example[key]
                if key in example
                else example["input_ids"].new_full(example["input_ids"].shape, value)
            )
            pad = tensor.new_full((length - tensor.shape[0],), value)
            rows.append(torch.cat([tensor, pad]) if side == "right" else torch.cat([pad, tensor]))
        out[key] = torch.stack(rows)
    return out


class ForgetRetainCollator:
    """Collate ``{"forget": ex, "retain": ex}`` items into the host's nested batch of padded tensors."""

    def __init__(self, pad_token_id: int, padding_side: str = "right") -> None:
        self.pad_token_id = pad_token_id
        self.padding_side = padding_side

    def __call__(self, items: Sequence[Mapping[str, Mapping[str, torch.Tensor]]]) -> dict[str, Example]:
        return {
            part: pad_examples([item[part] for item in items], self.pad_token_id, self.padding_side)
            for part in ("forget", "retain")
        }


__all__ = [
    "IGNORE_INDEX",
    "MODEL_INPUT_KEYS",
    "Example",
    "ForgetRetainCollator",
    "ForgetRetainDataset",
    "model_inputs",
    "pad_examples",
    "pad_token_id",
    "tokenize_qa",
    "tokenize_text",
]
