"""benchmarks/tofu_quality/report.py: the TOFU protocol's selection rule and outputs, on a synthetic cache."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _summary(path: Path, fq: float, mu: float, prob: float = 0.5) -> None:
    path.mkdir(parents=True, exist_ok=True)
    keys = {"forget_quality": fq, "model_utility": mu, "forget_truth_ratio": 0.6, "forget_Q_A_Prob": prob}
    (path / "TOFU_SUMMARY.json").write_text(json.dumps({**keys, "forget_Q_A_ROUGE": 0.4}))


def _run(work: Path, name: str, fq: float, mu: float) -> None:
    _summary(work / "unlearn" / name, fq, mu)
    (work / "unlearn" / name / "DONE").touch()
    (work / "unlearn" / name / "seconds").write_text("12")


def _report(work: Path, out: Path) -> str:
    """Run report.py on a cache as the protocol's report stage does; it must succeed. Returns its stderr."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/tofu_quality/report.py"), str(work), str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


def test_selection_keeps_utility_then_maximises_forget_quality(tmp_path: Path) -> None:
    work, out = tmp_path / "work", tmp_path / "out"
    _summary(work / "evals" / "target", 1e-5, 0.60, prob=0.97)
    _summary(work / "evals" / "retain", 1.0, 0.59)
    _run(work, "FALCON_lr3e-4", 0.40, 0.59)  # keeps utility (0.983 x)
    _run(work, "FALCON_lr1e-3", 0.90, 0.58)  # keeps utility (0.967 x), better forget quality: selected
    _run(work, "FALCON_lr3e-3", 0.99, 0.40)  # forgets best but breaks the model: not selected
    _run(work, "NPO_lr1e-4", 0.20, 0.30)  # no NPO run keeps utility: its best shown, flagged
    _run(work, "NPO_lr3e-5", 0.10, 0.50)
    (work / "unlearn" / "RMU_lr1e-4.tmp").mkdir(parents=True)  # unfinished, no eval: left out
    _report(work, out)
    rows = {r["run"]: r for r in csv.DictReader((out / "tofu_leaderboard.csv").open())}
    assert set(rows) == {"FALCON_lr3e-4", "FALCON_lr1e-3", "FALCON_lr3e-3", "NPO_lr1e-4", "NPO_lr3e-5"}
    selected = {r["run"] for r in rows.values() if r["selected"] == "True"}
    assert selected == {"FALCON_lr1e-3", "NPO_lr1e-4"}
    assert rows["FALCON_lr3e-3"]["keeps_utility"] == "False" and rows["FALCON_lr3e-3"]["pareto"] == "True"
    md = (out / "tofu_leaderboard.md").read_text()
    best = md.split("## Best run per method")[1].split("## All runs")[0]
    assert best.index("| FALCON |") < best.index("| NPO ! |")  # ordered by forget quality, NPO flagged
    assert (out / "tofu_pareto.png").stat().st_size > 10_000


def _eval(path: Path, ratios: list[float]) -> None:
    by_index = {str(i): {"score": r} for i, r in enumerate(ratios)}
    (path / "TOFU_EVAL.json").write_text(json.dumps({"forget_truth_ratio": {"value_by_index": by_index}}))


def test_truth_ratio_section_places_each_run_against_the_retain_model(tmp_path: Path) -> None:
    """Quantiles, share above 1 and the KS statistic behind forget_quality, from the per-question ratios."""
    from scipy.stats import ks_2samp

    work, out = tmp_path / "work", tmp_path / "out"
    _summary(work / "evals" / "target", 1e-5, 0.60)
    _summary(work / "evals" / "retain", 1.0, 0.59)
    retain = [0.5 + 0.02 * i for i in range(40)]  # 0.50 .. 1.28
    over = [1.5 + 0.01 * i for i in range(40)]  # every true answer below the wrong ones
    _eval(work / "evals" / "retain", retain)
    _run(work, "FALCON_lr1e-3", 0.01, 0.58)
    _eval(work / "unlearn" / "FALCON_lr1e-3", over)
    _run(work, "NPO_lr3e-5", 0.2, 0.58)  # no TOFU_EVAL.json: no row in the section, still on the board
    _report(work, out)
    runs = {r["run"]: r for r in json.loads((out / "tofu_leaderboard.json").read_text())["runs"]}
    falcon = runs["FALCON_lr1e-3"]
    assert falcon["ks_D"] == ks_2samp(over, retain).statistic == 1.0
    assert falcon["tr_above_1"] == 1.0 and abs(falcon["tr_median"] - 1.695) < 1e-9
    assert "ks_D" not in runs["NPO_lr3e-5"]
    md = (out / "tofu_leaderboard.md").read_text()
    section = md.split("## Forget truth ratios against the retain model")[1]
    assert "| retain | 0.578 | 0.890 | 1.202 | 0.350 | 0.000 |" in section  # 0.50 .. 1.28: 14 above 1
    assert "| FALCON_lr1e-3 | 1.539 |" in section and "NPO_lr3e-5" not in section


