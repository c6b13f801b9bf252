"""Exact resume: a run stopped after a checkpoint and resumed ends where an uninterrupted run ends.

FALCON's own state (l*, the MI report, the POV, the frozen copies of the
trainable tensors) is saved with every checkpoint (``falcon_state.pt``) and restored on resume, never
recomputed; the Trainer restores weights, optimizer, scheduler and RNG state. Inside open-unlearning
a user resumes with ``++trainer.args.resume_from_checkpoint=PATH``: the host then calls ``train()``
with no argument, which these tests do too. The host's retain partners come from the global torch RNG;
``test_resume_inside_the_host_is_bit_identical`` runs tests/fixtures/fake_host, which draws them the
same way, on whatever transformers the tests import (``PYTHONPATH=DIR`` with transformers 4.45.1 in
DIR runs it on the host's pinned version).
"""

from __future__ import annotations

import json
import logging
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import CharTokenizer, qa_items, tiny_llama
from transformers import TrainerCallback, TrainingArguments

from falcon_plugin import replay
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
        "save_only_model=True" in r.getMessage()
        and "cannot continue" in r.getMessage()
        and "trainer.args.save_only_model=false" in r.getMessage()  # the host override, as typed
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


# ---------------------------------------------------------------------------------- inside the (fake) host
# The host's ForgetRetainDataset draws each retain partner from the *global* torch RNG in __getitem__, and
# the Trainer restores the checkpoint's RNG state only after the first batches past the resume point were
# fetched (the dataloader also fetches one batch ahead, so no restore point of rng_state.pth is early enough).
# tests/fixtures/fake_host pairs its items the same way; its TOFU set has 16 items, batch 4:
# 4 steps per epoch.
HOST_STEPS = 6
HOST_ARGS = [
    "experiment=unlearn/tofu",
    "trainer=FALCON",
    f"++trainer.args.max_steps={HOST_STEPS}",  # ++: whether or not the composed config has the key
    "trainer.args.save_strategy=steps",
    "++trainer.args.save_steps=1",
    "trainer.args.save_only_model=false",  # the host's default (true) makes checkpoints non-resumable
    "trainer.method_args.mi.samples=8",
]


def _host_run(cwd: Path, task: str, *extra: str) -> Path:
    import transformers
    from test_host_registry import FAKE_HOST, run_python

    # the host runs on the transformers these tests import (e.g. PYTHONPATH=/tmp/tf445 for 4.45.1)
    site = Path(transformers.__file__).resolve().parents[1]
    argv = [str(FAKE_HOST / "src" / "train.py"), *HOST_ARGS, f"task_name={task}", *extra]
    proc = run_python(argv, cwd=cwd, extra_path=site)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cwd / "saves" / "unlearn" / task


def _host_weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(out / "model.safetensors")


def _host_logs(out: Path) -> dict[int, dict[str, float]]:
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return {h["step"]: h for h in history if "loss" in h}


