"""Step 1 in the product: ``mi.criterion`` picks l*, the report holds both criteria, ``mi`` prints both.

Synthetic activations (planted layers, as in tests/test_separability.py) stand in for the capture where
the test is about the choice; tiny Llamas run the real capture where it is about the wiring.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import CharTokenizer, qa_items, tiny_llama
from transformers import TrainingArguments

from falcon_plugin import report as report_module
from falcon_plugin.config import FalconConfig, MIConfig, min_mi_samples
from falcon_plugin.data import ForgetRetainCollator, ForgetRetainDataset
from falcon_plugin.errors import FalconConfigError, SeparabilityInputError
from falcon_plugin.mi import score_layers
from falcon_plugin.report import REPORT_JSON, REPORT_PNG, MIReport, run_mi_selection
from falcon_plugin.separability import recommend_layer, score_layers_separability
from falcon_plugin.trainer import FALCON


# ---------------------------------------------------------------------------------------------- config
def test_default_criterion_is_separability_and_paper_is_selectable() -> None:
    assert MIConfig().criterion == "separability" == FalconConfig().mi.criterion
    assert FalconConfig.from_method_args(mi={"criterion": "paper"}).mi.criterion == "paper"
    with pytest.raises(FalconConfigError, match=r"mi.criterion='argmin'.*separability, paper"):
        MIConfig(criterion="argmin")
    with pytest.raises(FalconConfigError, match=r"mi.probe_folds=1"):
        MIConfig(probe_folds=1)
    with pytest.raises(FalconConfigError, match=r"mi.min_layer=-1"):
        MIConfig(min_layer=-1)


def test_sample_minimum_knows_the_criterion() -> None:
    assert min_mi_samples("paper", 20) == 8 and min_mi_samples("separability", 5) == 8
    assert min_mi_samples("separability", 20) == 20
    MIConfig(criterion="paper", probe_folds=20, samples=8)  # the probe's folds do not bind the paper
    with pytest.raises(FalconConfigError, match=r"mi.samples=10.*>= 20 \(mi.probe_folds=20"):
        MIConfig(probe_folds=20, samples=10)


# ---------------------------------------------------------------------------------------------- planted
def _planted(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(4, 200, 64) forget and retain: layer 0 two-dimensional, layers 1-3 forty-dimensional; forget and
    retain differ only at layer 2
    (tests/test_separability.py::test_paper_criterion_misses_the_planted_layer)."""
    dims = [2, 40, 40, 40]
    rng = np.random.default_rng(seed)
    maps = [np.linalg.qr(rng.standard_normal((64, d)))[0].T for d in dims]
    forget = np.stack([rng.standard_normal((200, d)) @ m for d, m in zip(dims, maps, strict=True)])
    retain = np.stack([rng.standard_normal((200, d)) @ m for d, m in zip(dims, maps, strict=True)])
    forget[2, :, :] += 1.5 * maps[2][0]
    return forget.astype(np.float32), retain.astype(np.float32)


def _fake_capture(monkeypatch: pytest.MonkeyPatch, acts: dict[str, np.ndarray]) -> list[str]:
    """Replace the capture by the given activations, keyed by the capture's description."""
    calls: list[str] = []

    def capture(_model: Any, _batches: Any, _pooling: str, _progress: bool, description: str) -> torch.Tensor:
        calls.append(description)
        return torch.from_numpy(acts[description.removeprefix("activations ")])

    monkeypatch.setattr(report_module, "capture_layer_activations", capture)
    return calls


def _examples(count: int) -> list[dict[str, torch.Tensor]]:
    return qa_items(CharTokenizer(), count, "zq")


