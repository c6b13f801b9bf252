"""FALCON gets into a host-shaped ``trainer.TRAINER_REGISTRY`` and runs there (tests/fixtures/fake_host).

Host-touching checks run in fresh interpreters (``trainer`` is a process-global module name); the
registration helpers of :mod:`falcon_plugin.host` are also tested in-process.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

from falcon_plugin import host

REPO = Path(__file__).resolve().parents[1]
FAKE_HOST = Path(__file__).parent / "fixtures" / "fake_host"


def run_python(
    args: list[str], cwd: Path, *, pythonpath: bool = True, extra_path: Path | None = None, timeout: int = 240
) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    if pythonpath:  # the source tree, whatever state an editable install is in
        env["PYTHONPATH"] = os.pathsep.join(str(p) for p in (REPO, extra_path) if p is not None)
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def fake_distribution(root: Path) -> Path:
    """A third-party distribution on ``root`` that declares the trainer ``Extra``."""
    (root / "extra_trainer.py").write_text("def build(base):\n    return type('Extra', (base,), {})\n")
    info = root / "extra_trainer-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: extra-trainer\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[open_unlearning.trainers]\nExtra = extra_trainer:build\n")
    return root


def test_fake_host_run_constructs_and_trains_falcon(tmp_path: Path) -> None:
    """``python src/train.py experiment=unlearn/tofu trainer=FALCON``: registry, construction, MI report.

    Like the real host, the fake ``src/train.py`` imports ``trainer`` before Hydra scans its plugins,
    so this is the "host already imported" path; a third-party entry point (``Extra``) rides along.
    """
    ext = fake_distribution(tmp_path)
    proc = run_python(
        [
            str(FAKE_HOST / "src" / "train.py"),
            "experiment=unlearn/tofu",
            "trainer=FALCON",
            "task_name=e2e",
            "++trainer.args.max_steps=2",
            "trainer.method_args.mi.samples=8",
        ],
        cwd=tmp_path,
        extra_path=ext,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "saves" / "unlearn" / "e2e"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["registry"]["Extra"] == "UnlearnTrainer"
    assert summary["registry"]["GradAscent"] == "UnlearnTrainer"  # the host's own entries are untouched
    assert summary["trainer_class"] == "FALCON"
    mro = summary["trainer_mro"]
    # the registry holds falcon_trainer_class(UnlearnTrainer) itself: no host-only subclass
    assert mro[:2] == ["falcon_plugin.trainer.FALCON", "falcon_plugin.trainer.FalconMixin"]
    assert mro[2] == "trainer.unlearn.base.UnlearnTrainer"
    assert summary["config"]["mode"] == "unlearn"
    assert isinstance(summary["falcon_layer"], int)
    assert json.loads(
        (out / "mi_report.json").read_text()
    )  # layer: auto wrote its report into the run's output dir


def test_import_hook_registers_when_the_host_trainer_is_imported_later(tmp_path: Path, monkeypatch) -> None:
    from hydra_plugins.falcon_plugin_searchpath import _host_hook

    package = tmp_path / "trainer"
    package.mkdir()
    (package / "__init__.py").write_text(
        "TRAINER_REGISTRY = {}\n\ndef load_trainer(*args, **kwargs):\n    pass\n"
    )
    calls: list[str] = []
    monkeypatch.setattr(host, "register_with_host", lambda module: calls.append(module.__name__))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(
        sys, "meta_path", [f for f in sys.meta_path if not getattr(f, "falcon_plugin_hook", False)]
    )
    monkeypatch.setitem(sys.modules, "trainer", None)  # restored (removed) after the test
    del sys.modules["trainer"]

    _host_hook.activate()
    _host_hook.activate()  # Hydra may execute the plugin module twice
    assert sum(getattr(f, "falcon_plugin_hook", False) for f in sys.meta_path) == 1 and calls == []
    module = importlib.import_module("trainer")
    assert calls == ["trainer"] and module.__file__ == str(package / "__init__.py")
    _host_hook.activate()  # already registered: no second registration
    assert calls == ["trainer"]


def test_only_a_module_with_registry_and_loader_counts_as_the_host() -> None:
    from hydra_plugins.falcon_plugin_searchpath._host_hook import is_host_trainer_module

    assert is_host_trainer_module(types.SimpleNamespace(TRAINER_REGISTRY={}, load_trainer=print))
    assert not is_host_trainer_module(types.SimpleNamespace(TRAINER_REGISTRY={}))
    assert not is_host_trainer_module(types.SimpleNamespace(TRAINER_REGISTRY=[], load_trainer=print))


def test_plugin_is_silent_and_light_in_a_non_host_hydra_app(tmp_path: Path) -> None:
    app = tmp_path / "app.py"
    app.write_text(
        textwrap.dedent("""
        import json, sys
        import hydra
        from hydra.core.hydra_config import HydraConfig

        @hydra.main(version_base=None, config_path=None)
        def main(cfg):
            print(json.dumps({
                "sources": [s.provider for s in HydraConfig.get().runtime.config_sources],
                "loaded": sorted(m for m in ("torch", "transformers", "trainer") if m in sys.modules),
                "hook": any(getattr(f, "falcon_plugin_hook", False) for f in sys.meta_path),
            }))

        main()
    """)
    )
    # -W ignore: Python warnings of Hydra/OmegaConf version pairs are theirs; anything else on stderr is ours
    proc = run_python(
        ["-W", "ignore", str(app), "hydra.output_subdir=null", "hydra.run.dir=."], cwd=tmp_path, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    (line,) = proc.stdout.splitlines()
    seen = json.loads(line)
    assert "falcon-unlearning" in seen["sources"]
    assert seen["loaded"] == []
    assert seen["hook"] is True  # waiting for a `trainer` module that never comes


def test_installed_distribution_exposes_plugin_configs_and_entry_point(tmp_path: Path) -> None:
    """Outside the source tree, as a user's Hydra app sees it (catches a stale ``pip install -e``)."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        distribution("falcon-unlearning")
    except PackageNotFoundError:
        pytest.skip("falcon-unlearning is not installed")
    probe = textwrap.dedent("""
        import importlib.util, importlib.resources, json
        from importlib.metadata import entry_points
        searchpath = "hydra_plugins.falcon_plugin_searchpath.falcon_plugin_searchpath"
        configs = importlib.resources.files("falcon_plugin.configs")
        trainers = entry_points(group="open_unlearning.trainers")
        print(json.dumps({
            "plugin": importlib.util.find_spec(searchpath) is not None,
            "config": configs.joinpath("trainer/FALCON.yaml").is_file(),
            "entry_point": [e.value for e in trainers if e.name == "FALCON"],
        }))
    """)
    proc = run_python(["-c", probe], cwd=tmp_path, pythonpath=False, timeout=60)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    assert seen["plugin"], (
        "hydra_plugins.falcon_plugin_searchpath is not importable: re-run `pip install -e .`"
    )
    assert seen["config"]
    assert seen["entry_point"] == ["falcon_plugin.host:build_falcon_trainer"]