def test_protocol_script_parses_and_names_its_stages() -> None:
    """benchmarks/tofu_quality.sh is bash that parses, with a function for every stage its docs name."""
    script = REPO / "benchmarks" / "tofu_quality.sh"
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    text = script.read_text()
    stages = [
        "data",
        "export",
        "finetune",
        "eval_refs",
        "unlearn",
        "unlearn_defaults",
        "relearn",
        "relearn_refs",
        "archive",
        "restore",
        "report",
    ]
    assert all(f"stage_{s}() {{" in text for s in stages)


def _attack(work: Path, name: str, before: float, after: float) -> None:
    from falcon_plugin.tools.attacks.result import SCHEMA

    entry = {"before": {"forget_prob": before}, "after": {"forget_prob": after}}
    path = work / "attacks" / name
    path.mkdir(parents=True)
    (path / "attacks.json").write_text(json.dumps({"schema": SCHEMA, "attacks": {"relearn": entry}}))


def test_relearning_results_and_the_retain_models_control(tmp_path: Path) -> None:
    """A run's relearn columns come from attacks/<run>; attacks/reference-retain is the control."""
    work, out = tmp_path / "work", tmp_path / "out"
    _summary(work / "evals" / "target", 1e-5, 0.60)
    _summary(work / "evals" / "retain", 1.0, 0.59)
    _run(work, "FALCON_lr3e-4", 0.4, 0.58)
    _attack(work, "FALCON_lr3e-4", 0.001, 0.7)
    _attack(work, "reference-retain", 0.15, 0.45)
    _report(work, out)
    board = json.loads((out / "tofu_leaderboard.json").read_text())
    run = board["runs"][0]
    assert (run["relearn_prob_before"], run["relearn_prob_after"]) == (0.001, 0.7)
    assert board["relearn_control"] == {"relearn/forget_prob_before": 0.15, "relearn/forget_prob_after": 0.45}
    assert "answer prob 0.150 -> 0.450" in (out / "tofu_leaderboard.md").read_text()
    assert [r["run"] for r in board["runs"]] == ["FALCON_lr3e-4"]  # the control is not a run


def test_seed_runs_are_summarised_but_do_not_change_the_selection(tmp_path: Path) -> None:
    """Runs named <run>_seed<N> get their seed; selection and the front stay on seed 0; a seeds section
    lists forget_quality per seed with its median and range."""
    work, out = tmp_path / "work", tmp_path / "out"
    _summary(work / "evals" / "target", 1e-5, 0.60)
    _summary(work / "evals" / "retain", 1.0, 0.59)
    _run(work, "FALCON_lr3e-4", 0.40, 0.58)
    _run(work, "FALCON_lr3e-4_seed1", 0.95, 0.58)  # a lucky seed must not become the selected run
    _run(work, "FALCON_lr3e-4_seed2", 0.10, 0.50)
    _attack(work, "FALCON_lr3e-4_seed2", 0.001, 0.6)  # attacked at seed 2 only: labelled with its seed
    _run(work, "FALCON_lr1e-4", 0.20, 0.59)
    _run(work, "NPO_lr1e-4_seed1", 0.9, 0.59)  # no seed-0 NPO run: listed, never selected
    _run(work, "FALCON_3e-4", 0.99, 0.59)  # finished, but not a run name: skipped with a message
    assert "FALCON_3e-4: not named <METHOD>_lr<LR>[_seed<N>]" in _report(work, out)
    board = json.loads((out / "tofu_leaderboard.json").read_text())
    runs = {r["run"]: r for r in board["runs"]}
    assert set(runs) == {
        "FALCON_lr3e-4",
        "FALCON_lr3e-4_seed1",
        "FALCON_lr3e-4_seed2",
        "FALCON_lr1e-4",
        "NPO_lr1e-4_seed1",
    }
    assert (runs["FALCON_lr3e-4_seed2"]["seed"], runs["FALCON_lr3e-4_seed2"]["lr"]) == (2, 3e-4)
    assert [r for r, v in runs.items() if v["selected"]] == ["FALCON_lr3e-4"]
    assert not runs["FALCON_lr3e-4_seed1"]["pareto"]
    (group,) = board["seeds"]
    assert group["seeds"] == "0 1 2" and group["forget_quality per seed"] == "0.400 / 0.950 / 0.100"
    assert (group["fq_median"], group["fq_min"], group["fq_max"]) == (0.40, 0.10, 0.95)
    assert group["keeps_utility"] == "2/3" and group["relearn_prob_after (seed: value)"] == "2: 0.600"
    md = (out / "tofu_leaderboard.md").read_text()
    best = md.split("## Best run per method")[1].split("## All runs")[0]
    assert "| FALCON | 3.00e-04 | 0 | 0.400 |" in best and "NPO" not in best
    seeds = md.split("## Seeds")[1]
    assert "| FALCON | 3.00e-04 | 0 1 2 | 0.400 / 0.950 / 0.100 | 0.400 | 0.100 | 0.950 |" in seeds


