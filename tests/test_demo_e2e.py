"""``falcon-unlearn demo --size ci`` end to end, then ``mi`` and ``leaderboard`` on its outputs.

Direction check (the bound the README states): after unlearning, FALCON's forget-set answer
probability is at most half the fine-tuned reference's, while its retain-set answer probability stays
within 0.35 of the reference's.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from falcon_plugin.tools.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("demo") / "out"
    capture = tmp_path_factory.mktemp("stdout") / "table.md"
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main(["demo", "--size", "ci", "--out", str(out), "-q"])
    assert code == 0
    capture.write_text(buffer.getvalue())
    return out, buffer.getvalue()


def _rows(out: Path) -> dict[str, dict]:
    return {row["method"]: row for row in json.loads((out / "results.json").read_text())["rows"]}


def test_demo_outputs(demo_run: tuple[Path, str]) -> None:
    out, stdout = demo_run
    for name in (
        "results.md",
        "results.csv",
        "results.json",
        "mi_report.json",
        "mi_report.png",
        "forget_vs_retain.png",
        "facts.jsonl",
        "finetuned/config.json",
        "finetuned/tokenizer.json",
    ):
        assert (out / name).is_file(), name
    assert stdout == (out / "results.md").read_text()
    assert list(_rows(out)) == ["fine-tuned (reference)", "FALCON", "FALCON-MI", "GradDiff", "RMU"]
    header = (out / "results.csv").read_text().splitlines()[0]
    assert header == "method,forget_prob,forget_rougeL,retain_prob,retain_rougeL,seconds,layer,steps,lr"
    assert not list(out.parent.glob("**/.*.tmp"))  # atomic writes left no temporary file


def test_demo_direction(demo_run: tuple[Path, str]) -> None:
    rows = _rows(demo_run[0])
    ref, falcon = rows["fine-tuned (reference)"], rows["FALCON"]
    assert ref["forget_prob"] > 0.8 and ref["retain_prob"] > 0.8  # the fine-tuned model knows the facts
    assert falcon["forget_prob"] <= 0.5 * ref["forget_prob"]
    assert falcon["forget_rougeL"] <= 0.5 * ref["forget_rougeL"]
    assert falcon["retain_prob"] >= ref["retain_prob"] - 0.35
    mi = json.loads((demo_run[0] / "mi_report.json").read_text())
    assert rows["FALCON-MI"]["layer"] == mi["chosen_layer"]
    for method in ("FALCON", "FALCON-MI", "GradDiff", "RMU"):
        assert rows[method]["steps"] == 40 and rows[method]["seconds"] > 0


def test_mi_command_on_demo_model(
    demo_run: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = demo_run[0]
    records = [json.loads(line) for line in (out / "facts.jsonl").read_text().splitlines()]
    for split in ("forget", "retain"):
        (tmp_path / f"{split}.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in records if r["split"] == split)
        )
    code = main(
        [
            "mi",
            "--model",
            str(out / "finetuned"),
            "--forget",
            str(tmp_path / "forget.jsonl"),
            "--retain",
            str(tmp_path / "retain.jsonl"),
            "--samples",
            "16",
            "--out",
            str(tmp_path / "mi"),
            "-q",
        ]
    )
    assert code == 0
    report = json.loads((tmp_path / "mi" / "mi_report.json").read_text())
    assert report["layers"] == [0, 1, 2, 3] and report["samples"] == {"forget": [16], "retain": 16}
    assert (tmp_path / "mi" / "mi_report.png").is_file()
    assert f"recommended layer: {report['chosen_layer']}" in capsys.readouterr().out


def test_leaderboard_on_demo(
    demo_run: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["leaderboard", str(demo_run[0]), "--out", str(tmp_path / "b"), "-q"]) == 0
    assert "## demo" in capsys.readouterr().out
    assert (tmp_path / "b" / "demo_pareto.png").is_file()


def test_demo_with_user_model_and_data(demo_run: tuple[Path, str], tmp_path: Path) -> None:
    out = demo_run[0]
    code = main(
        [
            "demo",
            "--model",
            str(out / "finetuned"),
            "--data",
            str(out / "facts.jsonl"),
            "--methods",
            "GradDiff",
            "--steps",
            "2",
            "--out",
            str(tmp_path / "mine"),
            "-q",
        ]
    )
    assert code == 0
    rows = _rows(tmp_path / "mine")
    assert list(rows) == ["fine-tuned (reference)", "GradDiff"]
    assert rows["fine-tuned (reference)"]["seconds"] is None  # user model + user data: no fine-tuning
    assert rows["fine-tuned (reference)"]["forget_prob"] == pytest.approx(
        _rows(out)["fine-tuned (reference)"]["forget_prob"], abs=1e-4
    )
    assert not (tmp_path / "mine" / "finetuned").exists()


def test_rerun_reuses_finetuned_and_drops_stale_outputs(
    demo_run: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rerun into the same folder (as after Ctrl-C) reuses the complete finetuned/ of the same
    settings instead of fine-tuning again, and no earlier run's MI report survives it."""
    import shutil

    out = tmp_path / "out"
    shutil.copytree(demo_run[0], out)
    assert (out / "mi_report.json").is_file() and (out / "finetuned" / "demo_finetune.json").is_file()

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("fine-tuned again although finetuned/ matches")

    monkeypatch.setattr("falcon_plugin.tools.demo.runner.finetune", refuse)
    assert main(["demo", "--size", "ci", "--out", str(out), "--methods", "FALCON", "-q"]) == 0
    rows, before = _rows(out), _rows(demo_run[0])
    assert list(rows) == ["fine-tuned (reference)", "FALCON"]
    for method in rows:
        for key in ("forget_prob", "forget_rougeL", "retain_prob", "retain_rougeL"):
            assert rows[method][key] == pytest.approx(before[method][key], abs=1e-6), (method, key)
    assert rows["fine-tuned (reference)"]["seconds"] == before["fine-tuned (reference)"]["seconds"]
    meta = json.loads((out / "results.json").read_text())["meta"]
    assert meta["finetune_reused"] is True and meta["torch_threads"] == 1
    assert not (out / "mi_report.json").exists() and not (out / "mi_report.png").exists()
