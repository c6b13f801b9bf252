"""Recovery attacks: does the forgotten knowledge come back? (``falcon-unlearn attack``; docs/attacks.md)

Library API::

    from falcon_plugin.tools.attacks import AttackOptions, load_attack_data, run_attacks, leaderboard_columns

    data = load_attack_data("forget01.json", test_fraction=0.5, seed=0)        # or train_path=, test_path=
    result = run_attacks("saves/unlearn/falcon_tofu", data, "relearn,relearn-lora,quantize",
                         AttackOptions(seed=0), out="attacks/falcon_tofu")      # writes attacks.json
    leaderboard_columns(result)   # {"relearn/forget_prob_before": ..., "relearn/forget_prob_after": ...}

Attacks: ``relearn`` (:mod:`.relearn`, full fine-tune, OPTML-Group/Unlearn-Simple), ``relearn-lora``
(:mod:`.lora`, peft LoRA, ethz-spylab/unlearning-vs-safety), ``quantize-8bit`` / ``quantize-4bit``
(:mod:`.quantize`, Zhang et al. ICLR 2025). Data: :mod:`.data`; metrics: :mod:`.metrics`; orchestration:
:mod:`.runner`; the result file and its leaderboard columns: :mod:`.result` (import-light).
This module imports torch only when a heavy name is first used.
"""

from __future__ import annotations

from typing import Any

from .result import RESULT_FILE, SCHEMA, leaderboard_columns, read_result, summary_rows

_LAZY = {
    "AttackOptions": "runner",
    "ATTACKS": "runner",
    "parse_attacks": "runner",
    "run_attacks": "runner",
    "AttackData": "data",
    "load_attack_data": "data",
    "RelearnSpec": "specs",
    "LoraSpec": "specs",
    "QuantSpec": "specs",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["RESULT_FILE", "SCHEMA", "leaderboard_columns", "read_result", "summary_rows", *_LAZY]
