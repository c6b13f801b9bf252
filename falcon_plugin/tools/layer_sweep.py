"""Layer sweep: FALCON at each candidate layer l* on a user's model and QA data, one budget.

The empirical check of Step 1 (issue 11): a criterion is only as good as the layer it picks, so this
runs FALCON standalone (:func:`falcon_plugin.tools.demo.methods.unlearn`, the trainer with
``layer: l`` and every other method_arg at its default) from the same model at each layer, and
measures the answer probability and ROUGE-L recall of the forget and retain QA pairs afterwards
(:func:`falcon_plugin.tools.attacks.metrics.evaluate_part`, the host's definitions). Both Step-1
criteria are scored first on the same model and data (:func:`falcon_plugin.report.run_mi_selection`)
and their picks are swept too, so each pick can be read off the curves.

Outputs in ``out`` (all written atomically, after every layer): ``layer_sweep.json`` (settings,
criteria, the model before unlearning, one entry per layer), ``layer_sweep.csv``, ``layer_sweep.png``
and the Step-1 report ``mi_report.json`` / ``mi_report.png``. A run resumes from ``layer_sweep.json``:
layers already there are skipped, provided the settings (data, budget, FALCON defaults) are the same.

Unlearning score of a layer (a summary for ranking, not a host metric):
``(1 - forget_prob / base_forget_prob) * (retain_prob / base_retain_prob)``: 1 when the forget answers
are gone and the retain answers kept, 0 when nothing was forgotten or nothing kept.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from falcon_plugin.atomic import atomic_write, atomic_write_json, atomic_write_text
from falcon_plugin.config import FalconConfig, MIConfig, check_mi_sample_count

from .common.errors import InputError
from .common.qa_files import QAPair, load_qa_file

logger = logging.getLogger(__name__)

RESULT_JSON = "layer_sweep.json"
RESULT_CSV = "layer_sweep.csv"
RESULT_PNG = "layer_sweep.png"
VERSION = 1
SIDES = ("forget", "retain")
METRICS = ("prob", "rougeL_recall")


@dataclass(frozen=True)
class SweepSettings:
    """Everything that decides a layer's result; a resumed run must have the same."""

    steps: int
    learning_rate: float
    batch_size: int
    seed: int = 0
    max_length: int = 256
    template: str = "auto"
    eval_samples: int = 200
    """QA pairs per side measured after unlearning (a seeded sample when a file has more)."""
    mi: MIConfig = field(default_factory=MIConfig)


@dataclass
class SweepInputs:
    """Checked inputs: the files read, the layers asked for, and the model's decoder-layer count."""

    model: Path
    forget: list[QAPair]
    retain: list[QAPair]
    layers: list[int]
    num_layers: int | None
    fingerprint: dict[str, Any]


# ---------------------------------------------------------------------------------------------- checks
def parse_layers(text: str) -> list[int]:
    """``"1,3,5"`` -> [1, 3, 5] (sorted, unique); :class:`InputError` naming the bad entry."""
    layers = set()
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit():
            raise InputError(f"--layers: {part!r} is not a layer index (expected e.g. 1,3,5)")
        layers.add(int(part))
    return sorted(layers)