def test_protocol_script_rejects_a_bad_seed_before_any_work(tmp_path: Path) -> None:
    script = REPO / "benchmarks" / "tofu_quality.sh"
    env = {"PATH": "/usr/bin:/bin", "HOST": str(tmp_path), "WORK": str(tmp_path / "work"), "SEED": "1e3"}
    proc = subprocess.run(["bash", str(script), "data"], capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 2 and "SEED must be a non-negative integer, got '1e3'" in proc.stderr
    assert not (tmp_path / "work" / "logs").exists()  # stopped before the stages set anything up


def test_retain_models_at_other_seeds_are_references_and_the_ceiling(tmp_path: Path) -> None:
    """evals/retain_seed<N> (the script's retain_seed stage) are reference rows, never runs; the board states
    their forget_quality as what a perfect unlearner scores, and places their truth ratios like a run's."""
    work, out = tmp_path / "work", tmp_path / "out"
    _summary(work / "evals" / "target", 1e-5, 0.60)
    _summary(work / "evals" / "retain", 1.0, 0.59)
    _eval(work / "evals" / "retain", [0.5 + 0.02 * i for i in range(40)])
    for seed, fq in ((10, 0.62), (2, 0.97)):  # numeric order: seed 2 before seed 10
        _summary(work / "evals" / f"retain_seed{seed}", fq, 0.58)
        _eval(work / "evals" / f"retain_seed{seed}", [0.52 + 0.02 * i for i in range(40)])
    (work / "evals" / "retain_seedx").mkdir()  # not a seed: ignored
    _run(work, "FALCON_lr3e-4", 0.40, 0.58)
    _eval(work / "unlearn" / "FALCON_lr3e-4", [0.6 + 0.02 * i for i in range(40)])
    _report(work, out)
    board = json.loads((out / "tofu_leaderboard.json").read_text())
    assert list(board["references"]) == ["target", "retain", "retain_seed2", "retain_seed10"]
    assert [r["run"] for r in board["runs"]] == ["FALCON_lr3e-4"]
    md = (out / "tofu_leaderboard.md").read_text()
    refs = md.split("## Reference models")[1].split("## Best run per method")[0]
    assert "| retain_seed2 | 0.970 |" in refs
    assert "score forget_quality 0.970 (retain_seed2), 0.620 (retain_seed10) against the reference" in refs
    ratios = md.split("## Forget truth ratios against the retain model")[1]
    assert "| retain_seed2 | 0.598 |" in ratios  # its own quantiles (0.52 + 0.02 * 3.9)


def test_protocol_script_refuses_a_retain_seed_at_seed_zero(tmp_path: Path) -> None:
    """retain_seed at SEED=0 would retrain the reference retain model itself: refused before any work."""
    script = REPO / "benchmarks" / "tofu_quality.sh"
    env = {"PATH": "/usr/bin:/bin", "HOST": str(tmp_path), "WORK": str(tmp_path / "work")}
    proc = subprocess.run(["bash", str(script), "retain_seed"], capture_output=True, text=True, env=env)
    assert proc.returncode != 0 and "retain_seed: needs SEED=N > 0, got SEED=0" in proc.stderr
    assert not (tmp_path / "work" / "models" / "retain_seed0").exists()


def test_falcon_training_diagnostics_come_from_the_host_runs_log(tmp_path: Path) -> None:
    """The falcon/* entries the trainer logs each step (in the host run's log, between tqdm bars) become
    the run's mean gradient cosine and projection share and its first / last losses; a run without them
    (a baseline) gets none."""
    work, out = tmp_path / "work", tmp_path / "out"
    _summary(work / "evals" / "target", 1e-5, 0.60)
    _summary(work / "evals" / "retain", 1.0, 0.59)
    _run(work, "FALCON_lr3e-4", 0.40, 0.58)
    _run(work, "NPO_lr1e-4", 0.30, 0.58)
    steps = [(1.6, 0.0, 0.1, 0.5), (1.2, 0.02, -0.5, 1.0), (0.5, 0.03, -0.2, 0.75)]
    lines = [
        f" 2%|▏ | {i}/3 [00:01<00:03] {{'loss': {fl + rl}, 'falcon/forget_loss': {fl}, "
        f"'falcon/retain_loss': {rl}, 'falcon/grad_cosine': {c}, 'falcon/projection_rate': {p}}}"
        for i, (fl, rl, c, p) in enumerate(steps, 1)
    ]
    (work / "logs").mkdir()
    (work / "logs" / "ul_FALCON_lr3e-4.log").write_text(
        "\n".join(["loading", *lines, "{'train_runtime': 9}"])
    )
    (work / "logs" / "ul_NPO_lr1e-4.log").write_text("{'loss': 0.7, 'epoch': 1.0}\n")
    _report(work, out)
    runs = {r["run"]: r for r in json.loads((out / "tofu_leaderboard.json").read_text())["runs"]}
    falcon = runs["FALCON_lr3e-4"]
    assert falcon["steps"] == 3 and abs(falcon["grad_cosine_mean"] - (-0.2)) < 1e-12
    assert abs(falcon["projection_rate_mean"] - 0.75) < 1e-12
    assert (falcon["forget_loss_first"], falcon["forget_loss_last"], falcon["retain_loss_last"]) == (
        1.6,
        0.5,
        0.03,
    )
    assert "grad_cosine_mean" not in runs["NPO_lr1e-4"]
    section = (out / "tofu_leaderboard.md").read_text().split("## FALCON's training diagnostics")[1]
    assert "| FALCON_lr3e-4 | 3 | -0.200 | 0.750 | 1.600 | 0.500 | 0.030 |" in section
    assert "NPO_lr1e-4" not in section.split("## ")[0]


def test_report_stage_takes_step1_from_the_shipped_run(tmp_path: Path) -> None:
    """The report stage copies FALCON's Step-1 report from the run named after FALCON.yaml's TOFU lr (what
    unlearn_defaults runs today), not from an older shipped setting's run that sorts before it."""
    import yaml
    from conftest import PACKAGED_TRAINERS

    falcon = yaml.safe_load((PACKAGED_TRAINERS / "FALCON.yaml").read_text())
    shipped = f"FALCON-defaults_lr{falcon['tofu_budget']['learning_rate']}"
    work, out = tmp_path / "work", tmp_path / "out"
    _summary(work / "evals" / "target", 1e-5, 0.60)
    _summary(work / "evals" / "retain", 1.0, 0.59)
    for name, layer in (("FALCON-defaults_lr1e-9", 3), (shipped, 29)):  # sorts first
        _run(work, name, 0.4, 0.58)
        (work / "unlearn" / name / "mi_report.json").write_text(json.dumps({"chosen_layer": layer}))
    env = {"PATH": "/usr/bin:/bin", "HOST": str(tmp_path), "WORK": str(work), "OUTDOCS": str(out)}
    script = REPO / "benchmarks" / "tofu_quality.sh"
    proc = subprocess.run(
        ["bash", str(script), "report"], capture_output=True, text=True, env={**env, "PY": sys.executable}
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "tofu_falcon_mi_report.json").read_text()) == {"chosen_layer": 29}
    assert f"Step-1 report from {shipped}" in proc.stdout + proc.stderr


