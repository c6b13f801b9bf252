"""Bad input fails early and clearly: a table of bad inputs, each with its exception type and message.

Every row builds what a user would hand FALCON (trainer ``method_args`` as the host passes them,
Hydra ``DictConfig`` values, datasets, tokenizers, models, CLI options and data files) and checks
that the right exception is raised, before any forward pass of the model, with a message naming
BOTH the parameter and the bad value. A NaN or inf in a loss stops the run with the step number
before the optimizer step, so no corrupted checkpoint is written.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import CharTokenizer, qa_items, tiny_llama
from torch import nn
from transformers import TrainerCallback, TrainingArguments

from falcon_plugin.data import ForgetRetainCollator, ForgetRetainDataset
from falcon_plugin.errors import FalconConfigError, FalconDataError, ModelStructureError, NonFiniteLossError
from falcon_plugin.trainer import FALCON


@dataclass
class Env:
    """What a row builds its bad input from: a tiny 4-layer Llama (vocab 64) and host-shaped data."""

    tmp: Path
    tokenizer: CharTokenizer = field(default_factory=CharTokenizer)
    forward_calls: list[str] = field(default_factory=list)

    def model(self, **kwargs: Any) -> nn.Module:
        model = tiny_llama(num_layers=4, hidden=16, **kwargs)
        model.register_forward_pre_hook(lambda *_: self.forward_calls.append("forward"))
        return model

    def items(
        self, topic: str = "zq", count: int = 12, tokenizer: Any = None
    ) -> list[dict[str, torch.Tensor]]:
        return qa_items(tokenizer or self.tokenizer, count, topic, seed=1)

    def dataset(self, forget: list | None = None, retain: list | None = None) -> ForgetRetainDataset:
        return ForgetRetainDataset(
            self.items("zq") if forget is None else forget, self.items("ab") if retain is None else retain
        )

    def trainer(
        self, model: nn.Module | None = None, dataset: Any = None, tokenizer: Any = None, **method_args: Any
    ) -> FALCON:
        args = TrainingArguments(
            output_dir=str(self.tmp / "run"),
            per_device_train_batch_size=2,
            max_steps=1,
            report_to=[],
            save_strategy="no",
            use_cpu=True,
            disable_tqdm=True,
        )
        method_args.setdefault("layer", 2)
        return FALCON(
            model=model if model is not None else self.model(),
            train_dataset=self.dataset() if dataset is None else dataset,
            tokenizer=tokenizer or self.tokenizer,
            data_collator=ForgetRetainCollator(0),
            args=args,
            **method_args,
        )


@dataclass(frozen=True)
class Bad:
    """One bad input: how to submit it, the exception expected and substrings the message must contain."""

    id: str
    submit: Callable[[Env], object]
    error: type[BaseException]
    mentions: tuple[str, ...]
    """The parameter and the bad value (as the message shows them)."""


def with_method_args(**method_args: Any) -> Callable[[Env], object]:
    return lambda env: env.trainer(**method_args)


def with_hydra_method_args(yaml_like: dict[str, Any]) -> Callable[[Env], object]:
    """As the host does: ``trainer_cls(..., **cfg.trainer.method_args)`` with a DictConfig."""

    def submit(env: Env) -> object:
        from omegaconf import OmegaConf

        return env.trainer(**OmegaConf.create(yaml_like))

    return submit


def with_forget_item(**overrides: Any) -> Callable[[Env], object]:
    """A train dataset whose forget item 0 has some fields replaced."""

    def submit(env: Env) -> object:
        forget = env.items("zq")
        forget[0] = {**forget[0], **{k: torch.tensor(v, dtype=torch.long) for k, v in overrides.items()}}
        return env.trainer(dataset=env.dataset(forget=forget))

    return submit


class _Pad999Tokenizer(CharTokenizer):
    pad_token_id = 999


class _NoLayers(nn.Module):
    """Not a transformer: no list of decoder layers to find."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)

    def forward(self, input_ids: torch.Tensor, **_: Any) -> torch.Tensor:
        return self.proj(input_ids.float())


