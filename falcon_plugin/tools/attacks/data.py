"""Forget data for the recovery attacks: reading the files, a seeded train/test split, tokenising.

Three kinds of record, told apart by their fields (``kind="auto"``) or named explicitly:

* ``qa``: ``{"question", "answer"}`` objects, as TOFU's and MUSE's QA files (JSON list or JSON Lines;
  other fields are ignored). Read by :func:`falcon_plugin.tools.common.qa_files.load_qa_file`.
* ``mcq``: WMDP-style multiple choice, ``{"question", "choices": [...], "answer"}`` with ``answer``
  the index of the right choice (WMDP's own layout) or its letter (``"A"``..).
* ``text``: a plain corpus, ``{"text": ...}`` objects (WMDP's forget corpora) or a ``.txt`` file whose
  non-empty lines are the documents.

A relearning attack trains on one part of the forget set and is measured on the part it never saw
(Unlearn-Simple's and TOFU's relearning protocol): :func:`split_records` shuffles the record indices
with ``random.Random(seed)`` and keeps the first ``round(n * test_fraction)`` as the test part, so
the same file, fraction and seed always give the same split. Alternatively the two parts come from two
files (``train_path`` / ``test_path``: e.g. a WMDP text corpus to relearn on and the WMDP MCQs to
measure, or the TOFU benchmark's ``relearn_train.json`` / ``relearn_test.json``).

Tokenisation follows the host where it has a rule: QA pairs as the core's
:func:`falcon_plugin.data.tokenize_qa` (``template="plain"``) or through the tokenizer's chat template
with the host's default system prompt (``template="chat"``, what open-unlearning does with
``apply_chat_template=True``); labels cover the answer and EOS only. MCQs use lm-eval's MMLU/WMDP
layout (question, lettered choices, ``Answer:``). Text documents are labelled on every token.
"""

from __future__ import annotations

import math
import random
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from falcon_plugin.data import IGNORE_INDEX, tokenize_qa, tokenize_text

from ..common.errors import InputError
from ..common.qa_files import QAPair, _records, load_qa_file

KINDS = ("qa", "mcq", "text")
TEMPLATES = ("auto", "plain", "chat")
SYSTEM_PROMPT = "You are a helpful assistant."
"""open-unlearning's default ``template_args.system_prompt`` for chat models."""
LETTERS = string.ascii_uppercase
Example = dict[str, torch.Tensor]


@dataclass(frozen=True)
class MCQ:
    """One multiple-choice question; ``answer`` is the index of the right choice."""

    question: str
    choices: tuple[str, ...]
    answer: int


Record = QAPair | MCQ | str


@dataclass(frozen=True)
class Part:
    """One side of the split: its records, their kind and where they came from."""

    kind: str
    records: tuple[Record, ...]
    source: str

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "kind": self.kind, "rows": len(self.records)}


@dataclass(frozen=True)
class AttackData:
    """The train part (what a relearning attack fine-tunes on) and the test part (held out)."""

    train: Part
    test: Part
    split: dict[str, Any] | None
    """``{"test_fraction", "seed"}`` when one file was split; None when two files were given."""

    def describe(self) -> dict[str, Any]:
        return {"train": self.train.describe(), "test": self.test.describe(), "split": self.split}


# ---------------------------------------------------------------------------------------------- reading
def _detect_kind(path: Path, objects: Sequence[tuple[str, Any]]) -> str:
    location, first = objects[0]
    if isinstance(first, Mapping):
        if "choices" in first:
            return "mcq"
        if "question" in first or "answer" in first:
            return "qa"
        if "text" in first:
            return "text"
        raise InputError(
            f"{location}: cannot tell the kind of data from its fields {sorted(first)}; expected "
            "'question'+'answer' (qa), 'question'+'choices'+'answer' (mcq) or 'text'"
        )
    raise InputError(f"{location}: expected a JSON object, got {type(first).__name__}")


