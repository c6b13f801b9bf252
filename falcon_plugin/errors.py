"""Every exception the FALCON core raises on purpose, in one place (import-light: no torch).

Each message names the bad parameter or item and the bad value, and is raised before any expensive
work (a forward pass, a training step) where the input allows it. All derive from
:class:`FalconError`, so ``except FalconError`` catches exactly FALCON's own errors, and each keeps
the built-in base it always had (``ValueError`` or ``FloatingPointError``) for existing handlers.
"""

from __future__ import annotations


class FalconError(Exception):
    """Base class of FALCON's exceptions."""


class FalconConfigError(FalconError, ValueError):
    """A FALCON ``method_args`` value is invalid; the message names the parameter and the value."""


class FalconDataError(FalconError, ValueError):
    """The train data cannot be used (empty, all padding, no answer tokens, token ids the model lacks).

    The message names the item and field (e.g. ``train_dataset[3]['forget'].input_ids``) and the bad value.
    """


class ModelStructureError(FalconError, ValueError):
    """The model is not a decoder-only LM whose layers FALCON can find."""


class EmptyMaskError(FalconError, ValueError):
    """A batch has no token to compute a loss on (all padding, or no answer tokens)."""


class NonFiniteLossError(FalconError, FloatingPointError):
    """A FALCON loss or gradient became NaN/inf: the run stops before the optimizer step."""


class SeparabilityInputError(FalconError, ValueError):
    """Bad input for the ``separability`` Step-1 criterion (too few samples for the held-out split, an
    empty set, mismatched layers or dimensions, a bad setting); the message names the value."""


__all__ = [
    "EmptyMaskError",
    "FalconConfigError",
    "FalconDataError",
    "FalconError",
    "ModelStructureError",
    "NonFiniteLossError",
    "SeparabilityInputError",
]