def _t5() -> nn.Module:
    from transformers import T5Config, T5ForConditionalGeneration

    return T5ForConditionalGeneration(
        T5Config(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=2)
    )


def _bert() -> nn.Module:
    from transformers import BertConfig, BertForMaskedLM

    return BertForMaskedLM(
        BertConfig(
            vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32
        )
    )


def _cli(argv_for: Callable[[Path, Path], list[str]]) -> Callable[[Env], object]:
    """Run ``falcon-unlearn`` in-process; an error exit becomes SystemExit(code) carrying stderr."""

    def submit(env: Env) -> object:
        cli = pytest.importorskip("falcon_plugin.tools.cli")
        data = env.tmp / "qa.jsonl"
        data.write_text(
            "".join(json.dumps({"question": f"q{i}?", "answer": f"a{i}"}) + "\n" for i in range(12))
        )
        import contextlib
        import io

        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            try:
                code = cli.main(argv_for(env.tmp, data))
            except SystemExit as exit_:  # argparse errors
                code = exit_.code
        if code:
            raise SystemExit(f"exit {code}: {err.getvalue()}")
        return code

    return submit


def _host_trainer(env: Env, **method_args: Any) -> object:
    """The class open-unlearning builds from the entry point (FALCON on the host's trainer base)."""
    import transformers

    from falcon_plugin import host

    cls = host.build_falcon_trainer(transformers.Trainer)
    args = TrainingArguments(output_dir=str(env.tmp / "run"), use_cpu=True, report_to=[])
    return cls(model=env.model(), train_dataset=env.dataset(), args=args, layer=2, **method_args)


def _malformed_data_file(env: Env) -> object:
    data_io = pytest.importorskip("falcon_plugin.tools.common.qa_files")
    path = env.tmp / "bad.jsonl"
    path.write_text(json.dumps({"prompt": "q?", "completion": "a"}) + "\n")
    return data_io.load_mi_records(path)