def test_archive_keeps_what_the_report_reads_and_restore_rebuilds_it_on_a_fresh_cache(tmp_path: Path) -> None:
    """The archive stage keeps a run's results without its model (per-question values only for the forget
    truth ratio, the training log's step lines only); the restore stage puts them into an empty cache, from
    which the report is the same as from the original; restore never overwrites a file the cache has."""
    work, out = tmp_path / "work", tmp_path / "out"
    _summary(work / "evals" / "target", 1e-5, 0.60)
    _summary(work / "evals" / "retain", 1.0, 0.59)
    _eval(work / "evals" / "retain", [0.5 + 0.02 * i for i in range(40)])
    _run(work, "FALCON_lr3e-4", 0.40, 0.58)
    run = work / "unlearn" / "FALCON_lr3e-4"
    ratios = {str(i): {"score": 0.6 + 0.01 * i} for i in range(40)}
    rouge = {str(i): {"rougeL_recall": 0.5, "generation": "x" * 500} for i in range(40)}
    (run / "TOFU_EVAL.json").write_text(
        json.dumps(
            {
                "forget_truth_ratio": {"agg_value": 0.7, "value_by_index": ratios},
                "forget_Q_A_ROUGE": {"agg_value": 0.5, "value_by_index": rouge},
            }
        )
    )
    (run / "model.safetensors").write_bytes(b"\0" * 100_000)  # what the archive leaves out
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_text("trainer:\n  handler: FALCON\n")
    (work / "logs").mkdir()
    step = "{'loss': 1.7, 'falcon/forget_loss': 1.6, 'falcon/retain_loss': 0.1, 'falcon/grad_cosine': -0.4}"
    (work / "logs" / "ul_FALCON_lr3e-4.log").write_text(f"loading weights\r 2%|| 1/3 {step}\nbar\n")
    (work / "unlearn" / "NPO_lr1e-4.tmp").mkdir()  # unfinished: not archived
    _attack(work, "FALCON_lr3e-4", 0.001, 0.7)
    _report(work, out)

    archive, script = tmp_path / "archive", REPO / "benchmarks" / "tofu_quality.sh"
    env = {"PATH": "/usr/bin:/bin", "HOST": str(tmp_path), "PY": sys.executable, "ARCHIVE": str(archive)}

    def stage(name: str, cache: Path, **extra: str) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            ["bash", str(script), name],
            capture_output=True,
            text=True,
            env={**env, "WORK": str(cache), **extra},
        )
        assert proc.returncode == (1 if name == "archive" and extra else 0), proc.stderr
        return proc

    stage("archive", work)
    kept = json.loads((archive / "unlearn" / "FALCON_lr3e-4" / "TOFU_EVAL.json").read_text())
    assert kept["forget_truth_ratio"]["value_by_index"] == ratios
    assert kept["forget_Q_A_ROUGE"] == {"agg_value": 0.5}
    assert (archive / "logs" / "ul_FALCON_lr3e-4.log").read_text() == f"2%|| 1/3 {step}\n"
    assert not (archive / "unlearn" / "FALCON_lr3e-4" / "model.safetensors").exists()
    assert not any("NPO" in str(p) for p in archive.rglob("*"))
    assert sum(p.stat().st_size for p in archive.rglob("*") if p.is_file()) < 20_000

    fresh, out2 = tmp_path / "fresh", tmp_path / "out2"
    (fresh / "evals" / "target").mkdir(parents=True)
    (fresh / "evals" / "target" / "TOFU_SUMMARY.json").write_text(
        '{"model_utility": 0.6}'
    )  # this cache's own
    stage("restore", fresh)
    assert json.loads((fresh / "evals" / "target" / "TOFU_SUMMARY.json").read_text()) == {
        "model_utility": 0.6
    }
    (fresh / "evals" / "target" / "TOFU_SUMMARY.json").write_bytes(
        (work / "evals" / "target" / "TOFU_SUMMARY.json").read_bytes()
    )
    _report(fresh, out2)
    assert (out2 / "tofu_leaderboard.csv").read_text() == (out / "tofu_leaderboard.csv").read_text()
    # another protocol (SCALE=smoke: other sizes and recipes) neither restores nor archives this one's results
    micro = tmp_path / "micro"
    assert "another protocol" in stage("restore", micro, SCALE="smoke").stdout
    assert not (micro / "unlearn").exists()
    assert "another protocol" in stage("archive", micro, SCALE="smoke").stderr
    assert (out2 / "tofu_leaderboard.json").read_text() == (out / "tofu_leaderboard.json").read_text()


