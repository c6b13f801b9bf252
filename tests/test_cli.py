"""``falcon-unlearn`` argument handling: help, and bad input -> one line on stderr + exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from falcon_plugin.tools.cli import build_parser, main


def _one_line_error(capsys: pytest.CaptureFixture[str], needle: str) -> None:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("falcon-unlearn") and "error" in lines[0] and needle in lines[0], lines[0]
    assert "Traceback" not in captured.err and captured.out == ""


def test_help_lists_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in ("demo", "mi", "leaderboard", "sweep", "attack"):
        assert command in out
    for command in ("demo", "mi", "leaderboard", "sweep", "attack"):
        help_text = build_parser()._subparsers._group_actions[0].choices[command].format_help()  # type: ignore[union-attr]
        assert "example" in help_text


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["demo", "--size", "huge"], "unknown --size 'huge'"),
        (["demo", "--methods", "FALCON,Magic"], "unknown method 'Magic'"),
        (["demo", "--steps", "0"], "--steps must be >= 1, got 0"),
        (["demo", "--model", "/nonexistent/model"], "--model not found: /nonexistent/model"),
        (["demo", "--data", "/nonexistent/qa.jsonl"], "--data not found: /nonexistent/qa.jsonl"),
        (["demo", "--finetune", "maybe"], "unknown --finetune 'maybe'"),
        (["demo", "--seed", "x"], "argument --seed: invalid int value: 'x'"),
        (["demo", "--max-length", "-10"], "--max-length must be >= 8, got -10"),
        (["demo", "--max-length", "0"], "--max-length must be >= 8, got 0"),
        (["demo", "--seed", "-1"], "--seed must be in [0, 4294967295], got -1"),
        (["demo", "--seed", str(2**32)], f"--seed must be in [0, 4294967295], got {2**32}"),
        (["demo", "--threads", "0"], "--threads must be >= 1, got 0"),
        (["attack", "--model", "m", "--data", "d.json", "--out", "o"], "model folder not found: m"),
        (
            ["mi", "--forget", "f.jsonl", "--retain", "r.jsonl"],
            "the following arguments are required: --model",
        ),
        (["sweep", "--host", "h", "--benchmark", "tofu", "--bogus"], "unrecognized arguments: --bogus"),
        (["leaderboard"], "the following arguments are required: DIR"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["demo", "--", "trainer.args.x=1"], "arguments after '--' are only for sweep"),
    ],
)
def test_bad_arguments(argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    assert code == 2
    _one_line_error(capsys, needle)


def _write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_data_file_without_question_answer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _write(tmp_path / "qa.jsonl", [{"prompt": "Where?", "completion": "Here", "split": "forget"}])
    assert main(["demo", "--data", str(data), "--out", str(tmp_path / "o")]) == 2
    _one_line_error(capsys, f"{data}:1: missing or empty string field 'question'")


def test_data_file_without_split(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _write(tmp_path / "qa.jsonl", [{"question": "Where?", "answer": "Here"}])
    assert main(["demo", "--data", str(data), "--out", str(tmp_path / "o")]) == 2
    _one_line_error(capsys, "field 'split' must be 'forget' or 'retain', got None")


def test_data_file_not_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "qa.jsonl"
    data.write_text('{"question": "a", "answer": "b", "split": "forget"}\nnot json\n')
    assert main(["demo", "--data", str(data), "--out", str(tmp_path / "o")]) == 2
    _one_line_error(capsys, f"{data}:2: not valid JSON")


def test_model_folder_without_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "model").mkdir()
    assert main(["demo", "--model", str(tmp_path / "model"), "--out", str(tmp_path / "o")]) == 2
    _one_line_error(capsys, "must be a Hugging Face model folder with a config.json")


def test_mi_bad_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    forget = _write(tmp_path / "f.jsonl", [{"question": "q", "answer": "a"}] * 10)
    assert (
        main(
            [
                "mi",
                "--model",
                str(tmp_path / "m"),
                "--forget",
                str(tmp_path / "nope.jsonl"),
                "--retain",
                str(forget),
            ]
        )
        == 2
    )
    _one_line_error(capsys, "data file not found")
    assert (
        main(
            [
                "mi",
                "--model",
                str(tmp_path / "m"),
                "--forget",
                str(forget),
                "--retain",
                str(forget),
                "--samples",
                "2",
            ]
        )
        == 2
    )
    _one_line_error(capsys, "--samples must be >= 8, got 2")
    assert (
        main(
            [
                "mi",
                "--model",
                str(tmp_path / "m"),
                "--forget",
                str(forget),
                "--retain",
                str(forget),
                "--pooling",
                "max",
            ]
        )
        == 2
    )
    _one_line_error(capsys, "mi.pooling='max'")
    bad = _write(tmp_path / "b.jsonl", [{"title": "x"}] * 10)
    assert main(["mi", "--model", str(tmp_path / "m"), "--forget", str(bad), "--retain", str(forget)]) == 2
    _one_line_error(capsys, "cannot load --model")  # the model is checked before the data is read


def test_console_script_module_entry(tmp_path: Path) -> None:
    """``python -m falcon_plugin.tools.cli`` behaves as the installed ``falcon-unlearn`` script."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run(
        [sys.executable, "-m", "falcon_plugin.tools.cli", "leaderboard", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert (
        proc.stderr.strip().splitlines()[-1]
        == f"falcon-unlearn: error: results directory not found: {tmp_path / 'none'}"
    )


def test_missing_tools_extra_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without the ``tools`` extra (here: PyYAML hidden), a command names the extra to install."""
    run = tmp_path / "saves" / "unlearn" / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("trainer:\n  handler: FALCON\n")
    (run / "TOFU_SUMMARY.json").write_text(json.dumps({"forget_quality": 0.5, "model_utility": 0.5}))
    monkeypatch.setitem(sys.modules, "yaml", None)
    assert main(["leaderboard", str(tmp_path / "saves"), "--out", str(tmp_path / "board")]) == 1
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [
        "falcon-unlearn: error: leaderboard needs the tools extra (no module 'yaml'): "
        "pip install 'falcon-unlearning[tools]'"
    ]


@pytest.fixture
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if a command gets as far as building, loading or training a model."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("work started before the bad option was reported")

    for target in (
        "falcon_plugin.tools.demo.runner.run_demo",
        "falcon_plugin.tools.common.hf.load_causal_lm",
        "falcon_plugin.tools.attacks.runner.run_attacks",
        "falcon_plugin.tools.attacks.data.load_attack_data",
        "falcon_plugin.tools.leaderboard.build",
    ):
        monkeypatch.setattr(target, refuse)


def test_demo_bad_seed_fails_before_fine_tuning(
    tmp_path: Path, no_work: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "--seed", "-1", "--out", str(tmp_path / "o")]) == 2
    _one_line_error(capsys, "--seed must be in [0, 4294967295], got -1")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("command", ["demo", "mi", "attack", "leaderboard"])
@pytest.mark.parametrize("where", ["file", "below a file"])
def test_out_is_a_file(
    command: str, where: str, tmp_path: Path, no_work: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--out`` that cannot be a folder: one line naming it, exit 2, before any work."""
    data = _write(tmp_path / "qa.jsonl", [{"question": "q", "answer": "a"}] * 10)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    blocker = tmp_path / "taken"
    blocker.write_text("not a folder")
    out = blocker if where == "file" else blocker / "sub"
    argv = {
        "demo": ["demo"],
        "mi": ["mi", "--model", str(tmp_path / "model"), "--forget", str(data), "--retain", str(data)],
        "attack": ["attack", "--model", str(tmp_path / "model"), "--data", str(data)],
        "leaderboard": ["leaderboard", str(tmp_path)],
    }[command]
    assert main([*argv, "--out", str(out)]) == 2
    expected = f"--out {out} is not a folder" + ("" if where == "file" else f" ({blocker} is a file)")
    _one_line_error(capsys, expected)
    assert blocker.read_text() == "not a folder"


@pytest.mark.parametrize("flag", ["--max-length", "--batch-size"])
def test_mi_bad_lengths_before_loading(
    flag: str, tmp_path: Path, no_work: None, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _write(tmp_path / "qa.jsonl", [{"question": "q", "answer": "a"}] * 10)
    argv = ["mi", "--model", str(tmp_path), "--forget", str(data), "--retain", str(data), flag, "0"]
    assert main([*argv, "--out", str(tmp_path / "o")]) == 2
    _one_line_error(capsys, f"{flag} must be >= {8 if flag == '--max-length' else 1}, got 0")


def test_attack_bad_seed_before_loading(
    tmp_path: Path, no_work: None, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _write(tmp_path / "qa.jsonl", [{"question": "q", "answer": "a"}] * 10)
    argv = ["attack", "--model", str(tmp_path), "--data", str(data), "--out", str(tmp_path / "o")]
    assert main([*argv, "--seed", "-1"]) == 2
    _one_line_error(capsys, "--seed must be in [0, 4294967295], got -1")