ROWS = [
    # ---- trainer method_args (validated in FalconConfig, before the Trainer is built)
    Bad("layer-not-an-index", with_method_args(layer="seven"), FalconConfigError, ("layer", "'seven'")),
    Bad("layer-negative", with_method_args(layer=-1), FalconConfigError, ("layer", "-1")),
    Bad(
        "layer-out-of-range",
        with_method_args(layer=99),
        FalconConfigError,
        ("layer", "99", "4 decoder layers"),
    ),
    Bad("layer-float", with_method_args(layer=2.5), FalconConfigError, ("layer", "2.5")),
    Bad("layer-bool", with_method_args(layer=True), FalconConfigError, ("layer", "True")),
    Bad("temperature-zero", with_method_args(temperature=0), FalconConfigError, ("temperature", "0")),
    Bad(
        "temperature-negative", with_method_args(temperature=-0.5), FalconConfigError, ("temperature", "-0.5")
    ),
    Bad(
        "temperature-string", with_method_args(temperature="hot"), FalconConfigError, ("temperature", "'hot'")
    ),
    Bad(
        "temperature-nan",
        with_method_args(temperature=float("nan")),
        FalconConfigError,
        ("temperature", "nan"),
    ),
    Bad(
        "forget-loss-floor-zero",
        with_method_args(forget_loss_floor=0),
        FalconConfigError,
        ("forget_loss_floor", "0"),
    ),
    Bad(
        "forget-loss-floor-string",
        with_method_args(forget_loss_floor="low"),
        FalconConfigError,
        ("forget_loss_floor", "'low'"),
    ),
    Bad("sam-rho-zero", with_method_args(sam_rho=0), FalconConfigError, ("sam_rho", "0")),
    Bad("sam-rho-negative", with_method_args(sam_rho=-0.1), FalconConfigError, ("sam_rho", "-0.1")),
    Bad("sam-rho-string", with_method_args(sam_rho="big"), FalconConfigError, ("sam_rho", "'big'")),
    Bad(
        "steering-coeff-zero", with_method_args(steering_coeff=0), FalconConfigError, ("steering_coeff", "0")
    ),
    Bad("pov-rank-zero", with_method_args(pov_rank=0), FalconConfigError, ("pov_rank", "0")),
    Bad("pov-rank-float", with_method_args(pov_rank=2.5), FalconConfigError, ("pov_rank", "2.5")),
    Bad("pov-noise-negative", with_method_args(pov_noise=-0.1), FalconConfigError, ("pov_noise", "-0.1")),
    Bad("pov-seed-negative", with_method_args(pov_seed=-1), FalconConfigError, ("pov_seed", "-1")),
    Bad("pov-seed-float", with_method_args(pov_seed=1.5), FalconConfigError, ("pov_seed", "1.5")),
    Bad(
        "pov-weight-inf", with_method_args(pov_weight=float("inf")), FalconConfigError, ("pov_weight", "inf")
    ),
    Bad(
        "retain-weight-bool",
        with_method_args(retain_weight=True),
        FalconConfigError,
        ("retain_weight", "True"),
    ),
    Bad(
        "conflict-weights-one-number",
        with_method_args(conflict_weights=[0.8]),
        FalconConfigError,
        ("conflict_weights", "[0.8]"),
    ),
    Bad(
        "align-weights-three-numbers",
        with_method_args(align_weights=[0.1, 1.9, 3.0]),
        FalconConfigError,
        ("align_weights", "[0.1, 1.9, 3.0]"),
    ),
    Bad(
        "conflict-weights-string",
        with_method_args(conflict_weights="0.8,1.2"),
        FalconConfigError,
        ("conflict_weights", "'0.8,1.2'"),
    ),
    Bad(
        "align-weight-negative",
        with_method_args(align_weights=[0.1, -1.0]),
        FalconConfigError,
        ("align_weights[1]", "-1.0"),
    ),
    Bad(
        "projection-unknown",
        with_method_args(projection="orthogonal"),
        FalconConfigError,
        ("projection", "'orthogonal'"),
    ),
    Bad(
        "method-arg-unknown-host",
        lambda env: _host_trainer(env, temprature=0.7),
        FalconConfigError,
        ("unknown argument(s) ['temprature']",),
    ),
    Bad(
        "method-arg-unknown-standalone",
        with_method_args(temprature=0.7),
        FalconConfigError,
        ("unknown argument(s) ['temprature']", "temperature, forget_loss_floor"),
    ),
    Bad(
        "regex-invalid",
        with_method_args(trainable_params_regex="model.layers.("),
        FalconConfigError,
        ("trainable_params_regex", "model.layers.("),
    ),
    Bad(
        "regex-empty-list",
        with_method_args(trainable_params_regex=[]),
        FalconConfigError,
        ("trainable_params_regex", "[]"),
    ),
    Bad(
        "regex-not-a-string",
        with_method_args(trainable_params_regex=[3]),
        FalconConfigError,
        ("trainable_params_regex", "3"),
    ),
    Bad(
        "regex-matches-nothing",
        with_method_args(trainable_params_regex=[r"transformer\.h\..*"]),
        FalconConfigError,
        ("trainable_params_regex", r"transformer\\.h\\..*", "matches no parameter"),
    ),
    Bad(
        "regex-outside-decoder-layers",
        with_method_args(trainable_params_regex=["lm_head.weight"]),
        FalconConfigError,
        ("trainable_params_regex", "lm_head.weight", "outside the decoder layers"),
    ),
    Bad(
        "regex-embedding-with-auto",
        with_method_args(layer="auto", trainable_params_regex=[r"model\.embed_tokens\..*"]),
        FalconConfigError,
        ("trainable_params_regex", "model.embed_tokens.weight", "outside the decoder layers"),
    ),
    Bad(
        "regex-above-l-star",
        with_method_args(layer=1, trainable_params_regex=[r"model\.layers\.3\.mlp\.down_proj\.weight"]),
        FalconConfigError,
        ("trainable_params_regex", "model.layers.3.mlp.down_proj.weight", "l*=1"),
    ),
    # ---- MI (Step 1) settings
    Bad(
        "mi-samples-too-few-for-pca-kde",
        with_method_args(mi={"samples": 4}),
        FalconConfigError,
        ("mi.samples", "4"),
    ),
    Bad(
        "mi-samples-string",
        with_method_args(mi={"samples": "many"}),
        FalconConfigError,
        ("mi.samples", "'many'"),
    ),
    Bad(
        "mi-pca-variance-above-one",
        with_method_args(mi={"pca_variance": 1.5}),
        FalconConfigError,
        ("mi.pca_variance", "1.5"),
    ),
    Bad(
        "mi-pca-variance-zero",
        with_method_args(mi={"pca_variance": 0}),
        FalconConfigError,
        ("mi.pca_variance", "0"),
    ),
    Bad(
        "mi-estimator-unknown",
        with_method_args(mi={"estimator": "knn"}),
        FalconConfigError,
        ("mi.estimator", "'knn'"),
    ),
    Bad(
        "mi-pooling-unknown",
        with_method_args(mi={"pooling": "max"}),
        FalconConfigError,
        ("mi.pooling", "'max'"),
    ),
    Bad("mi-eta-negative", with_method_args(mi={"eta": -1}), FalconConfigError, ("mi.eta", "-1")),
    Bad(
        "mi-batch-size-zero",
        with_method_args(mi={"batch_size": 0}),
        FalconConfigError,
        ("mi.batch_size", "0"),
    ),
    Bad("mi-unknown-key", with_method_args(mi={"sample": 100}), FalconConfigError, ("mi", "'sample'")),
    Bad("mi-not-a-mapping", with_method_args(mi="fast"), FalconConfigError, ("mi", "'fast'")),
    Bad(
        "auto-with-too-few-train-samples",
        lambda env: env.trainer(dataset=env.dataset(env.items("zq", 4), env.items("ab", 4)), layer="auto"),
        FalconConfigError,
        ("layer='auto'", "has 4"),
    ),
    # ---- Hydra configs (DictConfig / ListConfig values, as the host passes method_args)
    Bad(
        "hydra-weights-wrong-length",
        with_hydra_method_args({"layer": 2, "conflict_weights": [0.8]}),
        FalconConfigError,
        ("conflict_weights", "[0.8]"),
    ),
    Bad(
        "hydra-mi-estimator-unknown",
        with_hydra_method_args({"layer": "auto", "mi": {"estimator": "knn"}}),
        FalconConfigError,
        ("mi.estimator", "'knn'"),
    ),
    Bad(
        "hydra-layer-string",
        with_hydra_method_args({"layer": "last"}),
        FalconConfigError,
        ("layer", "'last'"),
    ),
    # ---- data
    Bad("forget-set-empty", lambda env: env.dataset(forget=[]), ValueError, ("forget set", "empty")),
    Bad("retain-set-empty", lambda env: env.dataset(retain=[]), ValueError, ("retain set", "empty")),
    Bad(
        "train-dataset-empty",
        lambda env: env.trainer(dataset=[]),
        FalconDataError,
        ("train_dataset", "len 0"),
    ),
    Bad(
        "train-item-not-forget-retain",
        lambda env: env.trainer(dataset=env.items("zq")),
        FalconDataError,
        ("train_dataset[0]", "no 'forget' part"),
    ),
    Bad(
        "sequence-all-padding",
        with_forget_item(attention_mask=[0] * 20, input_ids=[0] * 20, labels=[-100] * 20),
        FalconDataError,
        ("train_dataset[0]['forget'].attention_mask", "all 0"),
    ),
    Bad(
        "no-answer-tokens",
        with_forget_item(labels=[-100] * 20, input_ids=[5] * 20, attention_mask=[1] * 20),
        FalconDataError,
        ("train_dataset[0]['forget'].labels", "all -100"),
    ),
    Bad(
        "empty-sequence",
        with_forget_item(input_ids=[], attention_mask=[], labels=[]),
        FalconDataError,
        ("train_dataset[0]['forget'].input_ids", "[]"),
    ),
    Bad(
        "token-id-beyond-vocab",
        lambda env: env.trainer(dataset=env.dataset(env.items("zq", tokenizer=CharTokenizer(200)))),
        FalconDataError,
        ("train_dataset[0]['forget'].input_ids", "token id", "vocabulary 0..63"),
    ),
    Bad(
        "token-id-negative",
        with_forget_item(input_ids=[1, -5, 7], attention_mask=[1, 1, 1], labels=[-100, 7, 7]),
        FalconDataError,
        ("train_dataset[0]['forget'].input_ids", "token id -5"),
    ),
    Bad(
        "pad-id-beyond-vocab",
        lambda env: env.trainer(tokenizer=_Pad999Tokenizer()),
        FalconDataError,
        ("pad_token_id=999", "64 rows"),
    ),
    # ---- model
    Bad(
        "model-encoder-decoder",
        lambda env: env.trainer(model=_t5(), layer=0),
        ModelStructureError,
        ("T5ForConditionalGeneration", "is_encoder_decoder=True"),
    ),
    Bad(
        "model-encoder-only",
        lambda env: env.trainer(model=_bert(), layer=0),
        ModelStructureError,
        ("BertForMaskedLM", "can_generate() is False"),
    ),
    Bad(
        "model-without-layers",
        lambda env: env.trainer(model=_NoLayers(), layer=0),
        ModelStructureError,
        ("_NoLayers", "decoder layers"),
    ),
    # ---- CLI options and data files
    Bad(
        "cli-mi-samples-too-few",
        _cli(
            lambda tmp, data: [
                "mi",
                "--model",
                str(tmp),
                "--forget",
                str(data),
                "--retain",
                str(data),
                "--samples",
                "2",
                "-q",
            ]
        ),
        SystemExit,
        ("exit 2", "--samples", "got 2"),
    ),
    Bad(
        "cli-mi-data-file-missing",
        _cli(
            lambda tmp, data: [
                "mi",
                "--model",
                str(tmp),
                "--forget",
                str(tmp / "nope.jsonl"),
                "--retain",
                str(data),
                "-q",
            ]
        ),
        SystemExit,
        ("exit 2", "nope.jsonl"),
    ),
    Bad(
        "cli-mi-estimator-unknown",
        _cli(
            lambda tmp, data: [
                "mi",
                "--model",
                str(tmp),
                "--forget",
                str(data),
                "--retain",
                str(data),
                "--estimator",
                "knn",
                "-q",
            ]
        ),
        SystemExit,
        ("exit 2", "mi.estimator", "'knn'"),
    ),
    Bad(
        "data-file-record-without-fields",
        _malformed_data_file,
        ValueError,
        ("bad.jsonl", "'question' and 'answer'"),
    ),
]


