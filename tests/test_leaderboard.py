"""``falcon-unlearn leaderboard`` on fixture folders shaped like open-unlearning's real outputs.

``tests/fixtures/host_outputs/saves`` was laid out like ``scripts/tofu_unlearn.sh`` and
``scripts/muse_unlearn.sh`` leave it; each ``.hydra/config.yaml`` is the host's composed config (with
the ``eval.*.metrics`` subtrees trimmed to each metric's handler) and the summaries carry the host's
metric keys.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from falcon_plugin.tools.cli import main
from falcon_plugin.tools.leaderboard import build, collect, tables

FIXTURES = Path(__file__).parent / "fixtures" / "host_outputs"
SAVES = FIXTURES / "saves"
M1 = "Llama-3.2-1B-Instruct"
DEMO_RESULTS = {
    "rows": [
        {
            "method": "fine-tuned (reference)",
            "forget_prob": 0.9,
            "forget_rougeL": 1.0,
            "retain_prob": 0.9,
            "retain_rougeL": 0.95,
            "seconds": 50.0,
            "layer": None,
            "steps": None,
            "lr": None,
        },
        {
            "method": "FALCON",
            "forget_prob": 0.05,
            "forget_rougeL": 0.1,
            "retain_prob": 0.8,
            "retain_rougeL": 0.9,
            "seconds": 9.0,
            "layer": 3,
            "steps": 40,
            "lr": 0.01,
        },
        {
            "method": "GradDiff",
            "forget_prob": 0.01,
            "forget_rougeL": 0.0,
            "retain_prob": 0.4,
            "retain_rougeL": 0.5,
            "seconds": 7.0,
            "layer": None,
            "steps": 40,
            "lr": 0.0001,
        },
    ],
    "meta": {
        "size": "ci",
        "n_forget": 24,
        "n_retain": 72,
        "model": "tiny Llama (4 layers, hidden 64)",
        "unlearn_steps": 40,
    },
}


def _by_task(rows):
    return {r.task: r for r in rows}


def test_collect_tofu_layout() -> None:
    groups = tables(collect([SAVES]))
    assert list(groups) == ["TOFU", "MUSE", "WMDP"]
    tofu = groups["TOFU"]
    assert [r.method for r in tofu[:2]] == ["Finetuned (target)", "Retain (reference)"]
    rows = _by_task(tofu)
    falcon = rows[f"tofu_{M1}_forget10_FALCON"]
    assert falcon.method == "FALCON" and falcon.model == M1 and falcon.split == "forget10"
    assert falcon.metrics["forget_quality"] == 0.004 and falcon.metrics["model_utility"] == 0.58
    # the final evals/ wins over checkpoint-N/evals; without it, the highest checkpoint
    assert rows[f"tofu_{M1}_forget10_GradDiff"].metrics["model_utility"] == 0.49
    assert rows[f"tofu_{M1}_forget10_NPO_lr2e-5"].metrics["forget_quality"] == 0.09
    # unlearning rows sorted by forget_quality (higher is better)
    quality = [r.metrics["forget_quality"] for r in tofu if r.role == "unlearn"]
    assert quality == sorted(quality, reverse=True)
    pareto = {r.task for r in tofu if r.pareto}
    assert pareto == {f"tofu_{M1}_forget10_{m}" for m in ("NPO_lr2e-5", "NPO", "FALCON", "RMU")}
    assert not any(r.pareto for r in tofu if r.role != "unlearn")


def test_collect_muse_and_wmdp() -> None:
    groups = tables(collect([SAVES]))
    muse = groups["MUSE"]
    assert [r.method for r in muse[:2]] == ["Finetuned (target)", "Retain (reference)"]
    assert all(r.split == "News" and r.model == "Llama-2-7b-hf" for r in muse)
    assert _by_task(muse)["muse_Llama-2-7b-hf_News_NPO"].metrics["forget_knowmem_ROUGE"] == 0.56
    wmdp = _by_task(groups["WMDP"])
    falcon = wmdp["wmdp_zephyr-7b-beta_cyber_FALCON"]
    assert falcon.method == "FALCON" and falcon.split == "cyber"
    assert falcon.metrics["wmdp_cyber/acc"] == 0.2613  # checkpoint-80, the last one
    assert wmdp["wmdp_zephyr-7b-beta_cyber"].role == "reference"


def test_retain_reference_found_through_retain_logs_path() -> None:
    rows = collect([SAVES / "unlearn"])
    refs = [r for r in rows if r.benchmark == "TOFU" and r.role == "retain"]
    assert len(refs) == 1 and refs[0].task == f"tofu_{M1}_retain90"


def test_eval_json_fallback(tmp_path: Path) -> None:
    run = tmp_path / "saves" / "unlearn" / "tofu_x_FALCON"
    shutil.copytree(SAVES / "unlearn" / f"tofu_{M1}_forget10_FALCON", run)
    (run / "evals" / "TOFU_SUMMARY.json").unlink()
    (row,) = [r for r in collect([tmp_path]) if r.benchmark == "TOFU" and r.role == "unlearn"]
    assert row.metrics["forget_quality"] == 0.004 and row.metrics["mia_min_k"] == 0.5


def test_build_writes_all_formats(tmp_path: Path) -> None:
    demo = tmp_path / "demo_out"
    demo.mkdir()
    (demo / "results.json").write_text(json.dumps(DEMO_RESULTS))
    out = tmp_path / "board"
    groups, text = build([SAVES, demo], out)
    assert list(groups) == ["TOFU", "MUSE", "WMDP", "demo"]
    for name in (
        "leaderboard.md",
        "leaderboard.html",
        "leaderboard.json",
        "tofu.csv",
        "muse.csv",
        "wmdp.csv",
        "demo.csv",
        "tofu_pareto.png",
        "demo_pareto.png",
    ):
        assert (out / name).is_file(), name
    html = (out / "leaderboard.html").read_text()
    assert html.count("data:image/png;base64,") == 4 and "<table>" in html and 'src="http' not in html
    header = (out / "tofu.csv").read_text().splitlines()[0].split(",")
    assert header[:6] == ["method", "model", "split", "task", "forget_quality", "model_utility"]
    assert "wmdp_cyber/acc_stderr" in (out / "wmdp.csv").read_text()  # full precision/columns in CSV
    assert "| FALCON |" in text and "## demo" in text
    demo_rows = groups["demo"]
    assert demo_rows[0].role == "target" and [r.method for r in demo_rows[1:]] == ["GradDiff", "FALCON"]
    assert {r.method for r in demo_rows if r.pareto} == {"GradDiff", "FALCON"}
    saved = json.loads((out / "leaderboard.json").read_text())
    assert saved["TOFU"][0]["method"] == "Finetuned (target)"


def test_cli_leaderboard(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["leaderboard", str(SAVES), "--out", str(tmp_path / "b"), "-q"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# Unlearning leaderboard") and "| FALCON |" in out


def test_cli_leaderboard_bad_dirs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["leaderboard", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "results directory not found" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "empty").mkdir()
    assert main(["leaderboard", str(tmp_path / "empty"), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "no open-unlearning summaries or demo results found" in err and len(err.strip().splitlines()) == 1


def test_real_host_run_if_present(tmp_path: Path) -> None:
    """The real open-unlearning run another engineer produces (skipped when it is not there)."""
    saves = Path("/work/scratch/open-unlearning/saves")
    if not any(saves.glob("**/*_SUMMARY.json")):
        pytest.skip("no real open-unlearning run at /work/scratch/open-unlearning/saves")
    groups, text = build([saves], tmp_path / "real")
    assert groups and all(rows for rows in groups.values())
