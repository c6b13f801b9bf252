"""Smoke test of benchmarks/step.py at a tiny size: it runs and writes the documented JSON (no timings)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.gpu_all import FALLBACK_SCALE, SMOKE_STEP  # noqa: E402

TINY = [*SMOKE_STEP, "--log-level", "WARNING"]


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value >= 0


@pytest.fixture(scope="module")
def step_module():
    import torch

    from benchmarks import step

    threads = torch.get_num_threads()  # the benchmark sets 1 thread (tiny ops crawl on a busy 2-core box)
    yield step
    torch.set_num_threads(threads)


def test_step_benchmark_tiny_writes_schema(
    step_module, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "step.json"
    returned = step_module.main([*TINY, "--skip-memory", "--out", str(out)])
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["schema"] == step_module.SCHEMA
    assert data["command"].startswith("python benchmarks/step.py")
    assert set(data) >= {"environment", "config", "model", "data", "step", "mi", "memory", "targets"}
    assert data["model"]["source"] == "random" and data["model"]["layers"] == 4
    assert data["config"]["layer"] == 3 and data["config"]["trainable"] == [
        f"model.layers.{i}.mlp.down_proj.weight" for i in (1, 2, 3)
    ]

    step = data["step"]
    assert step["order"] == list(step_module.VARIANTS) and step["repeats"] == 1
    for name in step_module.VARIANTS:
        variant = step["variants"][name]
        assert len(variant["times_s"]) == 1 and all(_is_number(t) for t in variant["times_s"])
        assert _is_number(variant["median_s"]) and variant["description"]
    assert set(step["ratios"]) == {"ours/official", "ours/rmu", "ours/floor"}
    assert all(_is_number(v) for v in step["ratios"].values())

    mi = data["mi"]
    assert mi["samples"] == {"forget": 16, "retain": 16} and mi["layers_scored"] == 4
    assert (
        _is_number(mi["ratio"])
        and _is_number(mi["forward"]["median_s"])
        and _is_number(mi["mi_selection"]["median_s"])
    )
    assert data["memory"] is None

    targets = {t["name"]: t for t in data["targets"]}
    assert list(targets) == [name for name, _, _ in step_module.TARGETS]
    assert targets["memory_vs_official"]["status"] == "SKIP"
    assert all(t["status"] in ("PASS", "FAIL") for n, t in targets.items() if n != "memory_vs_official")
    assert returned["targets"] == data["targets"]
    printed = capsys.readouterr().out
    assert "| variant |" in printed and "| target |" in printed


def test_memory_child_and_summary(step_module, tmp_path: Path) -> None:
    out = tmp_path / "ours.json"
    child = step_module.main(
        [*TINY, "--only", "ours", "--memory", "--memory-steps", "1", "--memory-out", str(out)]
    )
    assert json.loads(out.read_text(encoding="utf-8")) == child
    assert child["variant"] == "ours" and child["steps"] == 1 and child["method"]
    assert child["peak_mib"] >= child["baseline_mib"] > 0
    summary = step_module.summarize_memory(
        {"ours": child, "official": {**child, "peak_mib": 2 * child["peak_mib"]}}
    )
    assert summary["unit"] == "MiB" and set(summary["variants"]) == {"ours", "official"}
    assert summary["ratios"]["ours/official"] == pytest.approx(0.5)
    assert step_module.evaluate_targets({"memory": summary})[3]["status"] == "PASS"


def test_cli_rejects_bad_arguments(step_module) -> None:
    with pytest.raises(SystemExit):
        step_module.parse_args(["--only", "nope"])
    with pytest.raises(SystemExit):
        step_module.parse_args(["--memory", "--only", "ours,floor"])


# --------------------------------------------------------------------------- 7B scale (issue 14)
SCALE_TINY = [*FALLBACK_SCALE, "--log-level", "WARNING"]


def test_memory_model_parameter_counts_match_transformers() -> None:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from benchmarks import memory_model as mm
    from benchmarks.scale_model import zephyr_config

    assert mm.SHAPES["zephyr-7b-beta"].params == 7_241_732_096  # Zephyr-7B-beta / Mistral-7B-v0.1
    configs = {"zephyr-7b-beta": zephyr_config()}
    for name in ("llama-2-7b", "llama-2-13b", "llama-2-70b"):
        s = mm.SHAPES[name]
        configs[name] = LlamaConfig(
            vocab_size=s.vocab,
            hidden_size=s.hidden,
            intermediate_size=s.intermediate,
            num_hidden_layers=s.layers,
            num_attention_heads=s.heads,
            num_key_value_heads=s.kv_heads,
        )
    for name, config in configs.items():
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        assert sum(p.numel() for p in model.parameters()) == mm.SHAPES[name].params, name


def test_memory_model_breakdown_and_placement() -> None:
    from benchmarks import memory_model as mm

    zephyr, llama70 = mm.SHAPES["zephyr-7b-beta"], mm.SHAPES["llama-2-70b"]
    work = mm.Workload(layer=7, tokens=256, trainable="down_proj", optimizer="adamw_bf16")
    ours, official = mm.breakdown("ours", zephyr, work), mm.breakdown("official", zephyr, work)
    assert ours["total"] == sum(ours[c] for c in mm.COMPONENTS)
    mib = 2**20
    # three 14336 x 4096 bf16 down_proj: 336 MiB frozen, 672 MiB of bf16 AdamW state
    assert (ours["frozen"] / mib, ours["optimizer"] / mib) == (336.0, 672.0)
    # g_F + g_R (672), one tensor's beta g_R (112) and three float32 chunks of the dot products (48)
    assert ours["gradients"] / mib == 672 + 112 + 48
    from falcon_plugin.projection import DOT_CHUNK

    assert mm.DOT_CHUNK == DOT_CHUNK
    assert official["frozen"] == official["weights"] == zephyr.params * 2
    assert ours["total"] < official["total"] / 2
    assert mm.placement("ours", zephyr, work, 24) == "1 device"
    assert mm.placement("official", zephyr, work, 24).startswith("ZeRO-3 x ")
    assert mm.placement("official", zephyr, work, 48) == "1 device"
    assert mm.placement("ours", llama70, work, 80).startswith("ZeRO-3 x ")
    mlp = mm.Workload(layer=7, tokens=256, trainable="mlp", optimizer="adamw_bf16")
    assert mm.breakdown("ours", zephyr, mlp)["frozen"] == 3 * ours["frozen"]
    with pytest.raises(ValueError, match="trainable"):
        mm.Workload(trainable="attention")
    with pytest.raises(ValueError, match="layer 40"):
        mm.breakdown("ours", zephyr, mm.Workload(layer=40))
    with pytest.raises(ValueError, match="scheme"):
        mm.breakdown("ga", zephyr, work)


def test_random_model_builder_in_place_bf16() -> None:
    import torch

    from benchmarks.scale_model import build_random_model, model_bytes, zephyr_config

    config = zephyr_config(layers=2, hidden=128, intermediate=256)
    model = build_random_model(config, torch.bfloat16, "cpu", seed=0)
    params = dict(model.named_parameters())
    assert all(p.dtype == torch.bfloat16 and not p.is_meta for p in params.values())
    assert float(params["model.layers.0.mlp.down_proj.weight"].detach().float().std()) == pytest.approx(
        0.02, rel=0.1
    )
    assert torch.equal(params["model.norm.weight"], torch.ones(128, dtype=torch.bfloat16))
    n = sum(p.numel() for p in params.values())
    assert 2 * n <= model_bytes(model) < 2 * n + 2**20  # bf16 weights + the small rotary buffers
    again = build_random_model(config, torch.bfloat16, "cpu", seed=0)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), again.parameters(), strict=True))
    tied_config = zephyr_config(layers=1, hidden=128, intermediate=256)
    tied_config.tie_word_embeddings = True
    tied = build_random_model(tied_config)
    assert tied.lm_head.weight is tied.model.embed_tokens.weight
    with pytest.raises(ValueError, match="multiple of 32"):
        zephyr_config(hidden=100)


def test_scale_benchmark_tiny_writes_schema(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import scale

    out = tmp_path / "scale.json"
    returned = scale.main([*SCALE_TINY, "--out", str(out)])
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data == json.loads(json.dumps(returned)) and data["schema"] == scale.SCHEMA
    measured = data["measured"]
    assert measured["trainable"] == [f"model.layers.{i}.mlp.down_proj.weight" for i in (1, 2, 3)]
    assert measured["optimizer_state_dtypes"] == ["exp_avg:bfloat16", "exp_avg_sq:bfloat16"]
    assert measured["gradient_dtype"] == "bfloat16" and len(measured["times_s"]) == 1
    peaks, rss = measured["peak_mib"], measured["rss_mib"]
    assert (
        peaks["process"]
        == max(peaks["build"], peaks["setup"], peaks["steps"])
        >= rss["model"]
        > rss["imports"]
    )
    analysis = data["analysis"]
    weights = measured["model_bytes"] / 2**20
    assert analysis["ours"]["peak_over_weights"] == pytest.approx(peaks["process"] / weights, rel=1e-3)
    official = analysis["official_computed"]
    assert official["lower_bound_mib"] == pytest.approx(
        2 * analysis["measured_model_mib"] + rss["imports"], abs=0.2
    )
    assert official["flop_ratio_official_over_ours"] > 1
    targets = {t["name"]: t["status"] for t in analysis["targets"]}
    assert targets == {
        "peak_vs_weights": "FAIL",
        "peak_above_imports_vs_weights": "FAIL",
        "fits_budget": "PASS",
    }  # a 37 MB model: the interpreter and the step's fixed overheads dominate
    assert "| scheme |" in capsys.readouterr().out


def test_scale_targets_logic() -> None:
    import argparse

    from benchmarks import scale

    args = argparse.Namespace(
        layers=8,
        hidden=None,
        intermediate=None,
        layer=7,
        batch=2,
        seq_len=128,
        dtype="bfloat16",
        device="cpu",
        budget_gib=24.0,
    )
    weights = 4 * 2**30
    child = {
        "model_bytes": weights,
        "rss_mib": {"imports": 400.0, "model": 400.0 + 4096, "setup": 4900.0, "steps": 5000.0},
        "peak_mib": {"process": 1.14 * 4096},
        "times_s": [3.0, 1.0, 2.0],
    }
    passing = scale.analyse(child, args)
    assert passing["targets"][0]["status"] == "PASS" and passing["ours"]["median_step_s"] == 2.0
    assert passing["official_computed"]["lower_bound_mib"] == 400.0 + 2 * 4096
    child["peak_mib"] = {"process": 1.16 * 4096}
    failing = {t["name"]: t["status"] for t in scale.analyse(child, args)["targets"]}
    # 1.16 x the weights for the process, (1.16 x 4096 - 400) / 4096 = 1.062 x above the interpreter
    assert failing == {
        "peak_vs_weights": "FAIL",
        "peak_above_imports_vs_weights": "PASS",
        "fits_budget": "PASS",
    }
    with pytest.raises(SystemExit):
        scale.parse_args(["--layers", "4", "--layer", "4"])


def test_gpu_all_dry_run_and_cpu_fallback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import gpu_all

    plan = gpu_all.main(["--out", str(tmp_path / "plan"), "--device", "cuda", "--dry-run"])
    assert plan["dry_run"] and not plan["ok"] and [p["name"] for p in plan["parts"]] == list(gpu_all.PARTS)
    commands = [" ".join(p["command"]) for p in plan["parts"]]
    assert all("--device cuda" in c for c in commands)
    assert all("--dtype bfloat16" in c for c in commands[:3]) and "benchmarks/scale.py" in commands[3]
    assert "--skip-mi --skip-memory" in commands[0] and "--skip-step --skip-memory" in commands[1]
    assert len(capsys.readouterr().out.strip().splitlines()) == 4
    assert json.loads((tmp_path / "plan" / "gpu_all.json").read_text(encoding="utf-8"))["dry_run"]

    import torch

    if torch.cuda.is_available():
        pytest.skip("the CPU fallback runs only without CUDA")
    with pytest.raises(SystemExit):
        gpu_all.main(["--out", str(tmp_path / "x"), "--device", "cuda"])
    out = tmp_path / "run"
    summary = gpu_all.main(["--out", str(out), "--parts", "scale", "--time-limit", "120"])
    assert summary["fallback"] and summary["device"] == "cpu" and summary["ok"], summary
    assert summary["parts"][0]["returncode"] == 0 and (out / "scale-cpu.json").is_file()
    assert (out / "logs" / "scale.log").is_file()
    skipped = gpu_all.main(["--out", str(tmp_path / "short"), "--parts", "scale", "--time-limit", "1"])
    assert not skipped["ok"] and skipped["parts"][0]["returncode"] is None
