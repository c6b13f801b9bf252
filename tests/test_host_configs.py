"""The packaged Hydra configs compose in a host-shaped config tree (tests/fixtures/fake_host/configs).

Uses Hydra's compose API in-process: the search-path plugin is discovered exactly as in a host run
(Hydra scans the ``hydra_plugins`` namespace), so these tests also prove discovery.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import shipped_method_args
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from transformers import TrainingArguments

from falcon_plugin.config import FalconConfig, MIConfig
from falcon_plugin.tools.sweep import falcon_benchmark_overrides

FAKE_CONFIGS = Path(__file__).parent / "fixtures" / "fake_host" / "configs"
PACKAGED = Path(__file__).resolve().parents[1] / "falcon_plugin" / "configs"
BENCHES = ("tofu", "muse", "wmdp")
RMU_ONLY = ("gamma", "alpha", "retain_loss_type", "module_regex")


def composed(config_name: str, *overrides: str, hydra_choices: bool = False) -> dict[str, Any]:
    """Compose like ``python src/train.py --config-name=<config_name> <overrides>`` in the fake host."""
    with initialize_config_dir(config_dir=str(FAKE_CONFIGS), version_base=None):
        cfg = compose(
            config_name=config_name, overrides=[*overrides, "task_name=t"], return_hydra_config=hydra_choices
        )
        if hydra_choices:
            return dict(cfg.hydra.runtime.choices)
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def _number(value: Any) -> Any:
    """YAML reads ``1e-3`` as a string; Hydra/OmegaConf as a float."""
    try:
        return float(value) if isinstance(value, str) else value
    except ValueError:
        return value


def test_plugin_is_on_the_search_path() -> None:
    with initialize_config_dir(config_dir=str(FAKE_CONFIGS), version_base=None):
        cfg = compose(config_name="train.yaml", overrides=["task_name=t"], return_hydra_config=True)
    sources = [(s.provider, s.path) for s in cfg.hydra.runtime.config_sources]
    assert ("falcon-unlearning", "falcon_plugin.configs") in sources
    assert [p for p, _ in sources].index("main") < [p for p, _ in sources].index("falcon-unlearning")


def test_short_form_turns_train_yaml_into_a_falcon_unlearning_run() -> None:
    cfg = composed("train.yaml", "experiment=unlearn/tofu", "trainer=FALCON")
    assert cfg["mode"] == "unlearn"
    assert cfg["trainer"]["handler"] == "FALCON"
    assert cfg["trainer"]["args"]["remove_unused_columns"] is False
    shipped = yaml.safe_load((PACKAGED / "trainer" / "FALCON.yaml").read_text())
    budget = {**shipped["budget"], **shipped["tofu_budget"]}  # TOFU's values first, then the generic ones
    args = cfg["trainer"]["args"]
    assert {k: args[k] for k in budget} == {
        k: _number(v) for k, v in budget.items()
    }  # FALCON's, not the host's 1e-5 and 10 epochs
    assert (args["learning_rate"], args["num_train_epochs"], args["max_steps"]) == (9e-4, 5, -1)
    assert set(cfg["data"]) == {"forget", "retain", "anchor"}
    assert "TOFU_QA_forget" in cfg["data"]["forget"]
    assert cfg["trainer"]["method_args"] == shipped_method_args("tofu")  # TOFU's tensors over the defaults
    tofu_modules = shipped["tofu_method_args"]["trainable_modules"]
    assert cfg["trainer"]["method_args"]["trainable_modules"] == tofu_modules == "down_proj"
    assert shipped_method_args()["trainable_modules"] == "mlp"  # elsewhere (MUSE, no experiment): every MLP


@pytest.mark.parametrize("bench", BENCHES)
def test_short_form_equals_long_form(bench: str) -> None:
    trainer = "FALCON_paper" if bench == "wmdp" else "FALCON"  # the WMDP experiment is the paper's protocol
    short = composed("train.yaml", f"experiment=unlearn/{bench}", f"trainer={trainer}")
    long = composed("unlearn.yaml", f"experiment=unlearn/{bench}/falcon")
    assert short == long
    assert long["trainer"]["handler"] == "FALCON" and long["mode"] == "unlearn"


@pytest.mark.parametrize("bench", ("tofu", "muse"))
def test_short_form_is_the_hosts_unlearn_run_for_any_trainer(bench: str) -> None:
    short = composed("train.yaml", f"experiment=unlearn/{bench}", "trainer=GradAscent")
    host = composed("unlearn.yaml", f"experiment=unlearn/{bench}/default", "trainer=GradAscent")
    if bench == "tofu":  # the TOFU experiment names max_steps for FALCON; for others it is the HF default
        hf_default = TrainingArguments.__dataclass_fields__["max_steps"].default
        assert short["trainer"]["args"].pop("max_steps") == hf_default == -1
        assert "max_steps" not in host["trainer"]["args"]
        # FALCON's TOFU method_args come through this key; another trainer gets null and keeps its own
        assert short["trainer"].pop("benchmark_method_args") is None
    assert short == host


def test_sweep_override_gives_falcon_its_tofu_method_args_in_the_hosts_experiment() -> None:
    """`falcon-unlearn sweep` runs FALCON in the host's own TOFU experiment; its one extra override gives it
    the method_args experiment=unlearn/tofu/falcon gives (TOFU's tensors), and nothing else changes."""
    run = ("unlearn.yaml", "experiment=unlearn/tofu/default", "trainer=FALCON")
    plain, swept = composed(*run), composed(*run, *falcon_benchmark_overrides("tofu"))
    assert plain["trainer"]["method_args"] == shipped_method_args()
    assert swept["trainer"]["method_args"] == shipped_method_args("tofu")
    assert swept["trainer"].pop("benchmark_method_args")["trainable_modules"] == "down_proj"
    swept["trainer"]["method_args"].pop("trainable_modules")
    plain["trainer"]["method_args"].pop("trainable_modules")
    assert swept == plain


def test_paper_trainer_on_tofu_takes_the_official_tofu_lr() -> None:
    """trainer=FALCON_paper on TOFU: the official TOFU command's lr 1e-4, the rest of FALCON's TOFU budget."""
    args = composed("train.yaml", "experiment=unlearn/tofu", "trainer=FALCON_paper")["trainer"]["args"]
    assert (args["learning_rate"], args["num_train_epochs"], args["max_steps"]) == (1e-4, 5, -1)
    muse = composed("train.yaml", "experiment=unlearn/muse", "trainer=FALCON_paper")["trainer"]["args"]
    assert (muse["learning_rate"], muse["max_steps"]) == (5e-5, 100)  # no MUSE-specific budget


def test_cli_trainer_wins_over_the_experiment_override() -> None:
    choices = composed("train.yaml", "experiment=unlearn/tofu", "trainer=FALCON", hydra_choices=True)
    assert choices["trainer"] == "FALCON"
    choices = composed(
        "unlearn.yaml", "experiment=unlearn/tofu/default", "trainer=FALCON", hydra_choices=True
    )
    assert choices["trainer"] == "FALCON"
    assert composed("unlearn.yaml", "experiment=unlearn/tofu/default")["trainer"]["handler"] == "GradAscent"


def test_wmdp_uses_the_paper_settings_and_nulls_rmu_arguments() -> None:
    cfg = composed("unlearn.yaml", "experiment=unlearn/wmdp/falcon")
    args, method = cfg["trainer"]["args"], cfg["trainer"]["method_args"]
    assert (args["learning_rate"], args["max_steps"]) == (5e-5, 80)
    assert method["layer"] == 7 and method["steering_coeff"] == 20
    assert method["trainable_params_regex"] is None and method["trainable_modules"] == "down_proj"
    assert method["retain_weight"] == 100  # trainer=FALCON_paper: down_proj of layers 5..7, alpha 100
    assert all(method[k] is None for k in RMU_ONLY)


def test_method_args_stay_overridable_from_the_command_line() -> None:
    cfg = composed(
        "train.yaml",
        "experiment=unlearn/wmdp",
        "trainer=FALCON",
        "trainer.method_args.layer=3",
        "trainer.method_args.mi.estimator=gaussian",
    )
    assert cfg["trainer"]["method_args"]["layer"] == 3
    assert cfg["trainer"]["method_args"]["mi"]["estimator"] == "gaussian"


def test_falcon_yaml_matches_the_core_defaults() -> None:
    method = shipped_method_args()
    mi = method.pop("mi")
    assert mi == {k: getattr(MIConfig(), k) for k in MIConfig.__dataclass_fields__}
    defaults = FalconConfig().to_dict()
    defaults.pop("mi")
    assert method == defaults
    FalconConfig.from_method_args(**method, mi=mi)  # validates


def test_every_packaged_experiment_declares_the_global_package() -> None:
    files = sorted((PACKAGED / "experiment").rglob("*.yaml"))
    assert len(files) == 2 * len(BENCHES)  # the long and the short form of each benchmark
    for path in files:
        assert path.read_text().startswith("# @package _global_"), path
