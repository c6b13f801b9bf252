"""Evaluation of a causal LM on question/answer pairs: answer probability and ROUGE-L recall.

* answer probability: per example ``exp(mean log p(label tokens))`` (the labelled tokens are the
  answer and its EOS, as in open-unlearning's ``*_Q_A_Prob``), averaged over examples;
* ROUGE-L recall: greedy decoding from the prompt, scored against the reference answer with the
  ``rouge-score`` package (as open-unlearning's ``*_Q_A_ROUGE``, which reports ``rougeL_recall``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from rouge_score import rouge_scorer

from falcon_plugin.data import IGNORE_INDEX, pad_examples

Example = dict[str, torch.Tensor]


@dataclass(frozen=True)
class QAScores:
    """Mean answer probability and ROUGE-L recall over a set of QA pairs."""

    probability: float
    rouge_l_recall: float


@torch.no_grad()
def answer_probabilities(
    model: torch.nn.Module, examples: Sequence[Example], pad_token_id: int, batch_size: int = 64
) -> list[float]:
    """Per-example geometric-mean probability of the labelled tokens under teacher forcing."""
    model.eval()
    device = next(model.parameters()).device
    out: list[float] = []
    for start in range(0, len(examples), batch_size):
        batch = {
            k: v.to(device)
            for k, v in pad_examples(examples[start : start + batch_size], pad_token_id).items()
        }
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        labels = batch["labels"][:, 1:]
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        mask = labels != IGNORE_INDEX
        token_logp = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask
        mean_logp = token_logp.sum(-1) / mask.sum(-1).clamp(min=1)
        out.extend(torch.exp(mean_logp).cpu().tolist())
    return out


def _prompt_only(example: Example) -> Example:
    """Strip the answer: keep the tokens before the first labelled position."""
    labelled = (example["labels"] != IGNORE_INDEX).nonzero()
    cut = int(labelled[0]) if len(labelled) else int(example["input_ids"].shape[0])
    return {"input_ids": example["input_ids"][:cut], "attention_mask": example["attention_mask"][:cut]}


@torch.no_grad()
def greedy_answers(
    model: torch.nn.Module, tokenizer, examples: Sequence[Example], max_new_tokens: int, batch_size: int = 64
) -> list[str]:
    """Greedy continuations of each example's prompt (left-padded batches), decoded without specials."""
    model.eval()
    device = next(model.parameters()).device
    texts: list[str] = []
    for start in range(0, len(examples), batch_size):
        prompts = [_prompt_only(e) for e in examples[start : start + batch_size]]
        batch = {
            k: v.to(device) for k, v in pad_examples(prompts, tokenizer.pad_token_id, side="left").items()
        }
        generated = model.generate(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        new_tokens = generated[:, batch["input_ids"].shape[1] :]
        texts.extend(tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    return [t.strip() for t in texts]


def rouge_l_recall(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """ROUGE-L recall of each prediction against its reference (rouge-score, no stemming)."""
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return [
        scorer.score(ref, pred)["rougeL"].recall for pred, ref in zip(predictions, references, strict=True)
    ]


def evaluate_qa(
    model: torch.nn.Module,
    tokenizer,
    examples: Sequence[Example],
    answers: Sequence[str],
    max_new_tokens: int | None = None,
) -> QAScores:
    """Mean answer probability and mean ROUGE-L recall of ``model`` on tokenised QA ``examples``."""
    if not examples:
        raise ValueError("evaluate_qa: no examples")
    probs = answer_probabilities(model, examples, tokenizer.pad_token_id)
    if max_new_tokens is None:
        max_new_tokens = max(int((e["labels"] != IGNORE_INDEX).sum()) for e in examples) + 2
    rouge = rouge_l_recall(greedy_answers(model, tokenizer, examples, max_new_tokens), answers)
    return QAScores(probability=sum(probs) / len(probs), rouge_l_recall=sum(rouge) / len(rouge))
