"""``falcon-unlearn demo``: facts -> tokenizer -> tiny Llama -> fine-tune -> unlearn -> side-by-side table.

Offline end to end: the facts are generated, the tokenizer and the model are built locally (or
loaded from ``--model``/``--data``), and every output is written atomically into ``--out``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from falcon_plugin.activations import find_decoder_layers
from falcon_plugin.atomic import atomic_write_json, atomic_write_text
from falcon_plugin.data import IGNORE_INDEX, tokenize_qa
from falcon_plugin.tools.common.benchmarks import DEMO_RESULTS_FILE
from falcon_plugin.tools.common.errors import InputError
from falcon_plugin.tools.common.hf import load_causal_lm
from falcon_plugin.tools.common.qa_files import QAPair, load_split_data, write_qa_jsonl
from falcon_plugin.tools.common.tables import csv_text, markdown_table

from .facts import generate_facts, split_by_entity
from .finetune import finetune
from .methods import METHODS, unlearn
from .metrics import QAScores, evaluate_qa
from .model import TinyModelSpec, build_tiny_llama
from .plots import forget_retain_scatter
from .presets import PRESETS, DemoPreset, build_methods
from .reuse import RECORD_FILE, finetune_settings, load_weights, record, reusable
from .tokenizer import build_word_tokenizer

logger = logging.getLogger(__name__)
REFERENCE = "fine-tuned (reference)"
TEMPLATE_WORDS = ("Question", "Answer")
COLUMNS = (
    "method",
    "forget_prob",
    "forget_rougeL",
    "retain_prob",
    "retain_rougeL",
    "seconds",
    "layer",
    "steps",
    "lr",
)
HEADERS = (
    "method",
    "forget prob ↓",
    "forget ROUGE-L ↓",
    "retain prob ↑",
    "retain ROUGE-L ↑",
    "time (s)",
    "layer",
    "steps",
    "lr",
)


@dataclass(frozen=True)
class DemoOptions:
    """What the ``demo`` subcommand was asked to do."""

    out: Path
    size: str = "small"
    seed: int = 0
    model_path: Path | None = None
    data_path: Path | None = None
    forget_data: Path | None = None
    retain_data: Path | None = None
    methods: tuple[str, ...] = METHODS
    steps: int | None = None
    finetune: str = "auto"
    progress: bool = True
    max_length: int | None = None
    """Tokens per QA pair (None: the size preset's)."""
    threads: int | None = None
    """torch CPU threads; None: 1 for the built-in tiny model unless OMP_NUM_THREADS is set, else
    torch's default (a user's ``--model``)."""


@dataclass
class DemoResult:
    """The table rows (dicts with :data:`COLUMNS`) and run metadata."""

    rows: list[dict[str, Any]]
    meta: dict[str, Any] = field(default_factory=dict)

    def markdown(self) -> str:
        """The side-by-side table as Markdown."""
        return markdown_table(HEADERS, [[row[c] for c in COLUMNS] for row in self.rows])


@dataclass
class _Setup:
    tokenizer: Any
    model: torch.nn.Module
    forget_pairs: list[QAPair]
    retain_pairs: list[QAPair]
    forget: list[dict[str, torch.Tensor]]
    retain: list[dict[str, torch.Tensor]]
    built_here: bool


def _load_pairs(options: DemoOptions, preset: DemoPreset) -> tuple[list[QAPair], list[QAPair]]:
    if options.data_path or options.forget_data or options.retain_data:
        return load_split_data(options.data_path, options.forget_data, options.retain_data)
    facts = generate_facts(preset.n_entities, preset.n_attributes, seed=options.seed)
    forget, retain = split_by_entity(facts, preset.forget_fraction, seed=options.seed)
    return (
        [QAPair(f.question, f.answer, "forget") for f in forget],
        [QAPair(f.question, f.answer, "retain") for f in retain],
    )


def _model_spec(preset: DemoPreset) -> TinyModelSpec:
    """The preset's tiny model, with room for ``max_length`` positions."""
    spec = preset.model
    return replace(spec, max_positions=max(spec.max_positions, preset.max_length))


def _load_model(
    options: DemoOptions, preset: DemoPreset, pairs: list[QAPair]
) -> tuple[Any, torch.nn.Module, bool]:
    if options.model_path is None:
        tokenizer = build_word_tokenizer([p.question + " " + p.answer for p in pairs], TEMPLATE_WORDS)
        return tokenizer, build_tiny_llama(tokenizer, _model_spec(preset), seed=options.seed), True
    tokenizer, model = load_causal_lm(options.model_path)
    return tokenizer, model, False


def _prepare(options: DemoOptions, preset: DemoPreset) -> _Setup:
    forget_pairs, retain_pairs = _load_pairs(options, preset)
    tokenizer, model, built = _load_model(options, preset, forget_pairs + retain_pairs)
    if torch.cuda.is_available():
        model.to("cuda")

    def encode(pairs: list[QAPair]) -> list[dict[str, torch.Tensor]]:
        return [tokenize_qa(tokenizer, p.question, p.answer, preset.max_length) for p in pairs]

    forget, retain = encode(forget_pairs), encode(retain_pairs)
    cut = [e for e in forget + retain if not bool((e["labels"] != IGNORE_INDEX).any())]
    if cut:
        raise InputError(
            f"--max-length {preset.max_length} leaves no answer token in {len(cut)} of "
            f"{len(forget) + len(retain)} QA pairs (prompt and answer are cut at that many tokens); raise it"
        )
    if built and any(tokenizer.unk_token_id in e["input_ids"] for e in forget + retain):
        raise RuntimeError(
            "the demo's word tokenizer misses words of falcon_plugin.data.tokenize_qa's prompt "
            "template; add them to falcon_plugin.tools.demo.runner.TEMPLATE_WORDS"
        )
    return _Setup(tokenizer, model, forget_pairs, retain_pairs, forget, retain, built)


def _scores_row(method: str, forget: QAScores, retain: QAScores, **extra: Any) -> dict[str, Any]:
    row = {
        "method": method,
        "forget_prob": forget.probability,
        "forget_rougeL": forget.rouge_l_recall,
        "retain_prob": retain.probability,
        "retain_rougeL": retain.rouge_l_recall,
        "seconds": None,
        "layer": None,
        "steps": None,
        "lr": None,
    }
    row.update(extra)
    return row


def _evaluate(setup: _Setup, model: torch.nn.Module, method: str, **extra: Any) -> dict[str, Any]:
    forget = evaluate_qa(model, setup.tokenizer, setup.forget, [p.answer for p in setup.forget_pairs])
    retain = evaluate_qa(model, setup.tokenizer, setup.retain, [p.answer for p in setup.retain_pairs])
    return _scores_row(method, forget, retain, **extra)


def _save_model(
    model: torch.nn.Module, tokenizer: Any, target: Path, settings: dict[str, Any] | None = None
) -> None:
    """save_pretrained into a temporary folder beside ``target`` (with ``settings`` as the reuse record,
    :mod:`.reuse`), then swap it in: the record exists only in a complete folder."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        if settings is not None:
            atomic_write_json(tmp / RECORD_FILE, settings)
        _chmod_umask(tmp)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _chmod_umask(folder: Path) -> None:
    """mkdtemp makes 0700 folders: give the saved model the permissions a plain mkdir/open would."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


STALE_OUTPUTS = (
    "results.md",
    "results.csv",
    DEMO_RESULTS_FILE,
    "mi_report.json",
    "mi_report.png",
    "forget_vs_retain.png",
)
"""A run's own outputs, removed when it starts so that a reused folder never shows an earlier run's."""


@contextlib.contextmanager
def _torch_threads(options: DemoOptions) -> Iterator[int]:
    """Set torch's CPU threads for the run (see :attr:`DemoOptions.threads`); restored afterwards."""
    threads = options.threads
    if threads is None and options.model_path is None and "OMP_NUM_THREADS" not in os.environ:
        threads = 1  # tiny models: more threads only add synchronisation, and suffer most from a busy CPU
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


def _remove_stale(out: Path) -> None:
    for name in STALE_OUTPUTS:
        path = out / name
        if path.is_file():
            path.unlink()
            logger.info("demo: removed %s of an earlier run", path)


def run_demo(options: DemoOptions) -> DemoResult:
    """Run the whole demo and write its outputs into ``options.out``; returns the table rows."""
    if options.size not in PRESETS:
        raise InputError(f"unknown --size {options.size!r}; expected one of {', '.join(PRESETS)}")
    unknown = [m for m in options.methods if m not in METHODS]
    if unknown:
        raise InputError(f"unknown method {unknown[0]!r}; expected some of {', '.join(METHODS)}")
    preset = PRESETS[options.size]
    if options.steps is not None:
        preset = preset.with_steps(options.steps)
    if options.max_length is not None:
        preset = replace(preset, max_length=options.max_length)
    out = options.out
    out.mkdir(parents=True, exist_ok=True)
    with _torch_threads(options) as threads:
        logger.debug("demo: %d torch thread(s)", threads)
        return _run(options, preset, out)


def _run(options: DemoOptions, preset: DemoPreset, out: Path) -> DemoResult:
    torch.manual_seed(options.seed)
    started = time.perf_counter()

    setup = _prepare(options, preset)  # the inputs are read and checked here
    _remove_stale(out)
    logger.info("demo: %d forget and %d retain QA pairs", len(setup.forget), len(setup.retain))
    facts = write_qa_jsonl(setup.forget_pairs + setup.retain_pairs)
    atomic_write_text(out / "facts.jsonl", facts)
    own_data = bool(options.data_path or options.forget_data)
    # auto: a model built here knows nothing, and no user model knows the generated facts
    do_finetune = options.finetune == "yes" or (
        options.finetune == "auto" and (setup.built_here or not own_data)
    )
    finetune_seconds, reused = None, False
    if do_finetune:
        settings = finetune_settings(
            options.seed, facts, _model_spec(preset), options.model_path, preset.finetune, preset.max_length
        )
        saved = reusable(out / "finetuned", settings)
        if saved is not None:
            load_weights(setup.model, out / "finetuned")
            finetune_seconds, reused = saved.get("seconds"), True
            logger.info("demo: reusing %s (fine-tuned with the same settings)", out / "finetuned")
        else:
            t0 = time.perf_counter()
            finetune(
                setup.model,
                setup.forget + setup.retain,
                setup.tokenizer.pad_token_id,
                preset.finetune,
                seed=options.seed,
                progress=options.progress,
            )
            finetune_seconds = time.perf_counter() - t0
            _save_model(setup.model, setup.tokenizer, out / "finetuned", record(settings, finetune_seconds))
    setup.model.eval()

    rows = [_evaluate(setup, setup.model, REFERENCE, seconds=finetune_seconds)]
    layers_path, layers = find_decoder_layers(setup.model)
    methods = build_methods(preset.settings, len(layers), layers_path)
    mi_layer = None
    for method in options.methods:
        spec = methods[method]
        outcome = unlearn(
            method,
            spec,
            setup.model,
            setup.tokenizer,
            setup.forget,
            setup.retain,
            preset.unlearn_steps,
            preset.batch_size,
            options.seed,
            progress=options.progress,
        )
        if outcome.mi_report is not None:
            from falcon_plugin.report import MIReport

            MIReport.from_dict(outcome.mi_report).save(out)
            mi_layer = outcome.layer
        rows.append(
            _evaluate(
                setup,
                outcome.model,
                method,
                seconds=outcome.seconds,
                layer=outcome.layer,
                steps=preset.unlearn_steps,
                lr=spec.learning_rate,
            )
        )
        del outcome

    result = DemoResult(
        rows,
        meta={
            "size": options.size,
            "seed": options.seed,
            "n_forget": len(setup.forget),
            "n_retain": len(setup.retain),
            "model": str(options.model_path)
            if options.model_path
            else f"tiny Llama ({preset.model.num_layers} layers, hidden {preset.model.hidden_size})",
            "model_spec": None if options.model_path else asdict(_model_spec(preset)),
            "finetune_seconds": finetune_seconds,
            "finetune_reused": reused,
            "max_length": preset.max_length,
            "torch_threads": torch.get_num_threads(),
            "unlearn_steps": preset.unlearn_steps,
            "batch_size": preset.batch_size,
            "total_seconds": time.perf_counter() - started,
            "mi_chosen_layer": mi_layer,
            "method_args": {m: methods[m].method_args for m in options.methods},
        },
    )
    write_outputs(result, out)
    return result


def write_outputs(result: DemoResult, out: Path) -> None:
    """results.md / results.csv / results.json and the forget-vs-retain scatter, all atomic."""
    atomic_write_text(out / "results.md", result.markdown())
    atomic_write_text(out / "results.csv", csv_text(COLUMNS, [[r[c] for c in COLUMNS] for r in result.rows]))
    atomic_write_json(out / DEMO_RESULTS_FILE, {"rows": result.rows, "meta": result.meta})
    forget_retain_scatter(result.rows, out / "forget_vs_retain.png", REFERENCE)
