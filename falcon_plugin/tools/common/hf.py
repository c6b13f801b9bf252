"""Loading a user's local Hugging Face causal LM (``--model PATH``), offline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .errors import InputError


def load_causal_lm(path: str | Path) -> tuple[Any, torch.nn.Module]:
    """(tokenizer, model) from a local folder; a missing pad token falls back to EOS.

    The model goes to CUDA when available, in float32 on CPU (bfloat16 weights are upcast there).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not path.exists():
        raise InputError(f"--model not found: {path}")
    if not (path / "config.json").is_file():
        raise InputError(f"--model must be a Hugging Face model folder with a config.json: {path}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"cannot load --model {path}: {first}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if torch.cuda.is_available():
        model.to("cuda")
    elif next(model.parameters()).dtype != torch.float32:
        model.float()
    model.eval()
    return tokenizer, model
