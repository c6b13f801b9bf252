"""Demo building blocks: fact generator, word tokenizer, tiny model, metrics, data files, baselines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from falcon_plugin.data import ForgetRetainCollator, ForgetRetainDataset, tokenize_qa
from falcon_plugin.tools.common.errors import InputError
from falcon_plugin.tools.common.qa_files import load_mi_records, load_split_data
from falcon_plugin.tools.demo.facts import generate_facts, split_by_entity
from falcon_plugin.tools.demo.metrics import answer_probabilities, evaluate_qa, rouge_l_recall
from falcon_plugin.tools.demo.model import TinyModelSpec, build_tiny_llama
from falcon_plugin.tools.demo.tokenizer import build_word_tokenizer

SPEC = TinyModelSpec(num_layers=3, hidden_size=32, intermediate_size=64, num_heads=4)


@pytest.fixture(scope="module")
def facts():
    return generate_facts(12, 4, seed=3)


@pytest.fixture(scope="module")
def tokenizer(facts):
    return build_word_tokenizer([f.question + " " + f.answer for f in facts], ["Question", "Answer"])


def test_facts_deterministic_and_split_by_entity(facts) -> None:
    assert facts == generate_facts(12, 4, seed=3)
    assert facts != generate_facts(12, 4, seed=4)
    assert len(facts) == 48 and len({f.entity for f in facts}) == 12
    assert len({f.question for f in facts}) == 48  # every question names one entity and one attribute
    forget, retain = split_by_entity(facts, 0.25, seed=0)
    assert len(forget) == 12 and len(retain) == 36
    assert not {f.entity for f in forget} & {f.entity for f in retain}
    with pytest.raises(ValueError, match="forget_fraction"):
        split_by_entity(facts, 1.0)


def test_word_tokenizer(tokenizer, facts, tmp_path: Path) -> None:
    example = tokenize_qa(tokenizer, facts[0].question, facts[0].answer, 48)
    assert tokenizer.unk_token_id not in example["input_ids"].tolist()
    assert (
        example["input_ids"][0] == tokenizer.bos_token_id
        and example["input_ids"][-1] == tokenizer.eos_token_id
    )
    answer = example["input_ids"][example["labels"] != -100][:-1]
    assert tokenizer.decode(answer) == facts[0].answer
    tokenizer.save_pretrained(str(tmp_path))
    from transformers import AutoTokenizer

    loaded = AutoTokenizer.from_pretrained(str(tmp_path))
    assert loaded(facts[1].question)["input_ids"] == tokenizer(facts[1].question)["input_ids"]
    assert (loaded.pad_token_id, loaded.eos_token_id) == (tokenizer.pad_token_id, tokenizer.eos_token_id)


def test_tiny_llama_and_metrics(tokenizer, facts) -> None:
    model = build_tiny_llama(tokenizer, SPEC, seed=0)
    assert model.config.vocab_size == len(tokenizer) and model.config.num_hidden_layers == 3
    examples = [tokenize_qa(tokenizer, f.question, f.answer, 48) for f in facts[:6]]
    probs = answer_probabilities(model, examples, tokenizer.pad_token_id)
    assert len(probs) == 6 and all(0 < p < 0.2 for p in probs)  # random init: near-uniform
    scores = evaluate_qa(model, tokenizer, examples, [f.answer for f in facts[:6]])
    assert 0 <= scores.rouge_l_recall <= 1
    assert rouge_l_recall(["The Golden Tower", "cat"], ["The Golden Tower", "black cat"]) == [1.0, 0.5]


def test_retain_partner_is_redrawn(tokenizer, facts) -> None:
    example = tokenize_qa(tokenizer, facts[0].question, facts[0].answer, 48)
    retain = [tokenize_qa(tokenizer, f.question, f.answer, 48) for f in facts[4:]]
    dataset = ForgetRetainDataset([example], retain, seed=0)
    drawn = {tuple(dataset[0]["retain"]["input_ids"].tolist()) for _ in range(40)}
    assert len(drawn) > 10
    fixed = ForgetRetainDataset([example], retain, seed=0, redraw=False)
    assert len({tuple(fixed[0]["retain"]["input_ids"].tolist()) for _ in range(10)}) == 1


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_data_files(tmp_path: Path) -> None:
    records = [
        {"question": f"q{i}", "answer": f"a{i}", "split": "forget" if i < 2 else "retain"} for i in range(5)
    ]
    jsonl = _write(tmp_path / "d.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    forget, retain = load_split_data(jsonl, None, None)
    assert [p.question for p in forget] == ["q0", "q1"] and len(retain) == 3
    nested = _write(tmp_path / "d.json", json.dumps({"forget": records[:2], "retain": records[2:]}))
    assert len(load_split_data(nested, None, None)[1]) == 3
    listed = _write(tmp_path / "l.json", json.dumps(records))
    assert len(load_split_data(None, listed, listed)[0]) == 5
    assert load_mi_records(_write(tmp_path / "t.jsonl", '{"text": "a document"}\n')) == ["a document"]
    with pytest.raises(InputError, match="no record has split='forget'"):
        load_split_data(_write(tmp_path / "r.jsonl", json.dumps(records[3]) + "\n"), None, None)
    with pytest.raises(InputError, match="together"):
        load_split_data(None, jsonl, None)
    with pytest.raises(InputError, match=r"e\.jsonl\[0\]: missing or empty string field 'answer'"):
        load_split_data(None, _write(tmp_path / "e.jsonl", '[{"question": "q", "answer": ""}]'), jsonl)
    with pytest.raises(InputError, match="data file is empty"):
        load_split_data(None, _write(tmp_path / "empty.jsonl", ""), jsonl)


def _trainer(cls, model, tokenizer, forget, retain, tmp_path, **method_args):
    from transformers import TrainingArguments

    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=3,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        report_to="none",
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        dataloader_pin_memory=False,
        use_cpu=True,
    )
    return cls(
        model=model,
        args=args,
        train_dataset=ForgetRetainDataset(forget, retain, seed=0),
        data_collator=ForgetRetainCollator(tokenizer.pad_token_id),
        tokenizer=tokenizer,
        **method_args,
    )


def test_graddiff_raises_forget_loss(tokenizer, facts, tmp_path: Path) -> None:
    from falcon_plugin.tools.demo.baselines import GradDiff

    forget = [tokenize_qa(tokenizer, f.question, f.answer, 48) for f in facts[:4]]
    retain = [tokenize_qa(tokenizer, f.question, f.answer, 48) for f in facts[4:]]
    model = build_tiny_llama(tokenizer, SPEC, seed=0)
    before = sum(answer_probabilities(model, forget, tokenizer.pad_token_id))
    _trainer(GradDiff, model, tokenizer, forget, retain, tmp_path, alpha=0.0).train()
    assert sum(answer_probabilities(model, forget, tokenizer.pad_token_id)) < before


def test_rmu_trains_only_selected_tensors(tokenizer, facts, tmp_path: Path) -> None:
    from falcon_plugin.tools.demo.baselines import RMUBaseline

    forget = [tokenize_qa(tokenizer, f.question, f.answer, 48) for f in facts[:4]]
    retain = [tokenize_qa(tokenizer, f.question, f.answer, 48) for f in facts[4:]]
    model = build_tiny_llama(tokenizer, SPEC, seed=0)
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = _trainer(
        RMUBaseline, model, tokenizer, forget, retain, tmp_path, layer=2, steering_coeff=5.0, alpha=1.0
    )
    assert trainer.trainable_names == [f"model.layers.{i}.mlp.down_proj.weight" for i in range(3)]
    trainer.train()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, initial[n])}
    assert changed == set(trainer.trainable_names)
    assert all(torch.equal(p, initial[n]) for n, p in trainer.ref_model.named_parameters())
    with pytest.raises(ValueError, match="matches no parameter"):
        _trainer(
            RMUBaseline,
            build_tiny_llama(tokenizer, SPEC),
            tokenizer,
            forget,
            retain,
            tmp_path,
            trainable_params_regex=["nothing"],
        )


def test_finetune_record_reused_only_with_the_same_settings(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from falcon_plugin.atomic import atomic_write_json
    from falcon_plugin.tools.demo.presets import PRESETS
    from falcon_plugin.tools.demo.reuse import RECORD_FILE, finetune_settings, record, reusable

    preset = PRESETS["ci"]
    settings = finetune_settings(0, "facts", preset.model, None, preset.finetune, 48)
    folder = tmp_path / "finetuned"
    folder.mkdir()
    with caplog.at_level("INFO"):
        assert reusable(folder, settings) is None  # interrupted before the record: not complete
    assert "has no demo_finetune.json" in caplog.text
    atomic_write_json(folder / RECORD_FILE, record(settings, 12.5))
    assert reusable(folder, settings)["seconds"] == 12.5
    for changed in (
        finetune_settings(1, "facts", preset.model, None, preset.finetune, 48),
        finetune_settings(0, "other facts", preset.model, None, preset.finetune, 48),
        finetune_settings(0, "facts", preset.model, None, preset.finetune, 64),
    ):
        caplog.clear()
        with caplog.at_level("INFO"):
            assert reusable(folder, changed) is None
        assert "fine-tuned with other" in caplog.text
    assert "max_length" in caplog.text  # the log names what changed


def test_demo_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tiny demo model runs on one torch thread by default (3-12x faster than torch's two on a
    busy 2-core machine, issue 13); OMP_NUM_THREADS, --threads or --model leave the choice to the user."""
    import torch

    from falcon_plugin.tools.demo.runner import DemoOptions, _torch_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    torch.set_num_threads(2)
    try:
        with _torch_threads(DemoOptions(out=Path("x"))) as threads:
            assert threads == 1 == torch.get_num_threads()
        assert torch.get_num_threads() == 2  # restored
        with _torch_threads(DemoOptions(out=Path("x"), threads=2)) as threads:
            assert threads == 2
        with _torch_threads(DemoOptions(out=Path("x"), model_path=Path("m"))) as threads:
            assert threads == 2
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        with _torch_threads(DemoOptions(out=Path("x"))) as threads:
            assert threads == 2
    finally:
        torch.set_num_threads(1)


def test_demo_max_length_cutting_every_answer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from falcon_plugin.tools.cli import main

    assert main(["demo", "--size", "ci", "--max-length", "8", "--out", str(tmp_path / "o"), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("falcon-unlearn: error: --max-length 8 leaves no answer token in ")
        and len(err.splitlines()) == 1
    )