def test_forget_only_screens_are_listed_with_their_seeds_but_never_selected(tmp_path: Path) -> None:
    """EVAL_SCOPE=forget runs (tagged -fq) have forget metrics and no model_utility: the board lists them and
    summarises their seeds, the host's selection never picks one (it cannot say the run kept utility)."""
    work, out = tmp_path / "work", tmp_path / "out"
    _summary(work / "evals" / "target", 1e-5, 0.60)
    _summary(work / "evals" / "retain", 1.0, 0.59)
    _run(work, "FALCON_lr3e-4", 0.40, 0.58)
    for name, fq in (("FALCON-fq_lr1e-3", 0.99), ("FALCON-fq_lr1e-3_seed1", 0.9)):
        path = work / "unlearn" / name
        path.mkdir(parents=True)
        (path / "TOFU_SUMMARY.json").write_text(json.dumps({"forget_quality": fq, "forget_Q_A_Prob": 0.1}))
        (path / "DONE").touch()
    _report(work, out)
    board = json.loads((out / "tofu_leaderboard.json").read_text())
    runs = {r["run"]: r for r in board["runs"]}
    assert runs["FALCON-fq_lr1e-3"]["forget_quality"] == 0.99 and runs["FALCON-fq_lr1e-3"]["mu_ratio"] is None
    assert [r for r, v in runs.items() if v["selected"]] == ["FALCON_lr3e-4"]
    (group,) = board["seeds"]
    assert group["method"] == "FALCON-fq" and group["forget_quality per seed"] == "0.990 / 0.900"
    assert group["keeps_utility"] == "0/2"