def test_the_table_is_big_and_distinct() -> None:
    assert len(ROWS) >= 25
    assert len({row.id for row in ROWS}) == len(ROWS)


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_bad_input_is_rejected_early_with_a_clear_message(row: Bad, tmp_path: Path) -> None:
    env = Env(tmp_path)
    with pytest.raises(row.error) as caught:
        row.submit(env)
    message = str(caught.value)
    for needle in row.mentions:
        assert needle in message, f"{needle!r} missing from the message: {message}"
    assert env.forward_calls == [], "the model ran a forward pass before the bad input was rejected"


# ---------------------------------------------------------------------------------------------- NaN / inf
class _Poison(TrainerCallback):
    """After ``at`` optimizer steps, put a NaN/inf into a tensor the next step reads."""

    def __init__(self, trainer: FALCON, at: int, where: str, value: float) -> None:
        self.trainer, self.at, self.where, self.value = trainer, at, where, value

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001 (callback signature)
        if state.global_step == self.at:
            falcon_state = self.trainer.falcon_state
            assert falcon_state is not None
            if self.where == "frozen":
                next(iter(falcon_state.frozen.values()))[0, 0] = self.value
            else:  # a weight below the trainable layers: every activation above it is poisoned
                with torch.no_grad():
                    self.trainer.model.get_input_embeddings().weight[3:, 0] = self.value
        return control


