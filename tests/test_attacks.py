"""Recovery attacks (``falcon-unlearn attack``, ``falcon_plugin.tools.attacks``) on tiny Llamas.

The central fixture makes a model *forget* facts it knew: a tiny Llama memorises 16 fictitious facts,
then gradient ascent on all of them drives their answer probability below 0.05. Relearning on half
of the facts must bring the other, never-relearned half back (the relearning attack's finding),
measured against a control model that never knew the facts.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import random
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from falcon_plugin.data import pad_examples, tokenize_qa
from falcon_plugin.tools.attacks import leaderboard_columns, read_result
from falcon_plugin.tools.attacks.data import MCQ, encode_qa, load_attack_data, read_records, split_records
from falcon_plugin.tools.attacks.lora import relearn_lora
from falcon_plugin.tools.attacks.metrics import mcq_accuracy
from falcon_plugin.tools.attacks.quantize import FP4_CODE, quantize_weights, round_trip_fp4, round_trip_int
from falcon_plugin.tools.attacks.runner import AttackOptions, parse_attacks, run_attacks
from falcon_plugin.tools.attacks.specs import LoraSpec, QuantSpec, RelearnSpec
from falcon_plugin.tools.common.errors import InputError
from falcon_plugin.tools.demo.finetune import FinetuneSpec, finetune
from falcon_plugin.tools.demo.metrics import answer_probabilities
from falcon_plugin.tools.demo.model import TinyModelSpec, build_tiny_llama
from falcon_plugin.tools.demo.tokenizer import build_word_tokenizer

SPEC = TinyModelSpec(num_layers=2, hidden_size=64, intermediate_size=128, num_heads=4, max_positions=96)
WORDS = [f"w{i}" for i in range(40)]
# fast settings for tiny models (the protocol defaults are for 1B+ models: lr 1e-5 would not move these)
FAST = AttackOptions(
    seed=0,
    max_length=96,
    progress=False,
    relearn=RelearnSpec(steps=30, learning_rate=1e-3),
    lora=LoraSpec(rank=8, alpha=16, epochs=3, learning_rate=1e-3),
)


def _facts(count: int = 16, seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)
    return [
        {"question": f"Where does name{i} live?", "answer": " ".join(rng.choice(WORDS) for _ in range(3))}
        for i in range(count)
    ]


def _mcqs(count: int = 8, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [
        {
            "question": f"Which colour is thing{i}?",
            "choices": rng.sample(WORDS, 4),
            "answer": rng.randrange(4),
        }
        for i in range(count)
    ]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _tree_hash(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Folders: ``unlearned`` (knew the facts, then gradient ascent), ``control`` (never knew them)."""
    root = tmp_path_factory.mktemp("attacks")
    facts, mcqs = _facts(), _mcqs()
    texts = [f"{f['question']} {f['answer']}" for f in facts]
    texts += [f"{m['question']} {' '.join(m['choices'])}" for m in mcqs]
    tok = build_word_tokenizer(texts, extra_words=["Question", "Answer", "A", "B", "C", "D"])
    model = build_tiny_llama(tok, SPEC, seed=0)
    examples = [tokenize_qa(tok, f["question"], f["answer"]) for f in facts]
    finetune(
        model,
        examples,
        tok.pad_token_id,
        FinetuneSpec(epochs=150, batch_size=16, learning_rate=3e-3),
        progress=False,
    )
    known = sum(answer_probabilities(model, examples, tok.pad_token_id)) / len(examples)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.005)
    batch = pad_examples(examples, tok.pad_token_id)
    for _ in range(300):  # gradient ascent until the facts are forgotten
        model.train()
        (-model(**batch).loss).backward()
        optimizer.step()
        optimizer.zero_grad()
        forgotten = sum(answer_probabilities(model, examples, tok.pad_token_id)) / len(examples)
        if forgotten < 0.05:
            break
    assert known > 0.9 and forgotten < 0.05, (known, forgotten)
    folders = {"unlearned": root / "unlearned", "control": root / "control"}
    model.save_pretrained(folders["unlearned"])
    build_tiny_llama(tok, SPEC, seed=1).save_pretrained(folders["control"])
    for folder in folders.values():
        tok.save_pretrained(folder)
    return {
        **folders,
        "root": root,
        "facts": _write_jsonl(root / "facts.jsonl", facts),
        "mcq": _write_jsonl(root / "mcq.jsonl", mcqs),
        "tokenizer": tok,
    }