def model_layer_count(model: Path) -> int | None:
    """Decoder layers of a local HF model folder from its ``config.json`` (no weights read); None when
    the config does not say. :class:`InputError` when the folder or its config is missing or unreadable."""
    if not model.exists():
        raise InputError(f"--model not found: {model}")
    config = model / "config.json"
    if not config.is_file():
        raise InputError(f"--model must be a Hugging Face model folder with a config.json: {model}")
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"cannot read {config}: {err}") from None
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        value = data.get(key) if isinstance(data, dict) else None
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def candidate_layers(layers: Sequence[int] | None, every: int | None, num_layers: int | None) -> list[int]:
    """The layers asked for: ``layers`` as given, or every ``every``-th from 0 (default every 2nd)."""
    if layers:
        if num_layers is not None and max(layers) >= num_layers:
            raise InputError(
                f"--layers: layer {max(layers)} does not exist; the model has {num_layers} decoder layers "
                f"(valid: 0..{num_layers - 1})"
            )
        return sorted(set(layers))
    if num_layers is None:
        raise InputError("--every needs the model's layer count (config.json has none): give --layers")
    return list(range(0, num_layers, every or 2))


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fingerprint(model: Path, forget: Path, retain: Path, settings: SweepSettings) -> dict[str, Any]:
    """What a stored result depends on: the files' contents, the budget, FALCON's defaults."""
    falcon = FalconConfig().to_dict()
    falcon.pop("layer")
    weights = sorted(p for p in model.iterdir() if p.suffix in (".safetensors", ".bin") and p.is_file())
    prints = {
        "version": VERSION,
        "model": str(model.resolve()),
        "model_files": {p.name: p.stat().st_size for p in weights},
        "forget": _file_digest(forget),
        "retain": _file_digest(retain),
        "settings": asdict(settings),
        "falcon_defaults": falcon,
    }
    return json.loads(json.dumps(prints))  # as it reads back from the JSON file (lists, not tuples)


def check_inputs(
    model: Path,
    forget: Path,
    retain: Path,
    layers: Sequence[int] | None,
    every: int | None,
    settings: SweepSettings,
    out: Path,
) -> SweepInputs:
    """Every check that needs no model weights: folder, data files, sample counts, layers, resume state."""
    num_layers = model_layer_count(model)
    forget_pairs, retain_pairs = load_qa_file(forget), load_qa_file(retain)
    mi_count = min(settings.mi.samples, len(forget_pairs), len(retain_pairs))
    check_mi_sample_count(len(forget_pairs), f"--forget {forget}", settings.mi)
    check_mi_sample_count(len(retain_pairs), f"--retain {retain}", settings.mi)
    check_mi_sample_count(mi_count, "Step 1's sample per set (--samples)", settings.mi)
    if num_layers is not None and settings.mi.min_layer >= num_layers:
        raise InputError(
            f"--min-layer {settings.mi.min_layer}: the model has {num_layers} decoder layers "
            f"(valid: 0..{num_layers - 1})"
        )
    chosen = candidate_layers(layers, every, num_layers)
    prints = fingerprint(model, forget, retain, settings)
    load_state(out, prints)  # a result of other settings in --out fails here, before the model loads
    return SweepInputs(model, forget_pairs, retain_pairs, chosen, num_layers, prints)


# ---------------------------------------------------------------------------------------------- state
def load_state(out: Path, prints: dict[str, Any]) -> dict[str, Any]:
    """The stored sweep in ``out`` (empty when none); :class:`InputError` when it has other settings."""
    path = out / RESULT_JSON
    if not path.exists():
        return {}
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"--out {out}: cannot read {path} to resume ({err}); use another --out") from None
    stored = state.get("fingerprint") if isinstance(state, dict) else None
    if stored != prints:
        stored = stored if isinstance(stored, dict) else {}
        differ = sorted(k for k in set(prints) | set(stored) if prints.get(k) != stored.get(k))
        if "settings" in differ:
            new, old = prints["settings"], stored.get("settings") or {}
            differ = [f"settings.{k}" for k in sorted(set(new) | set(old)) if new.get(k) != old.get(k)]
        raise InputError(
            f"--out {out} holds a layer sweep with other inputs or settings ({', '.join(differ)} differ); "
            "use another --out, or delete it to start again"
        )
    return state


def unlearning_score(entry: dict[str, Any], base: dict[str, Any]) -> float | None:
    """(1 - forget_prob / base forget_prob) * (retain_prob / base retain_prob); None without a base."""
    bf, br = base["forget"]["prob"], base["retain"]["prob"]
    if not (bf > 0 and br > 0):
        return None
    return (1.0 - entry["forget"]["prob"] / bf) * (entry["retain"]["prob"] / br)


