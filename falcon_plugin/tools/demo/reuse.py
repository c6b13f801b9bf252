"""Reusing a complete ``finetuned/`` folder on a rerun of the demo (after Ctrl-C, or to try other methods).

The fine-tune writes :data:`RECORD_FILE` into the model's temporary folder before that folder is
renamed into place, so a ``finetuned/`` with the record is complete. A rerun reuses it when the
recorded settings equal the new run's: everything the fine-tuned weights depend on (seed, data,
model shape or user model folder, fine-tuning settings, sequence length, library versions). Any
difference is logged by name and the model is fine-tuned again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)
RECORD_FILE = "demo_finetune.json"
SCHEMA = "falcon-unlearn/demo-finetune/1"


def _folder_fingerprint(folder: Path) -> list[list[Any]]:
    """Name, size and modification time of each file of a user's model folder (not its contents)."""
    return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(folder.iterdir()) if p.is_file()]


def finetune_settings(
    seed: int, data_text: str, model_spec: Any, model_path: Path | None, finetune: Any, max_length: int
) -> dict[str, Any]:
    """What the fine-tuned weights depend on, as a JSON-able dict."""
    import transformers

    from falcon_plugin import __version__

    if model_path is None:
        model: dict[str, Any] = {"tiny_llama": asdict(model_spec)}
    else:
        resolved = model_path.resolve()
        model = {"path": str(resolved), "files": _folder_fingerprint(resolved)}
    return {
        "seed": seed,
        "data_sha256": hashlib.sha256(data_text.encode("utf-8")).hexdigest(),
        "model": model,
        "finetune": asdict(finetune),
        "max_length": max_length,
        "versions": {
            "falcon_plugin": __version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
    }


def record(settings: dict[str, Any], seconds: float) -> dict[str, Any]:
    """The content of :data:`RECORD_FILE`."""
    return {"schema": SCHEMA, "settings": settings, "seconds": seconds}


def reusable(folder: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The folder's record when its settings equal ``settings`` (then the folder can be reused), else None;
    logs why it cannot."""
    path = folder / RECORD_FILE
    if not folder.is_dir():
        return None
    if not path.is_file():
        logger.info("demo: %s has no %s (incomplete or older run): fine-tuning again", folder, RECORD_FILE)
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        logger.info("demo: unreadable %s (%s): fine-tuning again", path, err)
        return None
    recorded = saved.get("settings") if isinstance(saved, dict) and saved.get("schema") == SCHEMA else None
    if recorded != settings:
        old = recorded if isinstance(recorded, dict) else {}
        changed = sorted(k for k in {*settings, *old} if settings.get(k) != old.get(k))
        logger.info("demo: %s was fine-tuned with other %s: fine-tuning again", folder, ", ".join(changed))
        return None
    return saved


def load_weights(model: torch.nn.Module, folder: Path) -> None:
    """Copy the weights saved in ``folder`` into ``model`` (same architecture; its device kept)."""
    from transformers import AutoModelForCausalLM

    saved = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True)
    model.load_state_dict(saved.state_dict())
    del saved


__all__ = ["RECORD_FILE", "finetune_settings", "load_weights", "record", "reusable"]
