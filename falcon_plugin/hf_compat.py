"""What differs between the transformers versions FALCON supports (4.45.1, the host's pin, through 5.x).

``Trainer(tokenizer=...)`` became ``Trainer(processing_class=...)`` in transformers 4.46 and the old
name was removed in 5.0; open-unlearning still passes ``tokenizer=``. Every trainer of this package
(FALCON and the demo's baselines) goes through :func:`trainer_init_kwargs` and reads the tokenizer
back with :func:`processing_class_of`.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping
from typing import Any

import transformers

TRAINER_ACCEPTS_TOKENIZER = "tokenizer" in inspect.signature(transformers.Trainer.__init__).parameters


def trainer_init_kwargs(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``kwargs`` for ``transformers.Trainer.__init__``: ``tokenizer`` renamed where this version lacks it."""
    out = dict(kwargs)
    if "tokenizer" in out and not TRAINER_ACCEPTS_TOKENIZER:
        out.setdefault("processing_class", out.pop("tokenizer"))
    return out


def processing_class_of(trainer: Any) -> Any:
    """The tokenizer a Trainer was built with (``processing_class``; ``tokenizer`` before 4.46), or None."""
    return getattr(trainer, "processing_class", None) or getattr(trainer, "tokenizer", None)


@functools.cache
def init_parameters(cls: type) -> frozenset[str]:
    """Keyword names a trainer class accepts: every ``__init__`` in its MRO, plus ``tokenizer``.

    ``tokenizer`` always counts: :func:`trainer_init_kwargs` maps it to ``processing_class``.
    """
    names: set[str] = {"tokenizer"}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            parameters = inspect.signature(init).parameters.values()
        except (TypeError, ValueError):
            continue
        names.update(p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
    names.discard("self")
    return frozenset(names)


__all__ = ["TRAINER_ACCEPTS_TOKENIZER", "init_parameters", "processing_class_of", "trainer_init_kwargs"]