def test_entry_point_is_declared_in_pyproject() -> None:
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert (
        project["entry-points"]["open_unlearning.trainers"]["FALCON"]
        == "falcon_plugin.host:build_falcon_trainer"
    )
    assert not (
        REPO / "hydra_plugins" / "__init__.py"
    ).exists()  # namespace package shared with other plugins


def test_register_trainers_keeps_host_names_and_survives_a_broken_factory(monkeypatch, caplog) -> None:
    def broken(base: type) -> type:
        raise RuntimeError("boom")

    monkeypatch.setattr(
        host,
        "trainer_factories",
        lambda: {"FALCON": lambda base: base, "Broken": broken, "New": lambda base: type("New", (base,), {})},
    )
    registry: dict[str, type] = {"FALCON": int}
    with caplog.at_level(logging.WARNING, logger="falcon_plugin.host"):
        added = host.register_trainers(registry, object)
    assert added == ["New"] and registry["FALCON"] is int and "Broken" not in registry
    assert "cannot build trainer Broken" in caplog.text
    assert host.register_trainers(registry, object, overwrite=True) == ["FALCON", "New"]


def test_base_class_falls_back_to_transformers_trainer(caplog) -> None:
    import transformers

    module = types.ModuleType("not_a_real_host_trainer")
    with caplog.at_level(logging.WARNING, logger="falcon_plugin.host"):
        assert host.host_base_class(module) is transformers.Trainer
    assert "not_a_real_host_trainer.unlearn.base.UnlearnTrainer not found" in caplog.text


def test_wmdp_short_form_constructs_falcon_and_the_host_default_explains_rmu_leftovers() -> None:
    import transformers
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf
    from transformers import LlamaConfig, LlamaForCausalLM

    from falcon_plugin.config import FalconConfigError

    cls = host.build_falcon_trainer(transformers.Trainer)
    configs = str(FAKE_HOST / "configs")
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=32,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=8,
            num_attention_heads=2,
            num_key_value_heads=2,
        )
    )

    def method_args(config_name: str, *overrides: str) -> dict:
        with initialize_config_dir(config_dir=configs, version_base=None):
            cfg = compose(config_name=config_name, overrides=[*overrides, "task_name=t"])
        # resolved, as the host's `**method_args` of a DictConfig resolves each value it reads
        return OmegaConf.to_container(cfg.trainer.method_args, resolve=True)  # type: ignore[return-value]

    args = transformers.TrainingArguments(output_dir="unused", use_cpu=True, report_to="none")
    built = cls(
        model=model, args=args, **method_args("train.yaml", "experiment=unlearn/wmdp", "trainer=FALCON")
    )
    assert (built.falcon_layer, built.falcon_config.steering_coeff) == (7, 20.0)
    # the host's own WMDP experiment + trainer=FALCON keeps RMU's non-null arguments: a clear error
    with pytest.raises(FalconConfigError, match=r"alpha.*gamma.*null"):
        cls(
            model=model,
            args=args,
            **method_args("unlearn.yaml", "experiment=unlearn/wmdp/default", "trainer=FALCON"),
        )


def test_falcon_factory_rejects_unknown_non_null_method_args() -> None:
    import transformers

    from falcon_plugin.config import FalconConfigError

    cls = host.build_falcon_trainer(transformers.Trainer)
    assert cls.__name__ == "FALCON" and issubclass(cls, transformers.Trainer)
    with pytest.raises(FalconConfigError, match=r"\['gamma'\].*null"):
        cls(model=None, gamma=1.0, alpha=None, callbacks=None)
