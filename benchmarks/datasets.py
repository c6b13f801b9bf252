"""Benchmark data: forget/retain step batches and MI samples (TOFU, else WikiText-2, else random ids)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from benchmarks.paths import TOFU_DIR, WIKITEXT_FILE

Example = dict[str, torch.Tensor]


@dataclass
class BenchData:
    """Forget/retain step batches (B, T) and MI examples (one dict per sample)."""

    forget: Example
    retain: Example
    mi_forget: list[Example]
    mi_retain: list[Example]
    pad_token_id: int
    info: dict[str, Any] = field(default_factory=dict)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _full_row(ids: Sequence[int]) -> Example:
    tensor = torch.tensor(list(ids), dtype=torch.long)
    return {"input_ids": tensor, "attention_mask": torch.ones_like(tensor), "labels": tensor.clone()}


def _pack(tokenizer: Any, texts: Iterator[str], rows: int, seq_len: int) -> Example:
    """Concatenate tokenised texts (EOS between) and cut ``rows`` rows of exactly ``seq_len`` tokens."""
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    need = rows * seq_len
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        ids.append(eos)
        if len(ids) >= need:
            break
    if len(ids) < need:
        raise ValueError(f"not enough text for {rows} x {seq_len} tokens (got {len(ids)})")
    batch = torch.tensor(ids[:need], dtype=torch.long).view(rows, seq_len)
    return {"input_ids": batch, "attention_mask": torch.ones_like(batch), "labels": batch.clone()}


def _random_batch(rows: int, seq_len: int, vocab: int, generator: torch.Generator) -> Example:
    batch = torch.randint(3, vocab, (rows, seq_len), generator=generator)
    return {"input_ids": batch, "attention_mask": torch.ones_like(batch), "labels": batch.clone()}


def load_data(
    tokenizer: Any,
    vocab: int,
    batch: int,
    seq_len: int,
    mi_samples: int,
    seed: int = 0,
    mi_max_len: int = 256,
) -> BenchData:
    """Real text when possible: TOFU forget10/retain90, else WikiText-2, else random token ids.

    Step batches are packed to exactly ``seq_len`` tokens with every label valid; MI samples are
    one question/answer pair each (TOFU: ``falcon_plugin.data.tokenize_qa``), one line (WikiText) or
    ``min(mi_max_len, 64)`` random ids, truncated to ``mi_max_len`` tokens (independent of ``seq_len``:
    MI pools the answer positions, which a short truncation would cut off).
    """
    from falcon_plugin.data import tokenize_qa, tokenize_text

    generator = torch.Generator().manual_seed(seed)
    pad = 0
    if tokenizer is not None:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    forget_file, retain_file = TOFU_DIR / "forget10.json", TOFU_DIR / "retain90.json"
    if tokenizer is not None and forget_file.is_file() and retain_file.is_file():
        forget_items, retain_items = _read_jsonl(forget_file), _read_jsonl(retain_file)

        def qa_text(items: list[dict[str, Any]]) -> Iterator[str]:
            return (f"Question: {d['question']}\nAnswer: {d['answer']}" for d in items)

        return BenchData(
            forget=_pack(tokenizer, qa_text(forget_items), batch, seq_len),
            retain=_pack(tokenizer, qa_text(retain_items), batch, seq_len),
            mi_forget=[
                tokenize_qa(tokenizer, d["question"], d["answer"], mi_max_len)
                for d in forget_items[:mi_samples]
            ],
            mi_retain=[
                tokenize_qa(tokenizer, d["question"], d["answer"], mi_max_len)
                for d in retain_items[:mi_samples]
            ],
            pad_token_id=pad,
            info={"source": "tofu", "forget": str(forget_file), "retain": str(retain_file)},
        )
    if tokenizer is not None and WIKITEXT_FILE.is_file():
        lines = [ln.strip() for ln in WIKITEXT_FILE.read_text(encoding="utf-8").splitlines()]
        lines = [ln for ln in lines if len(ln) > 80 and not ln.startswith("=")]
        half = len(lines) // 2
        return BenchData(
            forget=_pack(tokenizer, iter(lines[:half]), batch, seq_len),
            retain=_pack(tokenizer, iter(lines[half:]), batch, seq_len),
            mi_forget=[tokenize_text(tokenizer, ln, mi_max_len) for ln in lines[:mi_samples]],
            mi_retain=[tokenize_text(tokenizer, ln, mi_max_len) for ln in lines[half : half + mi_samples]],
            pad_token_id=pad,
            info={"source": "wikitext2", "file": str(WIKITEXT_FILE)},
        )
    mi_len = min(mi_max_len, 64)
    return BenchData(
        forget=_random_batch(batch, seq_len, vocab, generator),
        retain=_random_batch(batch, seq_len, vocab, generator),
        mi_forget=[
            _full_row(torch.randint(3, vocab, (mi_len,), generator=generator).tolist())
            for _ in range(mi_samples)
        ],
        mi_retain=[
            _full_row(torch.randint(3, vocab, (mi_len,), generator=generator).tolist())
            for _ in range(mi_samples)
        ],
        pad_token_id=pad,
        info={"source": "random-ids"},
    )


def split_rows(batch: Example) -> list[Example]:
    """A (B, T) batch as B single examples (for a ``ForgetRetainDataset``)."""
    rows = batch["input_ids"].shape[0]
    return [{k: v[i] for k, v in batch.items()} for i in range(rows)]


def to_device(batch: Example, device: torch.device | str) -> Example:
    """Every tensor of ``batch`` on ``device``."""
    return {k: v.to(device) for k, v in batch.items()}
