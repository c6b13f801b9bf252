"""FALCON (arXiv 2502.01472, NeurIPS 2025) LLM unlearning, as a plugin for open-unlearning.

Import-light on purpose: the Hydra search-path plugin and entry points import this package, so heavy
modules (torch, transformers) load only when their names are used.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "FALCON": "falcon_plugin.trainer",
    "FalconMixin": "falcon_plugin.trainer",
    "falcon_trainer_class": "falcon_plugin.trainer",
    "FalconState": "falcon_plugin.state",
    "FalconConfig": "falcon_plugin.config",
    "MIConfig": "falcon_plugin.config",
    "FalconError": "falcon_plugin.errors",
    "FalconConfigError": "falcon_plugin.errors",
    "FalconDataError": "falcon_plugin.errors",
    "ModelStructureError": "falcon_plugin.errors",
    "EmptyMaskError": "falcon_plugin.errors",
    "NonFiniteLossError": "falcon_plugin.errors",
    "SeparabilityInputError": "falcon_plugin.errors",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'falcon_plugin' has no attribute {name!r}")
