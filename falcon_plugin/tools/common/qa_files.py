"""Reading user question/answer files for ``--data``, ``--forget-data``/``--retain-data`` and ``mi``.

Accepted layouts (UTF-8):

* JSON Lines: one object per line;
* JSON: a list of objects, or ``{"forget": [...], "retain": [...]}`` (the split is then implied).

Each object needs non-empty string fields ``question`` and ``answer``; in a single ``--data`` file
each also needs ``split``: ``"forget"`` or ``"retain"``. Any other field is ignored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InputError

SPLITS = ("forget", "retain")


@dataclass(frozen=True)
class QAPair:
    """One question/answer pair and the side it is on."""

    question: str
    answer: str
    split: str | None = None


def _records(path: Path) -> list[tuple[str, Any]]:
    """(location, object) pairs from a JSON or JSONL file; location is used in error messages."""
    if not path.exists():
        raise InputError(f"data file not found: {path}")
    if not path.is_file():
        raise InputError(f"data path is not a file: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read data file {path}: {err}") from None
    stripped = text.lstrip()
    if not stripped:
        raise InputError(f"data file is empty: {path}")
    if stripped[0] in "[{":
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = None  # maybe JSON Lines whose lines are objects
        if isinstance(data, list):
            return [(f"{path}[{i}]", obj) for i, obj in enumerate(data)]
        if isinstance(data, dict):
            if any(k in data for k in SPLITS):
                out = []
                for split in SPLITS:
                    items = data.get(split, [])
                    if not isinstance(items, list):
                        raise InputError(f"{path}: field {split!r} must be a list of objects")
                    out += [
                        (f"{path}[{split}][{i}]", {**obj, "split": split} if isinstance(obj, dict) else obj)
                        for i, obj in enumerate(items)
                    ]
                return out
            return [(f"{path}:1" if "\n" not in text.strip() else str(path), data)]
    out = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append((f"{path}:{lineno}", json.loads(line)))
        except json.JSONDecodeError as err:
            raise InputError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
    return out


def _pair(location: str, obj: Any, need_split: bool) -> QAPair:
    if not isinstance(obj, dict):
        raise InputError(
            f"{location}: expected an object with 'question' and 'answer', got {type(obj).__name__}"
        )
    for key in ("question", "answer"):
        value = obj.get(key)
        if not isinstance(value, str) or not value.strip():
            raise InputError(f"{location}: missing or empty string field {key!r} (fields: {sorted(obj)})")
    split = obj.get("split")
    if need_split and split not in SPLITS:
        raise InputError(f"{location}: field 'split' must be 'forget' or 'retain', got {split!r}")
    return QAPair(obj["question"].strip(), obj["answer"].strip(), split if split in SPLITS else None)


def load_qa_file(path: str | Path, need_split: bool = False) -> list[QAPair]:
    """All question/answer pairs of one file (see the module docstring for the layouts)."""
    path = Path(path)
    pairs = [_pair(loc, obj, need_split) for loc, obj in _records(path)]
    if not pairs:
        raise InputError(f"data file has no question/answer records: {path}")
    return pairs


def load_split_data(
    data: str | Path | None, forget: str | Path | None, retain: str | Path | None
) -> tuple[list[QAPair], list[QAPair]]:
    """(forget, retain) pairs from either one ``--data`` file with a split field, or two files."""
    if data is not None and (forget is not None or retain is not None):
        raise InputError("give either --data or --forget-data/--retain-data, not both")
    if data is not None:
        pairs = load_qa_file(data, need_split=True)
        forget_pairs = [p for p in pairs if p.split == "forget"]
        retain_pairs = [p for p in pairs if p.split == "retain"]
        for name, side in (("forget", forget_pairs), ("retain", retain_pairs)):
            if not side:
                raise InputError(f"{data}: no record has split={name!r}")
        return forget_pairs, retain_pairs
    if forget is None or retain is None:
        raise InputError("--forget-data and --retain-data must be given together")
    return load_qa_file(forget), load_qa_file(retain)


def write_qa_jsonl(pairs: list[QAPair]) -> str:
    """JSON Lines text for ``pairs`` (the format ``--data`` reads)."""
    return "".join(
        json.dumps({"question": p.question, "answer": p.answer, "split": p.split}) + "\n" for p in pairs
    )


def load_mi_records(path: str | Path) -> list[QAPair | str]:
    """Records for MI layer selection: question/answer pairs, or plain ``text`` documents (corpora)."""
    path = Path(path)
    out: list[QAPair | str] = []
    for location, obj in _records(path):
        if (
            isinstance(obj, dict)
            and "question" not in obj
            and "answer" not in obj
            and isinstance(obj.get("text"), str)
        ):
            if not obj["text"].strip():
                raise InputError(f"{location}: empty 'text' field")
            out.append(obj["text"])
            continue
        if isinstance(obj, dict) and "question" not in obj and "answer" not in obj:
            raise InputError(
                f"{location}: needs 'question' and 'answer' (or 'text') fields, has {sorted(obj)}"
            )
        out.append(_pair(location, obj, need_split=False))
    if not out:
        raise InputError(f"data file has no records: {path}")
    return out
