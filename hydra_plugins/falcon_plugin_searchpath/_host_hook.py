"""Registers ``open_unlearning.trainers`` entry points into open-unlearning when (and only when) it loads.

open-unlearning keeps its trainers in ``trainer.TRAINER_REGISTRY`` (the top-level module ``trainer`` of
its ``src/``), and its ``load_trainer`` looks the configured ``handler`` up there. :func:`activate`

* registers at once if a host ``trainer`` module is already imported (open-unlearning's ``src/train.py``
  imports it before Hydra starts, so this is the usual path), otherwise
* puts a small finder on ``sys.meta_path`` that wraps the loader of the top-level module ``trainer``
  and registers right after that module has executed.

A module counts as the host's only if it has a dict ``TRAINER_REGISTRY`` and a callable ``load_trainer``;
anything else named ``trainer`` is left alone. Nothing heavy is imported here: :mod:`falcon_plugin.host`
(and through it torch / transformers, which the host has loaded anyway) is imported only once a host
module is seen. Errors while registering are logged, never raised into the host's import.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

HOST_MODULE = "trainer"
logger = logging.getLogger("falcon_plugin.host")

_registered: set[int] = set()  # id() of the registries already filled


def is_host_trainer_module(module: object) -> bool:
    """True for open-unlearning's ``trainer`` module (a dict ``TRAINER_REGISTRY`` and a ``load_trainer``)."""
    return isinstance(getattr(module, "TRAINER_REGISTRY", None), dict) and callable(
        getattr(module, "load_trainer", None)
    )


def register_host(module: ModuleType) -> None:
    """Register the entry-point trainers into ``module.TRAINER_REGISTRY`` once; never raises."""
    if not is_host_trainer_module(module):
        return
    registry = module.TRAINER_REGISTRY
    if id(registry) in _registered:
        return
    _registered.add(id(registry))
    try:
        from falcon_plugin.host import register_with_host

        register_with_host(module)
    except Exception:  # the host must keep working with its own trainers
        logger.warning(
            "falcon-unlearning: could not register trainers into %s", module.__name__, exc_info=True
        )


class _RegisteringLoader:
    """Delegates to the real loader; after the module body ran, registers into it."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        register_host(module)

    def __getattr__(self, name: str) -> Any:  # get_source, get_resource_reader, is_package, ...
        return getattr(self._loader, name)


class HostTrainerFinder(importlib.abc.MetaPathFinder):
    """Meta-path finder that only ever answers for the top-level module ``trainer``."""

    falcon_plugin_hook = True

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != HOST_MODULE or path is not None:
            return None
        for finder in sys.meta_path:
            if getattr(finder, "falcon_plugin_hook", False):
                continue
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find is not None else None
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _RegisteringLoader(spec.loader)
        return spec


def activate() -> None:
    """Register now if the host is loaded, else watch for its import. Idempotent and silent."""
    module = sys.modules.get(HOST_MODULE)
    if module is not None:
        register_host(module)
        return
    if not any(getattr(finder, "falcon_plugin_hook", False) for finder in sys.meta_path):
        sys.meta_path.insert(0, HostTrainerFinder())
