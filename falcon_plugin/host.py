"""open-unlearning adapter: entry-point discovery, registry injection, ``UnlearnTrainer`` mix-in.

open-unlearning (github locuslab/open-unlearning) builds a trainer as
``TRAINER_REGISTRY[handler](model=, train_dataset=, eval_dataset=, tokenizer=, data_collator=, args=,
evaluators=, template_args=, **method_args)``. Installed packages contribute trainers through the entry
point group ``open_unlearning.trainers``: each value is a factory ``f(host_base_class) -> trainer class``
and the entry point's name becomes the registry key (``FALCON = "falcon_plugin.host:build_falcon_trainer"``).

The Hydra search-path plugin (``hydra_plugins/falcon_plugin_searchpath``) calls :func:`register_with_host`
when the host's ``trainer`` module is loaded, so the host needs no edit. Without Hydra, call it by hand::

    import trainer                                   # open-unlearning's src/trainer
    from falcon_plugin.host import register_with_host
    register_with_host(trainer)
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, MutableMapping
from importlib.metadata import entry_points
from types import ModuleType
from typing import Any

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "open_unlearning.trainers"
HOST_BASE = ("unlearn.base", "UnlearnTrainer")

TrainerFactory = Callable[[type], type]


def build_falcon_trainer(base: type) -> type:
    """Entry point ``FALCON``: :func:`falcon_plugin.trainer.falcon_trainer_class` on the host's base trainer.

    Nothing host-specific is added: the rule for method_args FALCON does not know (e.g. RMU's
    ``gamma`` inherited from the host's WMDP experiment: dropped when null, an error otherwise) is the
    one the standalone trainer applies too (:meth:`falcon_plugin.config.FalconConfig.from_method_args`).
    """
    from falcon_plugin.trainer import falcon_trainer_class

    return falcon_trainer_class(base)


def host_base_class(host_trainer_module: ModuleType) -> type:
    """The host's ``<trainer>.unlearn.base.UnlearnTrainer``, else ``transformers.Trainer`` (logged)."""
    submodule, attribute = HOST_BASE
    name = f"{host_trainer_module.__name__}.{submodule}"
    try:
        base = getattr(importlib.import_module(name), attribute)
        if isinstance(base, type):
            return base
    except (ImportError, AttributeError):
        pass
    from transformers import Trainer

    logger.warning(
        "falcon-unlearning: %s.%s not found; trainers are built on transformers.Trainer", name, attribute
    )
    return Trainer


def trainer_factories() -> dict[str, TrainerFactory]:
    """Factories of the ``open_unlearning.trainers`` group, by name; FALCON is always present.

    FALCON falls back to :func:`build_falcon_trainer` when the distribution metadata is missing (e.g.
    the source tree put on ``PYTHONPATH`` without ``pip install``).
    """
    factories: dict[str, TrainerFactory] = {"FALCON": build_falcon_trainer}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            factories[ep.name] = ep.load()
        except Exception:
            logger.warning(
                "falcon-unlearning: cannot load entry point %s = %s", ep.name, ep.value, exc_info=True
            )
    return factories


def register_trainers(
    registry: MutableMapping[str, Any], base: type, *, overwrite: bool = False
) -> list[str]:
    """Build every entry-point trainer on ``base`` and add it to ``registry``; returns the names added.

    A name the registry already has (e.g. a host that ships its own trainer of that name) is kept
    unless ``overwrite``. A factory that fails is logged and skipped.
    """
    added = []
    for name, factory in trainer_factories().items():
        if name in registry and not overwrite:
            logger.info("falcon-unlearning: %s already registered by the host; keeping the host's", name)
            continue
        try:
            registry[name] = factory(base)
        except Exception:
            logger.warning("falcon-unlearning: cannot build trainer %s", name, exc_info=True)
            continue
        added.append(name)
    if added:
        logger.info("falcon-unlearning: registered %s (base %s)", added, base.__qualname__)
    return added


def register_with_host(host_trainer_module: ModuleType, *, overwrite: bool = False) -> list[str]:
    """Register the entry-point trainers into open-unlearning's ``trainer`` module; the names added."""
    registry = host_trainer_module.TRAINER_REGISTRY
    return register_trainers(registry, host_base_class(host_trainer_module), overwrite=overwrite)


__all__ = [
    "ENTRY_POINT_GROUP",
    "build_falcon_trainer",
    "host_base_class",
    "register_trainers",
    "register_with_host",
    "trainer_factories",
]