def test_relearn_brings_back_held_out_forgotten_facts(world, tmp_path):
    data = load_attack_data(world["facts"], test_fraction=0.5, seed=0)
    gains, train_gains = {}, {}
    for name in ("unlearned", "control"):
        result = run_attacks(world[name], data, "relearn", FAST, out=tmp_path / name)
        entry = result["attacks"]["relearn"]
        gains[name] = entry["after"]["forget_prob"] - entry["before"]["forget_prob"]
        train_gains[name] = entry["after"]["forget_train_prob"] - entry["before"]["forget_train_prob"]
    # measured (answer probability gain): unlearned 0.41 on its 8 never-relearned facts, 0.97 on the 8
    # relearned; control (never knew the facts) 0.006 held out, 0.035 relearned
    assert gains["unlearned"] > 0.3 and train_gains["unlearned"] > 0.5, (gains, train_gains)
    assert gains["control"] < 0.1, gains
    assert result["protocol"]["relearn"]["learning_rate"] == 1e-3
    assert result["data"]["train"]["rows"] == 8 and result["data"]["test"]["rows"] == 8


def test_protocol_defaults_are_the_sources():
    relearn = RelearnSpec().protocol()
    assert (relearn["learning_rate"], relearn["weight_decay"], relearn["steps"]) == (1e-5, 0.0, 100)
    assert (relearn["effective_batch"], relearn["warmup_steps"], relearn["optimizer"]) == (
        4,
        10,
        "adamw_torch",
    )
    lora = LoraSpec().protocol(rows=20)
    assert (lora["rank"], lora["alpha"], lora["dropout"], lora["learning_rate"]) == (128, 16, 0.0, 2e-4)
    assert (lora["epochs"], lora["batch_size"], lora["weight_decay"], lora["target_modules"]) == (
        3,
        1,
        0.01,
        "all-linear",
    )
    assert (lora["max_steps"], lora["warmup_steps"]) == (60, 3)  # ceil(0.05 * 60)


def test_quantize_8bit_keeps_logits_4bit_moves_them(world):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(world["unlearned"]).eval()
    tok = world["tokenizer"]
    batch = pad_examples([tokenize_qa(tok, f["question"], f["answer"]) for f in _facts()], tok.pad_token_id)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        reference = model(**inputs).logits
        scale = reference.abs().max()
        drift = {}
        for bits in (8, 4):
            quantized = copy.deepcopy(model)
            details = quantize_weights(quantized, bits, QuantSpec("bnb"))
            assert details["quantized_modules"] == 2 * 7  # q k v o gate up down per layer; lm_head kept
            drift[bits] = float((quantized(**inputs).logits - reference).abs().max() / scale)
    # measured: 8 bits 0.22% of the logit scale, 4 bits 3.8%
    assert drift[8] < 0.01, drift
    assert drift[4] > 3 * drift[8], drift
    assert torch.equal(quantized.lm_head.weight, model.lm_head.weight)


def test_round_trips_are_the_formats():
    torch.manual_seed(0)
    w = torch.randn(6, 100)
    absmax = w.abs().amax(1, keepdim=True)
    for bits, levels in ((8, 127), (4, 7)):
        q = round_trip_int(w, bits)
        steps = q / (absmax / levels)
        assert torch.allclose(steps, steps.round(), atol=1e-3) and steps.abs().max() <= levels + 1e-3
        assert (q - w).abs().max() <= (absmax / levels / 2).max() + 1e-6  # round to nearest
    q4 = round_trip_fp4(w).reshape(-1)
    for block in range(0, w.numel(), 64):  # every value is an FP4 code times the block's absmax
        values, real = q4[block : block + 64], w.reshape(-1)[block : block + 64]
        scaled = values / real.abs().max()
        assert torch.isclose(scaled[:, None], FP4_CODE[None, :], atol=1e-6).any(1).all()
        nearest = (real / real.abs().max())[:, None].sub(FP4_CODE[None, :]).abs().min(1).values
        assert torch.allclose((scaled - real / real.abs().max()).abs(), nearest, atol=1e-6)


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes not installed")
def test_round_trips_match_bitsandbytes():
    import bitsandbytes.functional as F

    torch.manual_seed(0)
    for shape in [(32, 64), (48, 100), (7, 9)]:
        w = torch.randn(shape)
        packed, state = F.quantize_4bit(w, quant_type="fp4", blocksize=64)
        assert torch.equal(F.dequantize_4bit(packed, state), round_trip_fp4(w))
        cb, scb, _ = F.int8_vectorwise_quant(w.clone())
        assert torch.allclose(F.int8_vectorwise_dequant(cb, scb), round_trip_int(w, 8), atol=1e-6)