def _mcq(location: str, obj: Any) -> MCQ:
    if not isinstance(obj, Mapping):
        raise InputError(f"{location}: expected an object with 'question', 'choices', 'answer'")
    question, choices, answer = obj.get("question"), obj.get("choices"), obj.get("answer")
    if not isinstance(question, str) or not question.strip():
        raise InputError(f"{location}: missing or empty string field 'question' (fields: {sorted(obj)})")
    if (
        not isinstance(choices, list)
        or not 2 <= len(choices) <= len(LETTERS)
        or not all(isinstance(c, str) and c.strip() for c in choices)
    ):
        raise InputError(f"{location}: 'choices' must be a list of 2..26 non-empty strings, got {choices!r}")
    if isinstance(answer, str) and len(answer.strip()) == 1 and answer.strip().upper() in LETTERS:
        answer = LETTERS.index(answer.strip().upper())
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
        raise InputError(
            f"{location}: 'answer' must be a choice index 0..{len(choices) - 1} or its letter, "
            f"got {obj.get('answer')!r}"
        )
    return MCQ(question.strip(), tuple(c.strip() for c in choices), answer)


def _text(location: str, obj: Any) -> str:
    text = obj.get("text") if isinstance(obj, Mapping) else None
    if not isinstance(text, str) or not text.strip():
        fields = sorted(obj) if isinstance(obj, Mapping) else type(obj).__name__
        raise InputError(f"{location}: missing or empty string field 'text' ({fields})")
    return text.strip()


def read_records(path: str | Path, kind: str = "auto") -> Part:
    """All records of one file, of kind ``kind`` (``auto``: from the first record's fields)."""
    if kind not in ("auto", *KINDS):
        raise InputError(f"unknown data kind {kind!r}; expected auto, {', '.join(KINDS)}")
    path = Path(path)
    if not path.is_file():
        raise InputError(
            f"data file not found: {path}" if not path.exists() else f"data path is not a file: {path}"
        )
    source = str(path.resolve())
    if path.suffix.lower() == ".txt":
        if kind not in ("auto", "text"):
            raise InputError(f"{path}: a .txt file is a plain text corpus; it cannot be read as {kind!r}")
        try:
            lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        except (OSError, UnicodeDecodeError) as err:
            raise InputError(f"cannot read data file {path}: {err}") from None
        docs = tuple(line for line in lines if line)
        if not docs:
            raise InputError(f"data file has no text: {path}")
        return Part("text", docs, source)
    if kind == "qa":
        return Part("qa", tuple(load_qa_file(path)), source)
    objects = _records(path)
    if not objects:
        raise InputError(f"data file has no records: {path}")
    kind = _detect_kind(path, objects) if kind == "auto" else kind
    if kind == "qa":
        return Part("qa", tuple(load_qa_file(path)), source)
    parse = _mcq if kind == "mcq" else _text
    return Part(kind, tuple(parse(location, obj) for location, obj in objects), source)


def split_records(part: Part, test_fraction: float, seed: int) -> tuple[Part, Part]:
    """(train, test): a seeded shuffle of the indices, the first ``round(n * test_fraction)`` are test.

    Each part keeps the file's order. Raises :class:`InputError` naming the file and the numbers when
    either part would be empty.
    """
    if not 0.0 < test_fraction < 1.0 or math.isnan(test_fraction):
        raise InputError(f"test fraction must be in (0, 1), got {test_fraction}")
    n = len(part.records)
    n_test = round(n * test_fraction)
    if n_test < 1 or n - n_test < 1:
        raise InputError(
            f"{part.source} has {n} record(s): a train/test split with test fraction "
            f"{test_fraction} leaves {n - n_test} for train and {n_test} for test; each needs at least 1"
        )
    order = list(range(n))
    random.Random(seed).shuffle(order)
    test_ids = set(order[:n_test])
    train = tuple(r for i, r in enumerate(part.records) if i not in test_ids)
    test = tuple(r for i, r in enumerate(part.records) if i in test_ids)
    return Part(part.kind, train, part.source), Part(part.kind, test, part.source)


def load_attack_data(
    data: str | Path | None = None,
    *,
    train_path: str | Path | None = None,
    test_path: str | Path | None = None,
    kind: str = "auto",
    test_fraction: float = 0.5,
    seed: int = 0,
) -> AttackData:
    """The attack's train and test parts: one file split by :func:`split_records`, or two files."""
    if data is not None and (train_path is not None or test_path is not None):
        raise InputError(
            "give either one data file (split into train/test) or a train file and a test file, not both"
        )
    if data is not None:
        train, test = split_records(read_records(data, kind), test_fraction, seed)
        return AttackData(train, test, {"test_fraction": test_fraction, "seed": seed})
    if train_path is None or test_path is None:
        raise InputError("no data: give one data file, or a train file and a test file")
    return AttackData(read_records(train_path, kind), read_records(test_path, kind), None)