def ranked(state: dict[str, Any]) -> list[dict[str, Any]]:
    """The swept layers, best unlearning score first (rank 1 = best), each with its score and rank."""
    rows = [dict(e, score=unlearning_score(e, state["base"])) for e in state["layers"]]
    order = sorted(rows, key=lambda r: (-(r["score"] if r["score"] is not None else -math.inf), r["layer"]))
    for rank, row in enumerate(order, start=1):
        row["rank"] = rank
    return sorted(order, key=lambda r: r["layer"])


# ---------------------------------------------------------------------------------------------- outputs
def table_rows(state: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """Columns and rows of the per-layer table (the model before unlearning first)."""
    picks = state["criteria"]["picks"]
    columns = ["layer", *(f"{s}_{m}" for s in SIDES for m in METRICS), "score", "rank", "picked by"]
    base = state["base"]
    rows: list[list[Any]] = [["before", *(base[s][m] for s in SIDES for m in METRICS), None, None, ""]]
    for row in ranked(state):
        by = ", ".join(n for n, layer in picks.items() if layer == row["layer"])
        rows.append(
            [row["layer"], *(row[s][m] for s in SIDES for m in METRICS), row["score"], row["rank"], by]
        )
    return columns, rows


def write_outputs(out: Path, state: dict[str, Any]) -> None:
    """``layer_sweep.json``, ``.csv`` and ``.png``, each atomically."""
    from .common.tables import csv_text

    atomic_write_json(out / RESULT_JSON, state)
    columns, rows = table_rows(state)
    atomic_write_text(out / RESULT_CSV, csv_text(columns, rows))
    plot(out / RESULT_PNG, state)


def plot(path: Path, state: dict[str, Any]) -> Path:
    """Forget and retain answer probability (top) and ROUGE-L recall (bottom) per layer, each
    criterion's pick a vertical line, the model before unlearning dotted."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    entries = sorted(state["layers"], key=lambda e: e["layer"])
    layers = [e["layer"] for e in entries]
    fig, axes = plt.subplots(2, 1, figsize=(8, 6.5), sharex=True)
    colours = {"forget": "tab:red", "retain": "tab:blue"}
    for ax, metric, label in zip(axes, METRICS, ("answer probability", "ROUGE-L recall"), strict=True):
        for side in SIDES:
            ax.plot(layers, [e[side][metric] for e in entries], marker="o", color=colours[side], label=side)
            ax.axhline(state["base"][side][metric], color=colours[side], ls=":", lw=1, label=f"{side} before")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    styles = {"separability": ("tab:green", "-"), "paper": ("tab:orange", "--")}
    default = state["criteria"]["default"]
    for name, layer in state["criteria"]["picks"].items():
        if layer is None:
            continue
        colour, style = styles.get(name, ("black", "-."))
        for ax in axes:
            ax.axvline(
                layer,
                color=colour,
                ls=style,
                lw=2,
                label=f"{name} pick ({layer})" + (" (default)" if name == default else ""),
            )
    axes[0].legend(fontsize=8, loc="best")
    axes[-1].set_xlabel("unlearning layer l*")
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    settings = state["fingerprint"]["settings"]
    fig.suptitle(
        f"FALCON at each layer: {settings['steps']} steps, lr {settings['learning_rate']}, "
        f"batch {settings['batch_size']}"
    )
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------- the run
def _sample(pairs: Sequence[QAPair], count: int, seed: int) -> list[QAPair]:
    pairs = list(pairs)
    return random.Random(seed).sample(pairs, count) if len(pairs) > count else pairs


def run_layer_sweep(
    inputs: SweepInputs, settings: SweepSettings, out: Path, progress: bool = True
) -> dict[str, Any]:
    """Criteria, the model before unlearning, then FALCON at each layer not yet in ``out``.

    Returns the state.
    """
    from falcon_plugin.activations import find_decoder_layers
    from falcon_plugin.report import DEFAULT_CRITERION, run_mi_selection

    from .attacks.data import Part, encode_qa, resolve_template
    from .attacks.metrics import evaluate_part
    from .common.hf import load_causal_lm
    from .demo.methods import unlearn
    from .demo.presets import MethodSpec

    state = load_state(out, inputs.fingerprint) or {
        "fingerprint": inputs.fingerprint,
        "model": str(inputs.model),
        "criteria": None,
        "base": None,
        "layers": [],
    }
    tokenizer, model = load_causal_lm(inputs.model)
    num_layers = len(find_decoder_layers(model)[1])
    if max(inputs.layers) >= num_layers:
        raise InputError(f"--layers: layer {max(inputs.layers)} does not exist; the model has {num_layers}")
    template = resolve_template(tokenizer, settings.template)

    def encode(pairs: Sequence[QAPair]) -> list[Any]:
        return [encode_qa(tokenizer, p, template, settings.max_length) for p in pairs]

    forget_train, retain_train = encode(inputs.forget), encode(inputs.retain)
    evaluation = {
        side: Part("qa", tuple(_sample(pairs, settings.eval_samples, settings.seed + i)), side)
        for i, (side, pairs) in enumerate((("forget", inputs.forget), ("retain", inputs.retain)))
    }

    def measure(m: Any) -> dict[str, dict[str, float]]:
        return {
            side: evaluate_part(
                m, tokenizer, part, template, settings.max_length, batch_size=settings.batch_size
            )
            for side, part in evaluation.items()
        }

    if state["criteria"] is None:
        count = min(settings.mi.samples, len(inputs.forget), len(inputs.retain))
        forget_mi = encode(_sample(inputs.forget, count, settings.seed + 10))
        retain_mi = encode(_sample(inputs.retain, count, settings.seed + 11))
        report = run_mi_selection(
            model, [forget_mi], retain_mi, settings.mi, pad_token_id=tokenizer.pad_token_id, progress=progress
        )
        report.save(out)
        state["criteria"] = {
            "default": DEFAULT_CRITERION,
            "used": report.criterion,
            "picks": {n: r.chosen_layer for n, r in report.criteria.items()},
            "scores": {
                n: {"layers": [s.layer for s in r.scores], "scores": [s.score for s in r.scores]}
                for n, r in report.criteria.items()
            },
        }
        atomic_write_json(out / RESULT_JSON, state)
    if state["base"] is None:
        state["base"] = measure(model)
        atomic_write_json(out / RESULT_JSON, state)
    picks = [layer for layer in state["criteria"]["picks"].values() if layer is not None]
    done = {e["layer"] for e in state["layers"]}
    todo = sorted(set(inputs.layers) | set(picks))
    skipped = sorted(done & set(todo))
    if skipped:
        logger.info("layer sweep: layers %s already in %s, skipped", skipped, out / RESULT_JSON)
    for layer in (x for x in todo if x not in done):
        start = time.perf_counter()
        outcome = unlearn(
            f"FALCON l*={layer}",
            MethodSpec("FALCON", settings.learning_rate, {"layer": layer}),
            model,
            tokenizer,
            forget_train,
            retain_train,
            settings.steps,
            settings.batch_size,
            settings.seed,
            progress=progress,
        )
        entry = {"layer": layer, **measure(outcome.model), "seconds": time.perf_counter() - start}
        del outcome
        state["layers"] = sorted([*state["layers"], entry], key=lambda e: e["layer"])
        write_outputs(out, state)
        logger.info(
            "layer %d: forget prob %.4f, retain prob %.4f (%.1fs)",
            layer,
            entry["forget"]["prob"],
            entry["retain"]["prob"],
            entry["seconds"],
        )
    if state["layers"]:
        write_outputs(out, state)
    return state


__all__ = [
    "RESULT_CSV",
    "RESULT_JSON",
    "RESULT_PNG",
    "SweepInputs",
    "SweepSettings",
    "candidate_layers",
    "check_inputs",
    "fingerprint",
    "load_state",
    "model_layer_count",
    "parse_layers",
    "ranked",
    "run_layer_sweep",
    "table_rows",
    "unlearning_score",
    "write_outputs",
]