def test_lora_trains_only_adapters_and_saves_a_merged_model(world, tmp_path):
    from transformers import AutoModelForCausalLM

    original = AutoModelForCausalLM.from_pretrained(world["unlearned"]).eval()
    tok = world["tokenizer"]
    examples = [tokenize_qa(tok, f["question"], f["answer"]) for f in _facts()[:8]]
    merged, details = relearn_lora(
        copy.deepcopy(original), examples, tok.pad_token_id, FAST.lora, progress=False
    )
    assert (
        details["adapter_tensors"] == 2 * 7 * 2
        and details["adapter_tensors_changed"] == details["adapter_tensors"]
    )
    assert details["trainable_base_tensors"] == 0
    old, new = original.state_dict(), merged.state_dict()
    assert set(old) == set(new)  # merged back into a plain model: no lora_ tensors left
    for name in old:
        linear = name.endswith("proj.weight")
        assert torch.equal(old[name], new[name]) != linear, name  # only LoRA-targeted linears moved

    data = load_attack_data(world["facts"], seed=0)
    result = run_attacks(
        world["unlearned"], data, "relearn-lora", replace(FAST, save_models=True), out=tmp_path
    )
    saved = tmp_path / "models" / "relearn-lora"
    assert (saved / "config.json").is_file() and not (saved / "adapter_config.json").exists()
    reloaded = AutoModelForCausalLM.from_pretrained(saved)
    assert not torch.equal(
        reloaded.model.layers[0].self_attn.q_proj.weight, original.model.layers[0].self_attn.q_proj.weight
    )
    assert result["protocol"]["relearn-lora"]["merged"] is True


def test_same_seed_same_file_and_model_folder_untouched(world, tmp_path):
    data = load_attack_data(world["facts"], seed=0)
    before = _tree_hash(world["unlearned"])
    options = replace(
        FAST,
        save_models=True,
        relearn=RelearnSpec(steps=8, learning_rate=1e-3),
        lora=LoraSpec(rank=4, epochs=1, learning_rate=1e-3),
    )
    for run in ("a", "b"):
        run_attacks(world["unlearned"], data, "all", options, out=tmp_path / run)
    assert _tree_hash(world["unlearned"]) == before
    a, b = (tmp_path / r / "attacks.json" for r in ("a", "b"))
    assert a.read_bytes() == b.read_bytes()
    assert list(read_result(a)["attacks"]) == ["relearn", "relearn-lora", "quantize-8bit", "quantize-4bit"]
    assert _tree_hash(tmp_path / "a" / "models") == _tree_hash(tmp_path / "b" / "models")
    other = run_attacks(
        world["unlearned"],
        load_attack_data(world["facts"], seed=1),
        "relearn",
        replace(options, seed=1, save_models=False),
    )
    assert other["attacks"]["relearn"]["after"] != read_result(a)["attacks"]["relearn"]["after"]


def test_mcq_relearning_raises_accuracy(world, tmp_path):
    data = load_attack_data(world["mcq"], seed=0)
    assert data.train.kind == "mcq"
    options = replace(FAST, relearn=RelearnSpec(steps=40, learning_rate=3e-3))
    result = run_attacks(world["control"], data, "relearn", options)
    entry = result["attacks"]["relearn"]
    assert set(entry["before"]) == {"forget_acc", "forget_train_acc"}
    assert entry["after"]["forget_train_acc"] == 1.0 and entry["before"]["forget_train_acc"] < 1.0, entry


class _SaysLetter(torch.nn.Module):
    """A stand-in LM whose next token is always ``token`` (logit 5, every other 0)."""

    def __init__(self, vocab: int, token: int) -> None:
        super().__init__()
        self.vocab, self.token = vocab, token
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        logits[..., self.token] = 5.0
        return SimpleNamespace(logits=logits)


def test_mcq_accuracy_reads_the_letters(world):
    tok = world["tokenizer"]
    items = [MCQ(m["question"], tuple(m["choices"]), m["answer"]) for m in _mcqs()]
    for index, letter in enumerate("ABCD"):
        token = tok(" " + letter, add_special_tokens=False)["input_ids"]
        assert len(token) == 1
        accuracy = mcq_accuracy(_SaysLetter(len(tok), token[0]), tok, items, max_length=96)
        assert accuracy == pytest.approx(sum(m.answer == index for m in items) / len(items)), letter