# ---------------------------------------------------------------------------------------------- tokenising
def resolve_template(tokenizer: Any, template: str) -> str:
    """``auto`` is ``chat`` when the tokenizer has a chat template, else ``plain``."""
    if template not in TEMPLATES:
        raise InputError(f"unknown template {template!r}; expected {', '.join(TEMPLATES)}")
    if template == "auto":
        return "chat" if getattr(tokenizer, "chat_template", None) else "plain"
    if template == "chat" and not getattr(tokenizer, "chat_template", None):
        raise InputError(
            "template 'chat' needs a tokenizer with a chat template; this one has none (use 'plain')"
        )
    return template


def _chat_ids(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool) -> list[int]:
    out = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation_prompt)
    if isinstance(out, Mapping):  # transformers 5 returns a BatchEncoding by default
        out = out["input_ids"]
    return list(out)


def _example(prompt: list[int], answer: list[int], max_length: int) -> Example:
    ids = (prompt + answer)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt) + answer)[:max_length]
    return {
        "input_ids": torch.tensor(ids, dtype=torch.long),
        "attention_mask": torch.ones(len(ids), dtype=torch.long),
        "labels": torch.tensor(labels, dtype=torch.long),
    }


def encode_qa(tokenizer: Any, pair: QAPair, template: str, max_length: int) -> Example:
    """One QA pair, labels on the answer and EOS (``plain``: the core's ``tokenize_qa``)."""
    if template == "plain":
        return tokenize_qa(tokenizer, pair.question, pair.answer, max_length=max_length)
    chat = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": pair.question}]
    prompt = _chat_ids(tokenizer, chat, generation_prompt=True)
    full = _chat_ids(
        tokenizer, [*chat, {"role": "assistant", "content": pair.answer}], generation_prompt=False
    )
    if tokenizer.eos_token_id is not None and full[-1] != tokenizer.eos_token_id:
        full.append(tokenizer.eos_token_id)
    if full[: len(prompt)] != prompt:
        raise InputError(
            "the chat template renders the prompt differently with and without the answer; "
            "use template 'plain'"
        )
    return _example(prompt, full[len(prompt) :], max_length)


def mcq_prompt(item: MCQ) -> str:
    """lm-eval's MMLU / WMDP layout: question, ``A. choice`` lines, ``Answer:``."""
    lines = [item.question, *(f"{LETTERS[i]}. {c}" for i, c in enumerate(item.choices)), "Answer:"]
    return "\n".join(lines)


def encode_mcq_choices(tokenizer: Any, item: MCQ, max_length: int) -> list[Example]:
    """One example per choice: the prompt, then `` <letter>`` as the labelled continuation."""
    prompt = tokenizer(mcq_prompt(item), add_special_tokens=True)["input_ids"]
    out = []
    for i in range(len(item.choices)):
        letter = tokenizer(" " + LETTERS[i], add_special_tokens=False)["input_ids"]
        if not letter:
            raise InputError(f"the tokenizer encodes the answer letter {LETTERS[i]!r} as no token")
        if len(prompt) + len(letter) > max_length:
            raise InputError(
                f"an MCQ prompt is {len(prompt)} tokens, over max length {max_length}: {item.question[:60]!r}"
            )
        out.append(_example(list(prompt), list(letter), max_length))
    return out


def encode_train(tokenizer: Any, part: Part, template: str, max_length: int) -> list[Example]:
    """Training examples of a part: QA (answer tokens), MCQ (the right letter), text (every token)."""
    if part.kind == "qa":
        return [encode_qa(tokenizer, r, template, max_length) for r in part.records]
    if part.kind == "mcq":
        return [encode_mcq_choices(tokenizer, r, max_length)[r.answer] for r in part.records]
    return [tokenize_text(tokenizer, r, max_length=max_length) for r in part.records]


__all__ = [
    "KINDS",
    "MCQ",
    "SYSTEM_PROMPT",
    "TEMPLATES",
    "AttackData",
    "Part",
    "encode_mcq_choices",
    "encode_qa",
    "encode_train",
    "load_attack_data",
    "mcq_prompt",
    "read_records",
    "resolve_template",
    "split_records",
]