@pytest.mark.parametrize(("criterion", "expected"), [("separability", 2), ("paper", 0)])
def test_report_picks_the_planted_layer_by_default_and_records_both(
    criterion: str, expected: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    forget, retain = _planted()
    _fake_capture(monkeypatch, {"forget[0]": forget, "retain": retain})
    config = MIConfig(criterion=criterion, estimator="gaussian")
    report = run_mi_selection(
        tiny_llama(num_layers=4), [_examples(200)], _examples(200), config, progress=False
    )
    assert report.criterion == criterion and report.chosen_layer == expected
    assert report.criteria["separability"].chosen_layer == 2  # the layer where forget and retain differ
    assert report.criteria["paper"].chosen_layer == 0  # the low-dimensional layer (the estimator's bias)
    # the same scores the pure functions give
    assert [s.score for s in report.criteria["paper"].scores] == pytest.approx(
        [s.score for s in score_layers([forget], retain, "gaussian")]
    )
    assert recommend_layer(score_layers_separability([forget], retain)) == 2
    json_path, png_path = report.save(tmp_path)
    data = json.loads(json_path.read_text())
    assert data["criterion"] == criterion and data["chosen_layer"] == expected
    assert data["rule"] == {"separability": "argmax", "paper": "argmin"}[criterion]
    assert set(data["criteria"]) == {"separability", "paper"}
    assert data["scores"] == data["criteria"][criterion]["scores"] and data["layers"] == [0, 1, 2, 3]
    for name, rule in (("separability", "argmax"), ("paper", "argmin")):
        entry = data["criteria"][name]
        assert entry["rule"] == rule and entry["error"] is None and len(entry["details"]) == 4
    assert data["config"]["criterion"] == criterion
    assert {"estimate_separability", "estimate_paper", "capture"} <= set(data["timings_s"])
    assert png_path.stat().st_size > 1000
    again = MIReport.from_dict(data)
    assert json.loads(json.dumps(again.to_dict())) == data  # the JSON reads back into the same report


def test_no_separable_layer_falls_back_to_the_paper_pick(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forget and retain from one distribution at every layer: separability is 0 everywhere (no evidence),
    so l* is the paper criterion's pick and the report says the paper chose."""
    forget, retain = _planted()
    forget[2] = retain[2][::-1].copy()  # remove the planted difference
    _fake_capture(monkeypatch, {"forget[0]": forget, "retain": retain})
    report = run_mi_selection(
        tiny_llama(num_layers=4),
        [_examples(200)],
        _examples(200),
        MIConfig(estimator="gaussian"),
        progress=False,
    )
    assert all(s.score == 0 for s in report.criteria["separability"].scores)
    assert report.criterion == "paper" and report.chosen_layer == report.criteria["paper"].chosen_layer == 0
    assert report.config["criterion"] == "separability"  # what was asked for


def test_min_layer_applies_to_both_criteria(monkeypatch: pytest.MonkeyPatch) -> None:
    forget, retain = _planted()
    _fake_capture(monkeypatch, {"forget[0]": forget, "retain": retain})
    config = MIConfig(estimator="gaussian", min_layer=3)
    report = run_mi_selection(
        tiny_llama(num_layers=4), [_examples(200)], _examples(200), config, progress=False
    )
    assert report.chosen_layer == 3 and report.criteria["paper"].chosen_layer == 3
    assert len(report.scores) == 4  # every layer is still scored and reported


def test_multi_domain_works_for_both_criteria(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    axis = np.eye(32)[0]
    shifts = [(0.0, 0.0), (2.0, 2.0), (1.5, -1.5)]  # layer 2: the forget domains apart from each other too
    f1 = np.stack([rng.standard_normal((100, 32)) + a * axis for a, _ in shifts]).astype(np.float32)
    f2 = np.stack([rng.standard_normal((100, 32)) + b * axis for _, b in shifts]).astype(np.float32)
    retain = rng.standard_normal((3, 100, 32)).astype(np.float32)
    _fake_capture(monkeypatch, {"forget[0]": f1, "forget[1]": f2, "retain": retain})
    model = tiny_llama(num_layers=3)
    for eta, expected in ((0.0, 1), (1.0, 2)):
        config = MIConfig(estimator="gaussian", eta=eta, samples=100)
        report = run_mi_selection(
            model, [_examples(100), _examples(100)], _examples(100), config, progress=False
        )
        assert report.chosen_layer == expected, (eta, [s.score for s in report.scores])
        assert report.samples == {"forget": [100, 100], "retain": 100}
        for result in report.criteria.values():
            assert all(len(s.forget_retain) == 2 and len(s.forget_forget) == 1 for s in result.scores)


def test_the_other_criterion_failing_is_recorded_not_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    forget, retain = _planted()
    _fake_capture(monkeypatch, {"forget[0]": forget[:, :9], "retain": retain[:, :9]})
    # the paper criterion needs 8 samples, the probe 10 folds: separability cannot run on 9
    config = MIConfig(criterion="paper", estimator="gaussian", probe_folds=10, samples=9)
    report = run_mi_selection(tiny_llama(num_layers=4), [_examples(9)], _examples(9), config, progress=False)
    failed = report.criteria["separability"]
    assert failed.chosen_layer is None and "has 9 samples" in failed.error and failed.scores == []
    assert report.to_dict()["criteria"]["separability"]["error"] == failed.error
    with pytest.raises(FalconConfigError, match=r"forget domain 0 has 9 samples.*needs >= 10"):
        run_mi_selection(
            tiny_llama(num_layers=4),
            [_examples(9)],
            _examples(9),
            MIConfig(estimator="gaussian", probe_folds=10, samples=10),
            progress=False,
        )


@pytest.mark.parametrize(
    ("config", "forget", "retain", "match"),
    [
        (
            MIConfig(probe_folds=12, samples=12),
            12,
            11,
            r"the retain set has 11 samples.*>= 12.*probe_folds=12",
        ),
        (MIConfig(), 7, 20, r"forget domain 0 has 7 samples.*>= 8"),
        (MIConfig(criterion="paper"), 20, 7, r"the retain set has 7 samples.*>= 8"),
        (MIConfig(min_layer=4), 20, 20, r"mi.min_layer=4.*4 decoder layers"),
    ],
)
def test_bad_input_fails_before_any_forward_pass(
    config: MIConfig, forget: int, retain: int, match: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _fake_capture(monkeypatch, {})
    with pytest.raises(FalconConfigError, match=match):
        run_mi_selection(
            tiny_llama(num_layers=4), [_examples(forget)], _examples(retain), config, progress=False
        )
    assert calls == []


def test_separability_input_error_is_a_falcon_error_exported_from_the_package() -> None:
    import falcon_plugin
    from falcon_plugin import separability

    assert (
        falcon_plugin.SeparabilityInputError is SeparabilityInputError is separability.SeparabilityInputError
    )
    assert issubclass(SeparabilityInputError, ValueError)


def test_a_report_written_before_the_criteria_reads_as_the_papers() -> None:
    old = {
        "chosen_layer": 1,
        "layers": [0, 1],
        "scores": [0.5, 0.2],
        "config": {"estimator": "kde", "pca_variance": 0.95, "eta": 1.0, "pooling": "last"},
        "samples": {"forget": [8], "retain": 8},
        "timings_s": {},
        "details": [
            {"layer": 0, "score": 0.5, "forget_retain": [{"mi": 0.5, "h_x": 1, "h_y": 1, "h_xy": 1.5}]},
            {"layer": 1, "score": 0.2, "forget_retain": [{"mi": 0.2, "h_x": 1, "h_y": 1, "h_xy": 1.8}]},
        ],
    }
    report = MIReport.from_dict(old)
    assert report.criterion == "paper" and report.chosen_layer == 1
    assert [s.score for s in report.scores] == [0.5, 0.2]


# ---------------------------------------------------------------------------------------------- trainer
def test_layer_auto_uses_the_configured_criterion_on_a_real_capture(tmp_path: Path) -> None:
    tok = CharTokenizer()
    picks = {}
    for criterion in ("separability", "paper"):
        # a fresh dataset each time: it draws the retain half of an item afresh on every access
        dataset = ForgetRetainDataset(qa_items(tok, 16, "zq", 1), qa_items(tok, 16, "ab", 2), seed=0)
        out = tmp_path / criterion
        args = TrainingArguments(
            output_dir=str(out),
            max_steps=1,
            report_to=[],
            use_cpu=True,
            disable_tqdm=True,
            save_strategy="no",
        )
        trainer = FALCON(
            model=tiny_llama(num_layers=5, hidden=16),
            train_dataset=dataset,
            data_collator=ForgetRetainCollator(0),
            args=args,
            layer="auto",
            mi={"criterion": criterion, "samples": 16, "estimator": "gaussian"},
        )
        trainer.train()
        data = json.loads((out / REPORT_JSON).read_text())
        assert (out / REPORT_PNG).stat().st_size > 1000
        assert data["criterion"] == criterion and set(data["criteria"]) == {"separability", "paper"}
        assert trainer.falcon_layer == data["chosen_layer"] == data["criteria"][criterion]["chosen_layer"]
        scores = data["criteria"]["paper"]["scores"]
        assert data["criteria"]["paper"]["chosen_layer"] == min(range(5), key=lambda i: (scores[i], i))
        picks[criterion] = {n: d["chosen_layer"] for n, d in data["criteria"].items()}
        assert json.loads(json.dumps(trainer.falcon_state.mi_report)) == data
    assert picks["separability"] == picks["paper"]  # same samples, same capture: the same two picks


def test_trainer_rejects_a_min_layer_beyond_the_model(tmp_path: Path) -> None:
    tok = CharTokenizer()
    with pytest.raises(FalconConfigError, match=r"mi.min_layer=5.*has 4 decoder layers"):
        FALCON(
            model=tiny_llama(num_layers=4, hidden=16),
            train_dataset=ForgetRetainDataset(qa_items(tok, 16, "zq", 1), qa_items(tok, 16, "ab", 2)),
            data_collator=ForgetRetainCollator(0),
            args=TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True),
            layer="auto",
            mi={"min_layer": 5},
        )
    with pytest.raises(FalconConfigError, match=r"has 9 samples.*needs >= 10 \(criterion separability"):
        FALCON(
            model=tiny_llama(num_layers=4, hidden=16),
            train_dataset=ForgetRetainDataset(qa_items(tok, 9, "zq", 1), qa_items(tok, 9, "ab", 2)),
            data_collator=ForgetRetainCollator(0),
            args=TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True),
            layer="auto",
            mi={"probe_folds": 10, "samples": 10},
        )
