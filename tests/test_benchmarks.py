"""Smoke test of benchmarks/step.py at a tiny size: it runs and writes the documented JSON (no timings)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TINY = [
    "--model",
    "random",
    "--layers",
    "4",
    "--hidden",
    "64",
    "--seq-len",
    "32",
    "--batch",
    "2",
    "--warmup",
    "0",
    "--repeats",
    "1",
    "--mi-samples",
    "16",
    "--threads",
    "1",
    "--log-level",
    "WARNING",
]


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
