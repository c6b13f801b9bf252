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


# ------------------------------------------------------------------------------ recovery-attack columns
FALCON_TASK = f"tofu_{M1}_forget10_FALCON"


def test_attack_columns_show(tmp_path: Path) -> None:
    """saves/attacks/<task>/attacks.json (written elsewhere: its recorded model path is another
    machine's) lands as before/after columns on the run of the same name, in Markdown, CSV and HTML."""
    out = tmp_path / "board"
    groups, text = build([SAVES], out)
    rows = _by_task(groups["TOFU"])
    falcon, rmu = rows[FALCON_TASK], rows[f"tofu_{M1}_forget10_RMU"]
    assert falcon.attacks["relearn/forget_prob_before"] == 0.06
    assert falcon.attacks["relearn/forget_prob_after"] == 0.09
    assert (
        rmu.attacks["relearn/forget_prob_after"] == 0.52
        and "quantize-4bit/forget_prob_after" not in rmu.attacks
    )
    assert not rows[f"tofu_{M1}_forget10_NPO"].attacks
    header = text.split("## TOFU", 1)[1].splitlines()[2]
    shown = [c.strip() for c in header.strip("|").split("|")]
    assert shown[-8:] == [
        "relearn/forget_prob_before",
        "relearn/forget_prob_after",
        "relearn/forget_rougeL_recall_before",
        "relearn/forget_rougeL_recall_after",
        "quantize-4bit/forget_prob_before",
        "quantize-4bit/forget_prob_after",
        "quantize-4bit/forget_rougeL_recall_before",
        "quantize-4bit/forget_rougeL_recall_after",
    ]
    falcon_line = next(line for line in text.splitlines() if f"| {FALCON_TASK} |" in line)

    def cells(line: str) -> list[str]:
        return [c.strip() for c in line.strip().strip("|").split("|")]

    assert cells(falcon_line)[-8:] == ["0.060", "0.090", "0.120", "0.150", "0.060", "0.070", "0.120", "0.130"]
    rmu_line = next(line for line in text.splitlines() if f"| tofu_{M1}_forget10_RMU |" in line)
    assert cells(rmu_line)[-8:] == ["0.210", "0.520", "0.300", "0.470", "", "", "", ""]  # no quantize on RMU
    csv_header = (out / "tofu.csv").read_text().splitlines()[0].split(",")
    assert "relearn/forget_prob_after" in csv_header and "relearn/forget_train_prob_after" in csv_header
    assert "relearn/forget_train_prob_after" not in shown  # Markdown: the held-out part only
    html = (out / "leaderboard.html").read_text()
    assert "<th>relearn/forget_prob_after</th>" in html and "<td>0.520</td>" in html
    saved = {r["task"]: r for r in json.loads((out / "leaderboard.json").read_text())["TOFU"]}
    assert saved[FALCON_TASK]["attacks"]["quantize-4bit/forget_prob_after"] == 0.07


def test_attacks_matched_by_the_model_folder_they_record(tmp_path: Path) -> None:
    run = tmp_path / "saves" / "unlearn" / "my_falcon_run"
    shutil.copytree(SAVES / "unlearn" / FALCON_TASK, run)
    result = json.loads((SAVES / "attacks" / FALCON_TASK / "attacks.json").read_text())
    result["model"] = str(run)
    elsewhere = tmp_path / "elsewhere" / "x"
    elsewhere.mkdir(parents=True)
    (elsewhere / "attacks.json").write_text(json.dumps(result))
    (row,) = [r for r in collect([tmp_path]) if r.benchmark == "TOFU"]
    assert row.attacks["relearn/forget_prob_after"] == 0.09
    assert row.attacks_source == str((elsewhere / "attacks.json").resolve())


def test_unmatched_attack_result_is_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    shutil.copytree(SAVES / "unlearn" / FALCON_TASK, tmp_path / "saves" / "unlearn" / FALCON_TASK)
    result = json.loads((SAVES / "attacks" / FALCON_TASK / "attacks.json").read_text())
    result["model"] = "/nowhere/some_other_model"
    (tmp_path / "attacks.json").write_text(json.dumps(result))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "attacks.json").write_text('{"schema": "something else"}')
    with caplog.at_level("WARNING"):
        (row,) = [r for r in collect([tmp_path]) if r.benchmark == "TOFU"]
    assert not row.attacks
    assert "matches no run" in caplog.text and "/nowhere/some_other_model" in caplog.text
    assert "not a falcon-unlearn attack result" in caplog.text