@pytest.fixture(scope="module")
def host_straight(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted fake-host run of HOST_STEPS steps with a checkpoint after every step."""
    return _host_run(tmp_path_factory.mktemp("host"), "straight")


@pytest.mark.parametrize("cut", [2, 4, 5], ids=["mid-epoch-0", "epoch-boundary", "mid-epoch-1"])
def test_resume_inside_the_host_is_bit_identical(host_straight: Path, cut: int, tmp_path: Path) -> None:
    """Straight run vs. resumed from its checkpoint-``cut`` (a run cut there has exactly that checkpoint)."""
    checkpoint = host_straight / f"checkpoint-{cut}"
    assert (checkpoint / "rng_state.pth").is_file() and (checkpoint / "optimizer.pt").is_file()
    resumed = _host_run(tmp_path, "resumed", f"++trainer.args.resume_from_checkpoint={checkpoint}")

    expected, got = _host_weights(host_straight), _host_weights(resumed)
    assert expected.keys() == got.keys()
    differing = {
        n: float((expected[n] - got[n]).abs().max()) for n in expected if not torch.equal(expected[n], got[n])
    }
    assert not differing, f"resumed from checkpoint-{cut}: weights differ from the straight run: {differing}"
    # the resumed run's history is the checkpoint's (steps 1..cut) plus what it logged itself (cut+1..)
    straight_logs, resumed_logs = _host_logs(host_straight), _host_logs(resumed)
    assert sorted(resumed_logs) == list(range(1, HOST_STEPS + 1))
    for step in range(cut + 1, HOST_STEPS + 1):
        assert resumed_logs[step] == straight_logs[step], (
            f"step {step} logged differently after resuming at {cut}"
        )


# ---------------------------------------------------------------------------------- falcon_plugin.replay
class _GlobalRngPairs(torch.utils.data.Dataset):
    """Draws from all three global RNGs in ``__getitem__`` (the host draws from torch's)."""

    def __len__(self) -> int:
        return 16

    def __getitem__(self, i: int) -> tuple[int, int, float, float]:
        return i, int(torch.randint(0, 1000, (1,))), random.random(), float(np.random.rand())


def _global_states() -> tuple[Any, ...]:
    return torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()


def test_replayable_items_are_a_function_of_seed_epoch_and_index() -> None:
    items = replay.ReplayableItems(_GlobalRngPairs(), seed=0)
    first = [items[i] for i in range(len(items))]
    torch.manual_seed(123)  # whatever the global RNGs hold
    random.seed(5)
    np.random.seed(9)
    before = _global_states()
    again = [items[i] for i in reversed(range(len(items)))][::-1]  # another order, another time
    after = _global_states()
    assert again == first
    assert torch.equal(before[0], after[0]) and before[1] == after[1] and (before[2] == after[2]).all()
    assert len({item[1] for item in first}) > 8  # still random draws, not one repeated value
    items.epoch = 1
    assert all(a != b for a, b in zip(first, [items[i] for i in range(len(items))], strict=True))
    other_seed = replay.ReplayableItems(_GlobalRngPairs(), seed=1)
    assert [other_seed[i] for i in range(len(items))] != first
    assert len(items) == 16 and items.dataset.__class__ is _GlobalRngPairs


def test_replayable_wraps_map_style_datasets_only() -> None:
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter(range(3))

    stream, pairs = Stream(), _GlobalRngPairs()
    assert replay.replayable(stream, 0) is stream
    assert replay.replayable(None, 0) is None
    wrapped = replay.replayable(pairs, 0)
    assert isinstance(wrapped, replay.ReplayableItems) and replay.replayable(wrapped, 0) is wrapped


def test_the_trainer_iterates_replayable_items_and_keeps_its_train_dataset(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    trainer = _trainer(tmp_path / "run", dataloader_num_workers=1, dataloader_persistent_workers=True)
    dataset = trainer.train_dataset
    with caplog.at_level(logging.WARNING, logger="falcon_plugin.replay"):
        loader = trainer.get_train_dataloader()
    assert trainer.train_dataset is dataset
    assert isinstance(loader.dataset, replay.ReplayableItems) and loader.dataset.dataset is dataset
    assert any("dataloader_persistent_workers=True" in r.getMessage() for r in caplog.records)


def test_the_trainers_rng_file_loads_with_weights_only(tmp_path: Path) -> None:
    """transformers 4.45 reads rng_state.pth with a bare torch.load: weights_only=True from torch 2.6."""
    path = tmp_path / "rng_state.pth"
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.random.get_rng_state()}
    torch.save(state, path)  # what Trainer._save_rng_state writes (on CPU)
    with pytest.raises(pickle.UnpicklingError, match="numpy"):
        torch.load(path, weights_only=True)
    with replay.trainer_rng_state_loading():
        loaded = torch.load(path, weights_only=True)
    assert loaded["python"] == state["python"] and torch.equal(loaded["cpu"], state["cpu"])
    assert (loaded["numpy"][1] == state["numpy"][1]).all()