def test_protocol_script_rejects_a_bad_eval_scope_before_any_work(tmp_path: Path) -> None:
    script = REPO / "benchmarks" / "tofu_quality.sh"
    env = {"PATH": "/usr/bin:/bin", "HOST": str(tmp_path), "WORK": str(tmp_path / "work")}
    env["EVAL_SCOPE"] = "quick"
    proc = subprocess.run(["bash", str(script), "data"], capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 2 and "EVAL_SCOPE must be full or forget, got 'quick'" in proc.stderr
    assert not (tmp_path / "work" / "logs").exists()


def test_truth_ratio_gap_measures_how_far_runs_move_the_answers(tmp_path: Path) -> None:
    """truth_ratio_gap.py: per group, the mean over run pairs of mean_q |log TR_a - log TR_b|."""
    import math

    work = tmp_path / "work"
    base = [0.5 + 0.01 * i for i in range(40)]
    for name, factor in (("a", 1.0), ("b", 1.1), ("c", 2.0)):
        (work / "unlearn" / name).mkdir(parents=True)
        _eval(work / "unlearn" / name, [r * factor for r in base])
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks/tofu_quality/truth_ratio_gap.py"),
            str(work),
            "near=a,b",
            "far=a,b,c",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    rows = {line.split(" | ")[0].strip("| "): line for line in proc.stdout.splitlines()[2:]}
    near = float(rows["near"].rstrip(" |").rsplit("|", 1)[1])
    far = float(rows["far"].rstrip(" |").rsplit("|", 1)[1])
    assert near == round(math.log(1.1), 3)
    assert far == round((math.log(1.1) + math.log(2.0) + math.log(2.0 / 1.1)) / 3, 3)
    bad = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/tofu_quality/truth_ratio_gap.py"), str(work), "one=a"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2 and "two or more distinct runs" in bad.stderr


def test_unseen_reference_scores_runs_without_the_retain_model(tmp_path: Path) -> None:
    """unseen_reference.py: the host's KS p-value of each run against the target's unseen-author truth ratios,
    beside the host's forget_quality, and which run each score picks among runs that differ in pov_seed."""
    from scipy.stats import ks_2samp

    work = tmp_path / "work"

    def evaluation(folder: Path, ratios: list[float], quality: float | None) -> None:
        folder.mkdir(parents=True)
        by_index = {str(i): {"score": r} for i, r in enumerate(ratios)}
        body = {"forget_truth_ratio": {"value_by_index": by_index}}
        if quality is not None:
            body["forget_quality"] = {"agg_value": quality}
        (folder / "TOFU_EVAL.json").write_text(json.dumps(body))

    unseen = [0.5 + 0.02 * i for i in range(40)]
    evaluation(work / "evals" / "target_unseen01", unseen, 0.8)
    near = [r * 1.02 for r in unseen]
    far = [r * 1.6 for r in unseen]
    evaluation(work / "unlearn" / "FALCON-pov1_lr1e-3", near, 0.3)  # the host disagrees with the reference
    evaluation(work / "unlearn" / "FALCON-pov2_lr1e-3", far, 0.9)
    evaluation(work / "unlearn" / "NPO_lr1e-5", far, 0.1)
    script = str(REPO / "benchmarks/tofu_quality/unseen_reference.py")
    proc = subprocess.run([sys.executable, script, str(work)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    rows = {
        line.split(" | ")[0].strip("| "): line.rstrip(" |").split(" | ") for line in proc.stdout.splitlines()
    }
    assert rows["FALCON-pov1_lr1e-3"][1:] == ["0.3", f"{ks_2samp(near, unseen).pvalue:.3g}"]
    assert rows["FALCON-pov2_lr1e-3"][1:] == ["0.9", f"{ks_2samp(far, unseen).pvalue:.3g}"]
    assert "target_unseen01" not in rows  # the reference is not scored against itself
    assert "Spearman rank correlation over 3 runs" in proc.stdout
    pick = rows["FALCON_lr1e-3 (2)"]
    assert pick[1:] == ["FALCON-pov2_lr1e-3 (0.9)", "FALCON-pov1_lr1e-3 (0.3)"]
    missing = subprocess.run(
        [sys.executable, script, str(tmp_path / "nothing")], capture_output=True, text=True, check=False
    )
    assert missing.returncode == 1 and "run tofu_quality.sh eval_unseen" in missing.stderr


def test_build_data_adds_unseen_authors_that_no_training_set_holds(tmp_path: Path) -> None:
    """build_data.py on a synthetic TOFU layout: unseen01 is forget10's first two authors, which are in
    neither the target's nor the retain model's training set, with forget01's size and TOFU's fields."""
    src, out = tmp_path / "src", tmp_path / "locuslab" / "TOFU"
    src.mkdir()

    def qa(author: int, k: int, perturbed: bool) -> dict:
        row = {"question": f"q{author}.{k}", "answer": f"a{author}.{k}"}
        if perturbed:
            row.update(paraphrased_answer="p", perturbed_answer=["x"] * 5, paraphrased_question="pq")
        return row

    def write(name: str, authors: range, perturbed: bool) -> None:
        rows = [qa(a, k, perturbed) for a in authors for k in range(20)]
        (src / f"{name}.json").write_text("".join(json.dumps(r) + "\n" for r in rows))

    write("forget05", range(190, 200), False)
    write("forget05_perturbed", range(190, 200), True)
    write("forget01", range(198, 200), False)
    write("forget01_perturbed", range(198, 200), True)
    write("forget10_perturbed", range(180, 200), True)
    write("holdout01", range(300, 302), False)
    rows = [{"question": f"r{i}", "answer": "a", "perturbed_answer": ["b"]} for i in range(50)]
    for name in ("real_authors_perturbed", "world_facts_perturbed"):
        (src / f"{name}.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    script = str(REPO / "benchmarks/tofu_quality/build_data.py")
    proc = subprocess.run(
        [sys.executable, script, str(src), str(out)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr

    def read(name: str) -> list[dict]:
        return [json.loads(line) for line in (out / f"{name}.json").read_text().splitlines()]

    unseen, perturbed = read("unseen01"), read("unseen01_perturbed")
    assert [r["question"] for r in unseen] == [f"q{a}.{k}" for a in (180, 181) for k in range(20)]
    assert [r["question"] for r in perturbed] == [r["question"] for r in unseen]
    assert {"paraphrased_answer", "perturbed_answer"} <= set(perturbed[0])
    trained = {r["question"] for r in read("target") + read("retain")}
    assert not trained & {r["question"] for r in unseen}
    assert len(unseen) == len(read("forget01"))
    readme = (out / "README.md").read_text()
    assert "config_name: unseen01\n" in readme and "config_name: unseen01_perturbed\n" in readme