# ------------------------------------------------------------------------------------------ the plot
def _synthetic(n: int) -> list:
    """``n`` unlearning runs (5 methods x learning rates) with the target and the retain model."""
    import random

    from falcon_plugin.tools.leaderboard.read import Row

    rng = random.Random(n)
    rows = [
        Row(
            "TOFU",
            "Finetuned (target)",
            "target",
            M1,
            "forget10",
            "full",
            "",
            {"model_utility": 0.6, "forget_quality": 1e-21},
        ),
        Row("TOFU", "Retain (reference)", "retain", M1, "forget10", "retain90", "", {"model_utility": 0.59}),
    ]
    methods, lrs = ["FALCON", "RMU", "NPO", "SimNPO", "GradDiff"], [1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4]
    for k in range(n):
        method, lr = methods[k % 5] if n > 5 else "NPO", lrs[k // 5] if n > 5 else lrs[k]
        metrics = {
            "model_utility": round(rng.uniform(0.35, 0.6), 3),
            "forget_quality": 10 ** rng.uniform(-25, 0),
        }
        rows.append(
            Row("TOFU", method, "unlearn", M1, "forget10", f"{method}_lr{lr}", "", metrics, learning_rate=lr)
        )
    rows[2].metrics["forget_quality"] = 0.5  # a p-value near 1: the axis must still stop at 1
    return tables(rows)["TOFU"]


@pytest.mark.parametrize("n", [5, 30])
def test_plot_is_readable(n: int, tmp_path: Path) -> None:
    """Labels distinct, inside the axes, overlapping neither each other nor the title; the p-value axis
    stops at 1; the target is drawn as a star and the retain model (no forget_quality) as a line."""
    from falcon_plugin.tools.common.benchmarks import BENCHMARKS
    from falcon_plugin.tools.leaderboard import scatter_figure

    fig = scatter_figure(_synthetic(n), BENCHMARKS["TOFU"])
    fig.savefig(tmp_path / f"pareto_{n}.png")
    ax = fig.axes[0]
    renderer = fig.canvas.get_renderer()
    from matplotlib.text import Text

    boxes = [Text.get_window_extent(t, renderer) for t in ax.texts]  # the text alone, not its leader line
    assert len(boxes) == n + 1  # every run and the target
    for i, a in enumerate(boxes):
        assert a.x0 >= ax.bbox.x0 and a.x1 <= ax.bbox.x1 and a.y0 >= ax.bbox.y0 and a.y1 <= ax.bbox.y1
        assert not a.overlaps(ax.title.get_window_extent(renderer))
        for b in boxes[i + 1 :]:
            assert not a.overlaps(b), (ax.texts[i].get_text(), a, b)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    texts = [t.get_text() for t in ax.texts]
    numbered = all(t.isdigit() for t in texts)  # too dense for names: numbers keyed in the legend
    named = [e.split("  ", 1)[1] for e in legend if "  " in e] if numbered else texts
    assert len(set(named)) == len(named) == n + 1
    if n == 5:
        assert "NPO (lr 2e-5)" in named and "NPO (lr 1e-5)" in named
    assert ax.get_yscale() == "log" and ax.get_ylim()[1] <= 1.0
    stars = [c for c in ax.collections if list(map(tuple, c.get_offsets())) == [(0.6, 1e-21)]]
    assert len(stars) == 1
    assert "reference model" in legend
    assert any("Retain (reference)" in e and "no forget_quality" in e for e in legend)


def test_fixture_plot_labels_runs_apart(tmp_path: Path) -> None:
    from falcon_plugin.tools.common.benchmarks import BENCHMARKS
    from falcon_plugin.tools.leaderboard import scatter_figure

    fig = scatter_figure(tables(collect([SAVES]))["TOFU"], BENCHMARKS["TOFU"])
    labels = [t.get_text() for t in fig.axes[0].texts]
    assert {"NPO (lr 1e-5)", "NPO (lr 2e-5)", "FALCON", "Finetuned (target)"} <= set(labels)
    assert "stars" not in fig.axes[0].get_title()  # the legend explains the markers


def test_no_forget_quality_is_said(tmp_path: Path) -> None:
    run = tmp_path / "saves" / "unlearn" / FALCON_TASK
    shutil.copytree(SAVES / "unlearn" / FALCON_TASK, run)
    for name in ("TOFU_SUMMARY.json", "TOFU_EVAL.json"):
        data = json.loads((run / "evals" / name).read_text())
        data.pop("forget_quality")
        (run / "evals" / name).write_text(json.dumps(data))
    _, text = build([tmp_path], tmp_path / "board")
    assert "Note: no TOFU plot: no run has both model_utility and forget_quality" in text
    assert "--eval-retain" in text and "setup_data.py --eval_logs" in text
    assert "no TOFU plot" in (tmp_path / "board" / "leaderboard.html").read_text()
    assert not (tmp_path / "board" / "tofu_pareto.png").exists()


def test_a_local_model_folder_names_the_model(tmp_path: Path) -> None:
    """Runs on a local model (the host's model config overridden by path) show that folder's name."""
    run = tmp_path / "saves" / "unlearn" / FALCON_TASK
    shutil.copytree(SAVES / "unlearn" / FALCON_TASK, run)
    config = run / ".hydra" / "config.yaml"
    text = config.read_text().replace(
        "pretrained_model_name_or_path: open-unlearning/tofu_Llama-3.2-1B-Instruct_full",
        "pretrained_model_name_or_path: /models/smollm2-tofu-target",
        1,
    )
    config.write_text(text)
    (row,) = [r for r in collect([tmp_path]) if r.benchmark == "TOFU" and r.role == "unlearn"]
    assert row.model == "smollm2-tofu-target"


def test_a_task_name_in_two_run_folders_is_told_apart(tmp_path: Path) -> None:
    """One host ``task_name`` run twice into two folders (a rerun under a changed config): the table
    gains a ``run`` column naming each folder, and the plot labels the two points by it."""
    from falcon_plugin.tools.common.benchmarks import BENCHMARKS
    from falcon_plugin.tools.leaderboard import scatter_figure

    for folder, quality in (("first", 0.5), ("second", 0.9)):
        run = tmp_path / folder / "saves" / "unlearn" / FALCON_TASK
        shutil.copytree(SAVES / "unlearn" / FALCON_TASK, run)
        summary = run / "evals" / "TOFU_SUMMARY.json"
        summary.write_text(json.dumps({**json.loads(summary.read_text()), "forget_quality": quality}))
    groups, text = build([tmp_path], tmp_path / "board")
    header = (tmp_path / "board" / "tofu.csv").read_text().splitlines()[0].split(",")
    assert header[:6] == ["method", "model", "split", "task", "run", "forget_quality"]
    lines = [line for line in text.splitlines() if line.startswith("| FALCON |")]
    assert len(lines) == 2 and all(f"| {FALCON_TASK} |" in line for line in lines)
    runs = {f"{folder}/saves/unlearn/{FALCON_TASK}" for folder in ("first", "second")}
    assert {line.split(" | ")[4] for line in lines} == runs
    by_quality = {r.metrics["forget_quality"]: r for r in groups["TOFU"]}
    assert by_quality[0.5].run_dir.startswith(str((tmp_path / "first").resolve()))
    fig = scatter_figure(groups["TOFU"], BENCHMARKS["TOFU"])
    labels = {t.get_text() for t in fig.axes[0].texts}
    assert {f"FALCON ({run})" for run in runs} <= labels


def test_run_names_are_the_shortest_distinct_suffixes() -> None:
    from falcon_plugin.tools.leaderboard.read import Row
    from falcon_plugin.tools.leaderboard.table import run_names

    def row(run_dir: str, source: str = "") -> Row:
        source = source or f"{run_dir}/evals/TOFU_SUMMARY.json"
        return Row("TOFU", "FALCON", "unlearn", "m", "forget01", "t", source, run_dir=run_dir)

    assert run_names([row("/a/x/run1"), row("/a/x/run2")]) == ["run1", "run2"]
    assert run_names([row("/a/x/run"), row("/b/x/run"), row("/a/x/run")]) == ["a/x/run", "b/x/run", "a/x/run"]
    assert run_names([row("", "/r/demo_a/results.json"), row("", "/r/demo_b/results.json")]) == [
        "demo_a",
        "demo_b",
    ]