@pytest.mark.parametrize(("where", "value"), [("frozen", float("nan")), ("embedding", float("inf"))])
def test_non_finite_loss_stops_before_the_optimizer_step_with_the_step_number(
    tmp_path: Path, where: str, value: float
) -> None:
    env = Env(tmp_path)
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"),
        per_device_train_batch_size=2,
        max_steps=6,
        learning_rate=1e-3,
        report_to=[],
        save_strategy="steps",
        save_steps=1,
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    trainer = FALCON(
        model=env.model(),
        train_dataset=env.dataset(),
        data_collator=ForgetRetainCollator(0),
        args=args,
        layer=2,
    )
    trainer.add_callback(_Poison(trainer, at=2, where=where, value=value))
    names = [
        "model.layers.0.mlp.down_proj.weight",
        "model.layers.1.mlp.down_proj.weight",
        "model.layers.2.mlp.down_proj.weight",
    ]
    with pytest.raises(NonFiniteLossError, match=re.escape("training step 3 (after 2 optimizer steps)")):
        trainer.train()
    assert trainer.state.global_step == 2
    params = dict(trainer.model.named_parameters())
    assert all(bool(torch.isfinite(params[n]).all()) for n in names), (
        "a non-finite update reached the weights"
    )
    checkpoints = sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-1", "checkpoint-2"]
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "run" / "checkpoint-2" / "model.safetensors"))
    assert all(bool(torch.isfinite(saved[n]).all()) for n in names)