def test_text_corpus_and_two_file_mode(world, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(
        "\n".join(f"{f['question']} {f['answer']}" for f in _facts()) + "\n\n", encoding="utf-8"
    )
    data = load_attack_data(train_path=corpus, test_path=world["mcq"])
    assert (data.train.kind, data.test.kind, data.split) == ("text", "mcq", None)
    result = run_attacks(world["control"], data, "quantize-8bit", FAST)
    assert set(result["attacks"]["quantize-8bit"]["after"]) == {"forget_acc", "forget_train_prob"}


def test_split_is_seeded_and_disjoint(world):
    part = read_records(world["facts"])
    train, test = split_records(part, 0.25, seed=3)
    again, _ = split_records(part, 0.25, seed=3)
    assert train == again and len(test.records) == 4 and not set(train.records) & set(test.records)
    assert split_records(part, 0.25, seed=4)[1] != test


def test_chat_template_labels_only_the_answer(world):
    tok = copy.deepcopy(world["tokenizer"])
    tok.chat_template = (
        "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}"
        "{% if add_generation_prompt %}assistant : {% endif %}"
    )
    pair = read_records(world["facts"]).records[0]
    example = encode_qa(tok, pair, "chat", max_length=96)
    labels = example["labels"][example["labels"] != -100].tolist()
    assert tok.decode(labels, skip_special_tokens=True).strip() == pair.answer
    assert labels[-1] == tok.eos_token_id


def test_leaderboard_columns_are_flat():
    result = {
        "attacks": {
            "relearn": {
                "before": {"forget_prob": 0.1, "forget_rougeL_recall": 0.0},
                "after": {"forget_prob": 0.6, "forget_rougeL_recall": 0.5},
                "details": {"train_loss": [[1.0, 2.0]]},
            },
            "quantize-4bit": {"before": {"forget_acc": 0.25}, "after": {"forget_acc": 0.5}},
        }
    }
    assert leaderboard_columns(result) == {
        "relearn/forget_prob_before": 0.1,
        "relearn/forget_rougeL_recall_before": 0.0,
        "relearn/forget_prob_after": 0.6,
        "relearn/forget_rougeL_recall_after": 0.5,
        "quantize-4bit/forget_acc_before": 0.25,
        "quantize-4bit/forget_acc_after": 0.5,
    }


# ---------------------------------------------------------------------------------------------- the command
def _cli(argv: list[str]) -> int:
    from falcon_plugin.tools.cli import attack
    from falcon_plugin.tools.cli.common import Parser, bind_stdout

    parser = Parser(prog="falcon-unlearn")
    attack.add_parser(parser.add_subparsers(dest="command", parser_class=Parser))
    bind_stdout()
    return attack.run(parser.parse_args(["attack", *argv]))


@pytest.fixture
def no_model_load(monkeypatch):
    def refuse(path):
        raise AssertionError(f"the model was loaded ({path}) before the bad input was reported")

    monkeypatch.setattr("falcon_plugin.tools.attacks.runner.load_causal_lm", refuse)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"--model": "missing-model"}, "missing-model"),
        ({"--attacks": "relearn,jailbreak"}, "'jailbreak'"),
        ({"--data": "one.jsonl"}, "1 record(s)"),
        ({"--data": "missing.jsonl"}, "missing.jsonl"),
        ({"--test-fraction": "1.5"}, "1.5"),
        ({"--attacks": "quantize-9bit"}, "9"),
        ({"--relearn-steps": "0"}, "got 0"),
        ({"--out": "MODEL/inside"}, "inside the model folder"),
        ({"--kind": "audio"}, "'audio'"),
    ],
)
def test_bad_input_fails_before_loading_the_model(world, tmp_path, no_model_load, change, named):
    _write_jsonl(tmp_path / "one.jsonl", _facts(1))
    args = {"--model": str(world["unlearned"]), "--data": str(world["facts"]), "--out": str(tmp_path / "out")}
    args.update({k: v.replace("MODEL", str(world["unlearned"])) for k, v in change.items()})
    for key in ("--model", "--data"):
        if not Path(args[key]).is_absolute():
            args[key] = str(tmp_path / args[key])
    with pytest.raises(InputError, match=named.replace("(", r"\(").replace(")", r"\)")):
        _cli([x for kv in args.items() for x in kv])
    assert not (tmp_path / "out" / "attacks.json").exists()


def test_parse_attacks_expands_aliases():
    assert parse_attacks("quantize") == ("quantize-8bit", "quantize-4bit")
    assert parse_attacks(["relearn", "relearn"]) == ("relearn",)
    assert parse_attacks("all")[:2] == ("relearn", "relearn-lora")


def test_command_writes_the_result_and_prints_the_table(world, tmp_path, capsys):
    code = _cli(
        [
            "--model",
            str(world["unlearned"]),
            "--data",
            str(world["facts"]),
            "--out",
            str(tmp_path),
            "--attacks",
            "relearn,quantize-8bit",
            "--relearn-steps",
            "10",
            "--relearn-lr",
            "1e-3",
            "--max-length",
            "96",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0
    result = read_result(tmp_path / "attacks.json")
    columns = leaderboard_columns(result)
    assert columns["relearn/forget_prob_after"] > columns["relearn/forget_prob_before"]
    assert result["protocol"]["relearn"]["steps"] == 10 and result["protocol"]["relearn"]["warmup_steps"] == 1
    assert "| relearn | forget_prob |" in captured.out
    assert "10/10" in captured.err  # the Trainer's progress bar
