"""The attacks' hyper-parameters, one frozen dataclass each (import-light: no torch, for the CLI).

Defaults are the source protocols' (see :mod:`.relearn`, :mod:`.lora`, :mod:`.quantize` and
docs/attacks.md); ``validate`` raises :class:`InputError` naming the bad value; ``protocol`` is what
the result file records.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from ..common.errors import InputError

RELEARN_SOURCE = (
    "OPTML-Group/Unlearn-Simple WMDP/configs/unlearn/wmdp/Relearn+Forget.json (WMDP/src/model/relearn.py)"
)
LORA_SOURCE = "ethz-spylab/unlearning-vs-safety src/finetuning/finetune.py"
QUANT_SOURCE = "zzwjames/FailureLLMUnlearning utils.py load_model (bitsandbytes load_in_8bit / load_in_4bit)"
SCHEMES = ("bnb", "rtn")
BNB_BLOCKSIZE = 64


@dataclass(frozen=True)
class RelearnSpec:
    """Hyper-parameters of the full fine-tune (defaults: the Unlearn-Simple protocol)."""

    steps: int = 100
    learning_rate: float = 1e-5
    weight_decay: float = 0.0
    batch_size: int = 1
    grad_accum: int = 4
    warmup_steps: int | None = None
    """None: ``max(1, steps // 10)`` (the protocol's)."""
    max_grad_norm: float = 1.0

    def validate(self) -> RelearnSpec:
        for name in ("steps", "batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise InputError(f"relearn {name} must be >= 1, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise InputError(f"relearn learning rate must be > 0, got {self.learning_rate}")
        if self.weight_decay < 0:
            raise InputError(f"relearn weight decay must be >= 0, got {self.weight_decay}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise InputError(f"relearn warmup steps must be >= 0, got {self.warmup_steps}")
        return self

    def protocol(self) -> dict[str, Any]:
        """The exact settings, as written into the result JSON."""
        warmup = max(1, self.steps // 10) if self.warmup_steps is None else self.warmup_steps
        return {
            "source": RELEARN_SOURCE,
            "optimizer": "adamw_torch",
            "lr_scheduler": "linear",
            **{k: v for k, v in asdict(self).items() if k != "warmup_steps"},
            "warmup_steps": warmup,
            "effective_batch": self.batch_size * self.grad_accum,
        }


@dataclass(frozen=True)
class LoraSpec:
    """Hyper-parameters of the LoRA fine-tune (defaults: the unlearning-vs-safety protocol)."""

    rank: int = 128
    alpha: float = 16
    dropout: float = 0.0
    learning_rate: float = 2e-4
    weight_decay: float = 0.01
    epochs: int = 3
    batch_size: int = 1
    grad_accum: int = 1
    warmup_fraction: float = 0.05
    max_grad_norm: float = 1.0
    target_modules: str = "all-linear"

    def validate(self) -> LoraSpec:
        for name in ("rank", "epochs", "batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise InputError(f"relearn-lora {name} must be >= 1, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise InputError(f"relearn-lora learning rate must be > 0, got {self.learning_rate}")
        if not 0 <= self.dropout < 1:
            raise InputError(f"relearn-lora dropout must be in [0, 1), got {self.dropout}")
        if not 0 <= self.warmup_fraction < 1:
            raise InputError(f"relearn-lora warmup fraction must be in [0, 1), got {self.warmup_fraction}")
        return self

    def steps(self, rows: int) -> tuple[int, int]:
        """(max_steps, warmup_steps) for ``rows`` training rows."""
        max_steps = self.epochs * math.ceil(rows / (self.batch_size * self.grad_accum))
        return max_steps, math.ceil(max_steps * self.warmup_fraction)

    def protocol(self, rows: int) -> dict[str, Any]:
        max_steps, warmup = self.steps(rows)
        return {
            "source": LORA_SOURCE,
            "optimizer": "adamw_torch",
            "lr_scheduler": "linear",
            "bias": "none",
            **asdict(self),
            "max_steps": max_steps,
            "warmup_steps": warmup,
            "merged": True,
        }


@dataclass(frozen=True)
class QuantSpec:
    """Which weight format: ``bnb`` (bitsandbytes' LLM.int8 / FP4) or ``rtn`` (per-channel integers)."""

    scheme: str = "bnb"

    def validate(self, bits: int) -> QuantSpec:
        if self.scheme not in SCHEMES:
            raise InputError(f"unknown quantization scheme {self.scheme!r}; expected {', '.join(SCHEMES)}")
        if self.scheme == "bnb" and bits not in (4, 8):
            raise InputError(f"scheme 'bnb' has 8 and 4 bits only, got {bits}")
        if not 2 <= bits <= 8:
            raise InputError(f"quantization bits must be in 2..8, got {bits}")
        return self

    def protocol(self, bits: int) -> dict[str, Any]:
        if self.scheme == "bnb":
            fmt = (
                "int8, per-row absmax (LLM.int8 weight format)"
                if bits == 8
                else f"fp4 (e2m1), absmax per block of {BNB_BLOCKSIZE}, no double quantization"
            )
        else:
            fmt = f"int{bits}, per-output-channel symmetric round-to-nearest"
        return {
            "source": QUANT_SOURCE,
            "scheme": self.scheme,
            "bits": bits,
            "format": fmt,
            "implementation": "weight round trip in torch",
            "modules": "every nn.Linear except the output head",
        }


__all__ = [
    "BNB_BLOCKSIZE",
    "LORA_SOURCE",
    "QUANT_SOURCE",
    "RELEARN_SOURCE",
    "SCHEMES",
    "LoraSpec",
    "QuantSpec",
    "RelearnSpec",
]
