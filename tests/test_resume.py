"""Exact resume: a run stopped after a checkpoint and resumed ends where an uninterrupted run ends.

FALCON's own state (l*, the MI report, the POV, the frozen copies of the
trainable tensors) is saved with every checkpoint (``falcon_state.pt``) and restored on resume, never
recomputed; the Trainer restores weights, optimizer, scheduler and RNG state. Inside open-unlearning
a user resumes with ``++trainer.args.resume_from_checkpoint=PATH``: the host then calls ``train()``
with no argument, which these tests do too.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import CharTokenizer, qa_items, tiny_llama
from transformers import TrainerCallback, TrainingArguments

from falcon_plugin import setup as falcon_setup
from falcon_plugin.data import ForgetRetainCollator, ForgetRetainDataset
from falcon_plugin.state import STATE_FILE, FalconState
from falcon_plugin.trainer import FALCON

STEPS = 4
SAVE_AT = 2


class _StopAt(TrainerCallback):
    """Stops the run after ``step`` optimizer steps (after that step's checkpoint is written)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001 (callback signature)
        if state.global_step == self.step:
            control.should_training_stop = True
        return control


def _dataset() -> ForgetRetainDataset:
    tok = CharTokenizer()
    return ForgetRetainDataset(
        qa_items(tok, 12, "zq", 1), qa_items(tok, 12, "ab", 2), seed=0, redraw=False
    )  # index-only items: exact resume


def _trainer(out: Path, model_seed: int = 0, **arg_overrides: Any) -> FALCON:
    args = dict(
        output_dir=str(out),
        per_device_train_batch_size=2,
        max_steps=STEPS,
        learning_rate=1e-2,
        lr_scheduler_type="linear",
        warmup_steps=1,
        weight_decay=0.01,
        logging_steps=1,
        report_to=[],
        save_strategy="steps",
        save_steps=SAVE_AT,
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    args.update(arg_overrides)
    # no tokenizer: the Trainer would save it into every checkpoint (the test tokenizer cannot be saved)
    return FALCON(
        model=tiny_llama(num_layers=4, hidden=16, seed=model_seed),
        train_dataset=_dataset(),
        data_collator=ForgetRetainCollator(0),
        args=TrainingArguments(**args),
        layer="auto",
        mi={"samples": 8},
    )


def _weights(trainer: FALCON) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters()}


def _losses(trainer: FALCON) -> dict[int, float]:
    return {h["step"]: h["loss"] for h in trainer.state.log_history if "loss" in h}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> FALCON:
    trainer = _trainer(tmp_path_factory.mktemp("full"))
    trainer.train()
    return trainer


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run with the same arguments, stopped after step SAVE_AT; returns its output dir."""
    out = tmp_path_factory.mktemp("stopped")
    trainer = _trainer(out)
    trainer.add_callback(_StopAt(SAVE_AT))
    trainer.train()
    assert trainer.state.global_step == SAVE_AT
    return out


def test_checkpoint_holds_falcon_state_and_everything_the_trainer_needs(interrupted: Path) -> None:
    checkpoint = interrupted / f"checkpoint-{SAVE_AT}"
    names = {p.name for p in checkpoint.iterdir()}
    assert {STATE_FILE, "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"} <= names
    state = FalconState.load(checkpoint)
    assert state is not None and state.mi_report is not None
    assert state.mi_report["chosen_layer"] == state.layer
    assert len(state.frozen) == len(state.trainable_names) >= 1


def test_resume_via_training_arguments_matches_the_uninterrupted_run(
    uninterrupted: FALCON, interrupted: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # MI (Step 1) must not run again: the layer and the report come from the checkpoint
    def no_mi(*_: Any, **__: Any) -> None:
        raise AssertionError("MI layer selection ran again on resume")

    monkeypatch.setattr(falcon_setup, "run_mi_selection", no_mi)
    checkpoint = interrupted / f"checkpoint-{SAVE_AT}"
    # a differently initialised model: every tensor, and FALCON's frozen copies, must come from the checkpoint
    resumed = _trainer(interrupted, model_seed=123, resume_from_checkpoint=str(checkpoint))
    resumed.train()  # no argument, as open-unlearning's src/train.py calls it

    assert resumed.state.global_step == STEPS
    expected, got = _weights(uninterrupted), _weights(resumed)
    worst = max(float((expected[n] - got[n]).abs().max()) for n in expected)
    assert worst <= 1e-6, f"resumed weights differ from the uninterrupted run by {worst}"
    full_losses, resumed_losses = _losses(uninterrupted), _losses(resumed)
    for step in range(SAVE_AT + 1, STEPS + 1):
        assert resumed_losses[step] == pytest.approx(full_losses[step], abs=1e-6)

    a, b = uninterrupted.falcon_state, resumed.falcon_state
    assert a is not None and b is not None
    assert (a.layer, a.first_layer, a.trainable_names) == (b.layer, b.first_layer, b.trainable_names)
    assert torch.equal(a.pov, b.pov)
    assert all(torch.equal(a.frozen[n], b.frozen[n]) for n in a.frozen)
    saved = FalconState.load(checkpoint)
    assert (
        saved is not None and b.mi_report == saved.mi_report
    )  # restored as saved (timings included), not recomputed
    assert a.mi_report is not None and b.mi_report is not None

    def untimed(report: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in report.items() if k != "timings_s"}

    assert untimed(a.mi_report) == untimed(b.mi_report)


def test_a_state_file_of_an_older_version_still_loads(interrupted: Path, tmp_path: Path) -> None:
    """Files written before ``pov_directions`` was dropped from the state carry that key: it is ignored."""
    saved = FalconState.load(interrupted / f"checkpoint-{SAVE_AT}")
    assert saved is not None
    old = {**saved.to_dict(), "pov_directions": torch.randn(8, 16)}
    torch.save(old, tmp_path / STATE_FILE)
    loaded = FalconState.load(tmp_path)
    assert loaded is not None and not hasattr(loaded, "pov_directions")
    assert (loaded.layer, loaded.first_layer, loaded.trainable_names) == (
        saved.layer,
        saved.first_layer,
        saved.trainable_names,
    )
    assert torch.equal(loaded.pov, saved.pov) and all(
        torch.equal(loaded.frozen[n], saved.frozen[n]) for n in saved.frozen
    )
    assert loaded.mi_report == saved.mi_report


def test_resume_true_picks_the_latest_checkpoint(
    uninterrupted: FALCON, interrupted: Path, tmp_path: Path
) -> None:
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(interrupted, out)
    resumed = _trainer(out, model_seed=7)
    resumed.train(resume_from_checkpoint=True)
    expected, got = _weights(uninterrupted), _weights(resumed)
    assert max(float((expected[n] - got[n]).abs().max()) for n in expected) <= 1e-6


def test_save_only_model_warns_at_construction_and_refuses_an_inexact_resume(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="falcon_plugin.validation"):
        trainer = _trainer(tmp_path / "model_only", save_only_model=True, max_steps=SAVE_AT)
    assert any(
        "save_only_model=True" in r.getMessage() and "cannot continue" in r.getMessage()
        for r in caplog.records
    )
    trainer.train()
    checkpoint = tmp_path / "model_only" / f"checkpoint-{SAVE_AT}"
    assert (checkpoint / STATE_FILE).is_file() and not (checkpoint / "optimizer.pt").exists()

    resumed = _trainer(tmp_path / "model_only", resume_from_checkpoint=str(checkpoint))
    with pytest.raises(ValueError, match=r"resume_from_checkpoint=.*checkpoint-2.*no optimizer state"):
        resumed.train()
    assert resumed.state.global_step == 0


def test_resume_from_a_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path / "run", resume_from_checkpoint=str(tmp_path / "nope"))
    with pytest.raises(ValueError, match=r"resume_from_checkpoint=.*nope.*not a checkpoint folder"):
        trainer.train()