# ---------------------------------------------------------------------------------------------- hygiene
ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "eval(": re.compile(r"(?<![.\w])eval\("),
    "exec(": re.compile(r"(?<![.\w])exec\("),
    "trust_remote_code=True": re.compile(r"trust_remote_code\s*=\s*True"),
    "torch.load(weights_only=False)": re.compile(r"weights_only\s*=\s*False"),
    "shell=True": re.compile(r"shell\s*=\s*True"),
    "os.system(": re.compile(r"os\.system\("),
}


def test_package_source_runs_no_config_strings_and_no_remote_code() -> None:
    files = sorted([*(ROOT / "falcon_plugin").rglob("*.py"), *(ROOT / "hydra_plugins").rglob("*.py")])
    assert len(files) > 10
    offenders = [
        f"{path.relative_to(ROOT)}:{number}: {what}: {line.strip()}"
        for path in files
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        for what, pattern in FORBIDDEN.items()
        if pattern.search(line)
    ]
    assert offenders == []
    yaml_loads = [p for p in files if "yaml.load(" in p.read_text(encoding="utf-8")]
    assert all("SafeLoader" in p.read_text(encoding="utf-8") for p in yaml_loads)


def test_a_run_writes_only_inside_its_output_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    env = Env(tmp_path)
    out = tmp_path / "out"
    args = TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=2,
        max_steps=2,
        report_to=[],
        save_strategy="steps",
        save_steps=2,
        use_cpu=True,
        disable_tqdm=True,
    )
    FALCON(
        model=env.model(),
        train_dataset=env.dataset(),
        data_collator=ForgetRetainCollator(0),
        args=args,
        layer="auto",
        mi={"samples": 8},
    ).train()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cwd", "out"]
    assert list(cwd.iterdir()) == []
    written = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert {"mi_report.json", "mi_report.png", "checkpoint-2/falcon_state.pt"} <= written
