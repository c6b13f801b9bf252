"""``falcon-unlearn layer-sweep`` and ``mi`` on a tiny saved Llama: end to end, resume, clean errors."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path
from typing import Any

import pytest

from falcon_plugin.tools.cli import main
from falcon_plugin.tools.demo.model import TinyModelSpec, build_tiny_llama
from falcon_plugin.tools.demo.tokenizer import build_word_tokenizer

SPEC = TinyModelSpec(num_layers=2, hidden_size=32, intermediate_size=64, num_heads=4, max_positions=64)
WORDS = [f"w{i}" for i in range(30)]
FAST = ["--steps", "2", "--batch-size", "4", "--samples", "8", "--eval-samples", "6", "--max-length", "32"]


def _facts(prefix: str, count: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    return [
        {"question": f"Where does {prefix}{i} live?", "answer": " ".join(rng.choice(WORDS) for _ in range(3))}
        for i in range(count)
    ]


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("layer_sweep")
    forget, retain = _facts("anna", 10, 0), _facts("bert", 10, 1)
    tok = build_word_tokenizer(
        [f"{r['question']} {r['answer']}" for r in forget + retain], extra_words=["Question", "Answer"]
    )
    model = root / "model"
    build_tiny_llama(tok, SPEC, seed=0).save_pretrained(model)
    tok.save_pretrained(model)
    return {
        "model": model,
        "forget": _jsonl(root / "forget.jsonl", forget),
        "retain": _jsonl(root / "retain.jsonl", retain),
    }


def _argv(world: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        "layer-sweep",
        "--model",
        str(world["model"]),
        "--forget",
        str(world["forget"]),
        "--retain",
        str(world["retain"]),
        *FAST,
        "--out",
        str(out),
        "-q",
        *extra,
    ]


def _count_unlearn_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    from falcon_plugin.tools.demo import methods

    layers: list[int] = []
    real = methods.unlearn

    def counting(method: str, spec: Any, *args: Any, **kwargs: Any) -> Any:
        layers.append(spec.method_args["layer"])
        return real(method, spec, *args, **kwargs)

    monkeypatch.setattr(methods, "unlearn", counting)
    return layers


def test_sweep_runs_every_layer_writes_its_files_and_marks_the_picks(
    world: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    layers = _count_unlearn_calls(monkeypatch)
    out = tmp_path / "sweep"
    assert main(_argv(world, out, "--every", "1")) == 0
    assert sorted(layers) == [0, 1]  # each layer once (the picks are among them)
    state = json.loads((out / "layer_sweep.json").read_text())
    assert [e["layer"] for e in state["layers"]] == [0, 1]
    for entry in [*state["layers"], state["base"]]:
        for side in ("forget", "retain"):
            assert 0.0 <= entry[side]["prob"] <= 1.0 and 0.0 <= entry[side]["rougeL_recall"] <= 1.0
    # FALCON changed the model: a layer's forget probability is not the model's before unlearning
    assert all(e["forget"]["prob"] != state["base"]["forget"]["prob"] for e in state["layers"])
    criteria = state["criteria"]
    report = json.loads((out / "mi_report.json").read_text())
    evidence = any(s > 0 for s in report["criteria"]["separability"]["scores"])
    # no layer separates forget from retain on this random tiny model: l* falls back to the paper's pick
    assert criteria["default"] == "separability" and criteria["used"] == (
        "separability" if evidence else "paper"
    )
    assert set(criteria["picks"]) == {"separability", "paper"} and set(criteria["picks"].values()) <= {0, 1}
    assert {n: d["chosen_layer"] for n, d in report["criteria"].items()} == criteria["picks"]
    with (out / "layer_sweep.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["layer"] for r in rows] == ["before", "0", "1"]
    for name, layer in criteria["picks"].items():
        assert name in rows[1 + layer]["picked by"]
    assert sorted(int(r["rank"]) for r in rows[1:]) == [1, 2]
    assert (out / "layer_sweep.png").stat().st_size > 1000 and (out / "mi_report.png").is_file()
    printed = capsys.readouterr().out
    assert "| before |" in printed and "separability (default) pick: layer" in printed
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporary file behind


def test_sweep_resumes_skipping_layers_already_done(
    world: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "sweep"
    layers = _count_unlearn_calls(monkeypatch)
    assert main(_argv(world, out, "--layers", "1")) == 0
    first = sorted(set(layers))
    assert 1 in first
    before = json.loads((out / "layer_sweep.json").read_text())

    import falcon_plugin.report

    def no_mi(*_: Any, **__: Any) -> None:
        raise AssertionError("Step 1 ran again on resume")

    monkeypatch.setattr(falcon_plugin.report, "run_mi_selection", no_mi)
    layers.clear()
    assert main(_argv(world, out, "--every", "1")) == 0
    assert sorted(layers) == sorted({0, 1} - set(first))  # only the missing layers ran
    after = json.loads((out / "layer_sweep.json").read_text())
    assert [e["layer"] for e in after["layers"]] == [0, 1]
    assert after["base"] == before["base"] and after["criteria"] == before["criteria"]
    done = {e["layer"]: e for e in before["layers"]}
    assert all(after["layers"][layer] == done[layer] for layer in done)  # kept as they were
    layers.clear()
    assert main(_argv(world, out, "--every", "1")) == 0
    assert layers == []


def _one_line_error(capsys: pytest.CaptureFixture[str], needle: str) -> None:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("falcon-unlearn") and "error" in lines[0] and needle in lines[0], lines[0]
    assert captured.out == ""


def test_bad_input_is_one_line_before_the_model_loads(
    world: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from falcon_plugin.tools.common import hf

    def not_loaded(*_: Any, **__: Any) -> None:
        raise AssertionError("the model was loaded before the bad input was reported")

    monkeypatch.setattr(hf, "load_causal_lm", not_loaded)
    out = tmp_path / "o"
    few = _jsonl(tmp_path / "few.jsonl", _facts("carl", 3, 2))
    cases = [
        (_argv(world, out, "--layers", "1,x"), "'x' is not a layer index"),
        (_argv(world, out, "--layers", "0,5"), "layer 5 does not exist; the model has 2 decoder layers"),
        (_argv(world, out, "--every", "0"), "--every must be >= 1, got 0"),
        (_argv(world, out, "--layers", "0", "--every", "2"), "not allowed with argument"),
        (_argv(world, out, "--lr", "0"), "--lr must be a finite number > 0, got 0.0"),
        (_argv(world, out, "--steps", "0"), "--steps must be >= 1, got 0"),
        (_argv(world, out, "--template", "fancy"), "unknown --template 'fancy'"),
        (_argv(world, out, "--criterion", "best"), "unknown --criterion 'best'"),
        (_argv(world, out, "--min-layer", "2"), "--min-layer 2: the model has 2 decoder layers"),
        (_argv(world, out, "--probe-folds", "12"), "--samples must be >= 12, got 8"),
        (
            [*_argv(world, out), "--forget", str(few)],
            f"--forget {few} has 3 samples; MI layer selection (Step 1) needs >= 8",
        ),
        ([*_argv(world, out), "--retain", str(tmp_path / "none.jsonl")], "data file not found"),
        ([*_argv(world, out), "--model", str(tmp_path)], "must be a Hugging Face model folder"),
    ]
    for argv, needle in cases:
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse usage errors
            code = exc.code
        assert code == 2, (argv, needle)
        _one_line_error(capsys, needle)
    assert not out.exists()


def test_another_budget_in_the_same_out_is_refused_before_the_model_loads(
    world: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "sweep"
    assert main(_argv(world, out, "--layers", "0")) == 0
    capsys.readouterr()
    from falcon_plugin.tools.common import hf

    monkeypatch.setattr(hf, "load_causal_lm", lambda *_: pytest.fail("model loaded"))
    assert main([*_argv(world, out, "--layers", "0"), "--steps", "3"]) == 2
    _one_line_error(capsys, "settings.steps differ")
    (out / "layer_sweep.json").write_text("{not json")
    assert main(_argv(world, out, "--layers", "0")) == 2
    _one_line_error(capsys, "cannot read")


# ---------------------------------------------------------------------------------------------- mi
def test_mi_prints_both_criteria_and_recommends_the_chosen_one(
    world: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["mi", "--model", str(world["model"]), "--forget", str(world["forget"]), "--retain"]
    base += [str(world["retain"]), "--samples", "8", "-q"]
    picks = {}
    for criterion in ("separability", "paper"):
        out = tmp_path / criterion
        assert main([*base, "--out", str(out), "--criterion", criterion]) == 0
        printed = capsys.readouterr().out
        report = json.loads((out / "mi_report.json").read_text())
        evidence = any(s > 0 for s in report["criteria"]["separability"]["scores"])
        used = criterion if criterion == "paper" or evidence else "paper"  # the no-evidence fallback
        assert report["criterion"] == used and report["config"]["criterion"] == criterion
        picks[criterion] = {n: d["chosen_layer"] for n, d in report["criteria"].items()}
        header = printed.splitlines()[0]
        assert "separability (argmax)" in header and "paper (argmin)" in header and "picked by" in header
        assert f"recommended layer: {report['chosen_layer']} (criterion {used};" in printed
        assert report["chosen_layer"] == picks[criterion][used]
        assert "separability (default" in printed and f"{criterion} (" in printed
        assert "<- l*" in printed
    assert picks["separability"] == picks["paper"]


def test_default_budget_is_falcons_shipped_budget() -> None:
    """The command's --steps / --lr / --batch-size defaults are the budget FALCON.yaml ships."""
    import yaml

    from falcon_plugin.tools.cli import layer_sweep

    shipped = Path(__file__).resolve().parents[1] / "falcon_plugin" / "configs" / "trainer" / "FALCON.yaml"
    budget = yaml.safe_load(shipped.read_text())["budget"]
    batch = int(budget["per_device_train_batch_size"]) * int(budget["gradient_accumulation_steps"])
    assert (
        int(budget["max_steps"]),
        float(budget["learning_rate"]),
        batch,
    ) == (layer_sweep.DEFAULT_STEPS, layer_sweep.DEFAULT_LR, layer_sweep.DEFAULT_BATCH)
