"""What the attacks measure, with the host's definitions where it has one.

* **answer probability** (QA, text): per example ``exp(-mean NLL of the labelled tokens)`` (answer and
  EOS for QA, as open-unlearning's ``probability`` metric; every token for a text document), averaged
  over examples. Computed by :func:`falcon_plugin.tools.demo.metrics.answer_probabilities`.
* **ROUGE-L recall** (QA): greedy decoding from the prompt
  (:func:`falcon_plugin.tools.demo.metrics.greedy_answers`), scored against the reference answer with the
  ``rouge-score`` package with the Porter stemmer, as the host's ``eval_rouge_recall_batch``
  (``use_stemmer=True``, ``rougeL`` recall).
* **MCQ accuracy** (WMDP-style): the fraction of questions whose right letter has the highest
  log-likelihood ``sum log p(" <letter>" | prompt)`` among the choices' letters, after lm-eval's
  MMLU/WMDP prompt (what lm-eval's ``acc`` on WMDP computes).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from rouge_score import rouge_scorer

from falcon_plugin.data import IGNORE_INDEX

from ..demo.metrics import answer_probabilities, greedy_answers
from .data import MCQ, Part, encode_mcq_choices, encode_qa, encode_train

METRICS_BY_KIND = {"qa": ("prob", "rougeL_recall"), "mcq": ("acc",), "text": ("prob",)}


def rouge_l_recall(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """ROUGE-L recall of each prediction against its reference, with stemming (the host's setting)."""
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return [
        scorer.score(ref, pred)["rougeL"].recall for pred, ref in zip(predictions, references, strict=True)
    ]


@torch.no_grad()
def mcq_accuracy(
    model: torch.nn.Module, tokenizer: Any, items: Sequence[MCQ], max_length: int, batch_size: int = 16
) -> float:
    """Fraction of ``items`` whose right letter is the most likely continuation of the prompt."""
    if not items:
        raise ValueError("mcq_accuracy: no questions")
    examples, owners = [], []
    for q, item in enumerate(items):
        for example in encode_mcq_choices(tokenizer, item, max_length):
            examples.append(example)
            owners.append(q)
    probs = answer_probabilities(model, examples, tokenizer.pad_token_id, batch_size=batch_size)
    # exp(mean log p) over the letter's tokens -> sum log p (lm-eval's loglikelihood)
    counts = [int((e["labels"] != IGNORE_INDEX).sum()) for e in examples]
    scores: list[list[float]] = [[] for _ in items]
    for q, p, n in zip(owners, probs, counts, strict=True):
        scores[q].append(n * math.log(max(p, 1e-45)))
    right = sum(
        int(max(range(len(s)), key=lambda i, s=s: s[i]) == item.answer)
        for s, item in zip(scores, items, strict=True)
    )
    return right / len(items)


def evaluate_part(
    model: torch.nn.Module,
    tokenizer: Any,
    part: Part,
    template: str,
    max_length: int,
    max_new_tokens: int | None = None,
    batch_size: int = 16,
) -> dict[str, float]:
    """The metrics of :data:`METRICS_BY_KIND` for one part (``prob``, ``rougeL_recall``, ``acc``).

    ``max_new_tokens`` bounds the greedy answers for ROUGE; None: the longest reference answer of the
    part in tokens, plus 16.
    """
    model.eval()
    if part.kind == "mcq":
        return {"acc": mcq_accuracy(model, tokenizer, part.records, max_length, batch_size)}
    if part.kind == "text":
        examples = encode_train(tokenizer, part, template, max_length)
        probs = answer_probabilities(model, examples, tokenizer.pad_token_id, batch_size=batch_size)
        return {"prob": sum(probs) / len(probs)}
    examples = [encode_qa(tokenizer, r, template, max_length) for r in part.records]
    probs = answer_probabilities(model, examples, tokenizer.pad_token_id, batch_size=batch_size)
    if max_new_tokens is None:
        max_new_tokens = max(int((e["labels"] != IGNORE_INDEX).sum()) for e in examples) + 16
    answers = greedy_answers(model, tokenizer, examples, max_new_tokens, batch_size=batch_size)
    rouge = rouge_l_recall(answers, [r.answer for r in part.records])
    return {"prob": sum(probs) / len(probs), "rougeL_recall": sum(rouge) / len(rouge)}


__all__ = ["METRICS_BY_KIND", "evaluate_part", "mcq_accuracy", "rouge_l_recall"]
