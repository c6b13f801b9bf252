"""Hydra search-path plugin: makes FALCON's configs and trainer visible to open-unlearning.

Hydra imports every module under the ``hydra_plugins`` namespace in every Hydra application, in every
process of a multi-process launch. Importing this module therefore must stay cheap and silent: it
imports neither torch, transformers nor :mod:`falcon_plugin`. It

* appends ``pkg://falcon_plugin/configs`` to the config search path (after the application's own
  configs, so the host's files always win on a name clash), and
* activates :mod:`._host_hook`, which registers the ``open_unlearning.trainers`` entry points into
  open-unlearning's ``trainer.TRAINER_REGISTRY`` once that module is (or has been) imported.
"""

from __future__ import annotations

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

from hydra_plugins.falcon_plugin_searchpath import _host_hook

PROVIDER = "falcon-unlearning"
CONFIG_PATH = "pkg://falcon_plugin/configs"


class FalconSearchPathPlugin(SearchPathPlugin):
    """Appends FALCON's packaged configs (``trainer/FALCON``, ``experiment/unlearn/...``)."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        """Append, never prepend: configs of the application keep priority over ours."""
        search_path.append(provider=PROVIDER, path=CONFIG_PATH)


# Hydra may execute this module more than once; activate() is idempotent.
_host_hook.activate()
