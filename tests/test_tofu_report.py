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
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/tofu_quality/report.py"), str(work), str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    rows = {r["run"]: r for r in csv.DictReader((out / "tofu_leaderboard.csv").open())}
    assert set(rows) == {"FALCON_lr3e-4", "FALCON_lr1e-3", "FALCON_lr3e-3", "NPO_lr1e-4", "NPO_lr3e-5"}
    selected = {r["run"] for r in rows.values() if r["selected"] == "True"}
    assert selected == {"FALCON_lr1e-3", "NPO_lr1e-4"}
    assert rows["FALCON_lr3e-3"]["keeps_utility"] == "False" and rows["FALCON_lr3e-3"]["pareto"] == "True"
    md = (out / "tofu_leaderboard.md").read_text()
    best = md.split("## Best run per method")[1].split("## All runs")[0]
    assert best.index("| FALCON |") < best.index("| NPO ! |")  # ordered by forget quality, NPO flagged
    assert (out / "tofu_pareto.png").stat().st_size > 10_000
