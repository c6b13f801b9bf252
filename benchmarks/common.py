"""Shared helpers for the FALCON benchmarks: model and data loading, timing, peak memory, reporting.

Nothing here depends on the step being measured; :mod:`benchmarks.step` builds the variants on top.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

logger = logging.getLogger("benchmarks")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FALCON_BENCH_SHARED", REPO_ROOT.parent / "shared"))
SMOLLM_DIR = SHARED / "models" / "smollm2-135m-instruct-gguf"
SMOLLM_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TOFU_DIR = SHARED / "data" / "tofu"
WIKITEXT_FILE = SHARED / "data" / "wikitext2" / "wiki.test.raw"

# SmolLM2-135M-Instruct's shape (the GGUF's config), used for ``--model random``.
SMOLLM_SHAPE: dict[str, Any] = {
    "vocab_size": 49152,
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": True,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 2,
}

Example = dict[str, torch.Tensor]


# ---------------------------------------------------------------------------------------------- model
@dataclass
class LoadedModel:
    """A causal LM ready for benchmarking, its tokenizer (None: random ids) and a description."""

    model: nn.Module
    tokenizer: Any
    info: dict[str, Any]


def _clear_gguf_quantizer(model: nn.Module) -> None:
    """Drop the GGUF 'quantizer' flag (the tensors are plain de-quantised fp32; see PROVENANCE.md)."""
    model.hf_quantizer = None  # type: ignore[assignment]
    model.is_quantized = False  # type: ignore[assignment]
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "quantization_config"):
        with contextlib.suppress(AttributeError):
            del config.quantization_config


def _load_tokenizer(folder: Path) -> Any:
    if not (folder / "tokenizer.json").is_file() and not (folder / "tokenizer_config.json").is_file():
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as err:  # a folder without a usable tokenizer: fall back to random ids
        logger.warning("could not load a tokenizer from %s (%s); using random token ids", folder, err)
        return None


def random_model(layers: int | None = None, hidden: int | None = None, seed: int = 0) -> nn.Module:
    """A randomly initialised Llama with SmolLM2-135M's shape (or a smaller one for smoke tests)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = dict(SMOLLM_SHAPE)
    if layers is not None:
        shape["num_hidden_layers"] = layers
    if hidden is not None and hidden != shape["hidden_size"]:
        if hidden % 4:
            raise ValueError(f"--hidden must be a multiple of 4, got {hidden}")
        shape.update(hidden_size=hidden, intermediate_size=(hidden * 8) // 3, num_attention_heads=4,
                     num_key_value_heads=2, head_dim=hidden // 4)
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**shape))


def load_model(spec: str, layers: int | None = None, hidden: int | None = None,
               dtype: torch.dtype = torch.float32, device: str = "cpu", seed: int = 0) -> LoadedModel:
    """Load the benchmark model.

    Args:
        spec: ``auto`` (SmolLM2-135M-Instruct from the shared folder if present, else ``random``),
            ``random`` (random-init Llama of the same shape) or a folder (a GGUF file in it is loaded
            with ``gguf_file``, otherwise a plain ``from_pretrained`` folder).
        layers, hidden: shape overrides, only for ``random`` (smoke tests).
    """
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if spec == "auto":
        spec = str(SMOLLM_DIR) if (SMOLLM_DIR / SMOLLM_GGUF).is_file() else "random"
        logger.info("--model auto -> %s", spec)
    start = time.perf_counter()
    if spec == "random":
        model = random_model(layers, hidden, seed)
        tokenizer = _load_tokenizer(SMOLLM_DIR) if SMOLLM_DIR.is_dir() else None
        if tokenizer is not None and len(tokenizer) > model.config.vocab_size:
            tokenizer = None
        info: dict[str, Any] = {"source": "random", "path": None}
    else:
        if layers is not None or hidden is not None:
            raise ValueError("--layers/--hidden only apply to --model random")
        folder = Path(spec)
        if not folder.is_dir():
            raise FileNotFoundError(f"--model {spec!r}: not 'auto', 'random' or an existing folder")
        ggufs = sorted(folder.glob("*.gguf"))
        if ggufs:
            model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=ggufs[0].name, dtype=torch.float32)
            _clear_gguf_quantizer(model)
            info = {"source": "gguf", "path": str(folder / ggufs[0].name)}
        else:
            model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
            info = {"source": "pretrained", "path": str(folder)}
        tokenizer = _load_tokenizer(folder)
    model = model.to(device=device, dtype=dtype).eval()
    config = model.config
    info.update(
        architecture=type(model).__name__,
        layers=int(config.num_hidden_layers),
        hidden=int(config.hidden_size),
        vocab=int(config.vocab_size),
        parameters=sum(p.numel() for p in model.parameters()),
        attn_implementation=getattr(config, "_attn_implementation", None),
        load_s=round(time.perf_counter() - start, 3),
    )
    return LoadedModel(model, tokenizer, info)


# ---------------------------------------------------------------------------------------------- data
@dataclass
class BenchData:
    """Forget/retain step batches (B, T) and MI examples (one dict per sample)."""

    forget: Example
    retain: Example
    mi_forget: list[Example]
    mi_retain: list[Example]
    pad_token_id: int
    info: dict[str, Any] = field(default_factory=dict)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _full_row(ids: Sequence[int]) -> Example:
    tensor = torch.tensor(list(ids), dtype=torch.long)
    return {"input_ids": tensor, "attention_mask": torch.ones_like(tensor), "labels": tensor.clone()}


def _pack(tokenizer: Any, texts: Iterator[str], rows: int, seq_len: int) -> Example:
    """Concatenate tokenised texts (EOS between) and cut ``rows`` rows of exactly ``seq_len`` tokens."""
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    need = rows * seq_len
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        ids.append(eos)
        if len(ids) >= need:
            break
    if len(ids) < need:
        raise ValueError(f"not enough text for {rows} x {seq_len} tokens (got {len(ids)})")
    batch = torch.tensor(ids[:need], dtype=torch.long).view(rows, seq_len)
    return {"input_ids": batch, "attention_mask": torch.ones_like(batch), "labels": batch.clone()}


def _random_batch(rows: int, seq_len: int, vocab: int, generator: torch.Generator) -> Example:
    batch = torch.randint(3, vocab, (rows, seq_len), generator=generator)
    return {"input_ids": batch, "attention_mask": torch.ones_like(batch), "labels": batch.clone()}


def load_data(tokenizer: Any, vocab: int, batch: int, seq_len: int, mi_samples: int, seed: int = 0,
              mi_max_len: int = 256) -> BenchData:
    """Real text when possible: TOFU forget10/retain90, else WikiText-2, else random token ids.

    Step batches are packed to exactly ``seq_len`` tokens with every label valid; MI samples are
    one question/answer pair each (TOFU: ``falcon_plugin.data.tokenize_qa``), one line (WikiText) or
    ``min(mi_max_len, 64)`` random ids, truncated to ``mi_max_len`` tokens (independent of ``seq_len``:
    MI pools the answer positions, which a short truncation would cut off).
    """
    from falcon_plugin.data import tokenize_qa, tokenize_text

    generator = torch.Generator().manual_seed(seed)
    pad = 0
    if tokenizer is not None:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    forget_file, retain_file = TOFU_DIR / "forget10.json", TOFU_DIR / "retain90.json"
    if tokenizer is not None and forget_file.is_file() and retain_file.is_file():
        forget_items, retain_items = _read_jsonl(forget_file), _read_jsonl(retain_file)

        def qa_text(items: list[dict[str, Any]]) -> Iterator[str]:
            return (f"Question: {d['question']}\nAnswer: {d['answer']}" for d in items)

        return BenchData(
            forget=_pack(tokenizer, qa_text(forget_items), batch, seq_len),
            retain=_pack(tokenizer, qa_text(retain_items), batch, seq_len),
            mi_forget=[tokenize_qa(tokenizer, d["question"], d["answer"], mi_max_len) for d in forget_items[:mi_samples]],
            mi_retain=[tokenize_qa(tokenizer, d["question"], d["answer"], mi_max_len) for d in retain_items[:mi_samples]],
            pad_token_id=pad,
            info={"source": "tofu", "forget": str(forget_file), "retain": str(retain_file)},
        )
    if tokenizer is not None and WIKITEXT_FILE.is_file():
        lines = [ln.strip() for ln in WIKITEXT_FILE.read_text(encoding="utf-8").splitlines()]
        lines = [ln for ln in lines if len(ln) > 80 and not ln.startswith("=")]
        half = len(lines) // 2
        return BenchData(
            forget=_pack(tokenizer, iter(lines[:half]), batch, seq_len),
            retain=_pack(tokenizer, iter(lines[half:]), batch, seq_len),
            mi_forget=[tokenize_text(tokenizer, ln, mi_max_len) for ln in lines[:mi_samples]],
            mi_retain=[tokenize_text(tokenizer, ln, mi_max_len) for ln in lines[half : half + mi_samples]],
            pad_token_id=pad,
            info={"source": "wikitext2", "file": str(WIKITEXT_FILE)},
        )
    mi_len = min(mi_max_len, 64)
    return BenchData(
        forget=_random_batch(batch, seq_len, vocab, generator),
        retain=_random_batch(batch, seq_len, vocab, generator),
        mi_forget=[_full_row(torch.randint(3, vocab, (mi_len,), generator=generator).tolist()) for _ in range(mi_samples)],
        mi_retain=[_full_row(torch.randint(3, vocab, (mi_len,), generator=generator).tolist()) for _ in range(mi_samples)],
        pad_token_id=pad,
        info={"source": "random-ids"},
    )


def split_rows(batch: Example) -> list[Example]:
    """A (B, T) batch as B single examples (for a ``ForgetRetainDataset``)."""
    rows = batch["input_ids"].shape[0]
    return [{k: v[i] for k, v in batch.items()} for i in range(rows)]


def to_device(batch: Example, device: torch.device | str) -> Example:
    return {k: v.to(device) for k, v in batch.items()}


# ---------------------------------------------------------------------------------------------- model pieces
def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a Llama-style model (``model.model.layers``)."""
    from falcon_plugin.activations import find_decoder_layers

    return find_decoder_layers(model)[1]


class _Stop(Exception):
    """Raised by a forward hook to end a pass after a given layer."""


def forward_to_layer(model: nn.Module, inputs: Example, layer: nn.Module) -> torch.Tensor:
    """Run ``model`` on ``inputs`` and stop after ``layer``; returns that layer's hidden states."""
    captured: dict[str, torch.Tensor] = {}

    def hook(_module: nn.Module, _args: Any, output: Any) -> None:
        captured["out"] = output[0] if isinstance(output, tuple | list) else output
        raise _Stop

    handle = layer.register_forward_hook(hook)
    try:
        with contextlib.suppress(_Stop):
            model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False)
    finally:
        handle.remove()
    return captured["out"]


def forward_with_cache(model: nn.Module, inputs: Example, module: nn.Module, grad: bool,
                       with_labels: bool = False) -> torch.Tensor:
    """A full forward (every layer and the LM head) with a hook caching ``module``'s output."""
    cache: list[torch.Tensor] = []

    def hook(_module: nn.Module, _args: Any, output: Any) -> None:
        cache.append(output[0] if isinstance(output, tuple | list) else output)

    keys = ("input_ids", "attention_mask", "labels") if with_labels else ("input_ids", "attention_mask")
    handle = module.register_forward_hook(hook)
    try:
        with torch.set_grad_enabled(grad):
            model(**{k: inputs[k] for k in keys})
    finally:
        handle.remove()
    return cache[0]


# ---------------------------------------------------------------------------------------------- timing
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall-clock seconds of ``fn()`` (device synchronised before and after; GC run first, untimed)."""
    gc.collect()
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def summarize(times: Sequence[float]) -> dict[str, Any]:
    """Median, min, max and all samples (seconds)."""
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "times_s": [round(t, 6) for t in times],
    }


# ---------------------------------------------------------------------------------------------- memory
def _proc_status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def release_free_memory() -> None:
    """Collect garbage and return freed heap pages to the OS (glibc ``malloc_trim``), where possible."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakMemory:
    """Peak memory of this process from a starting point on.

    CPU: the kernel's resident-set high-water mark (``VmHWM``), reset by writing ``5`` to
    ``/proc/self/clear_refs`` so the model-loading transient is not counted; where that is not
    possible, ``resource.getrusage(...).ru_maxrss`` (peak since process start). CUDA:
    ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.method = ""
        self.baseline_mib = 0.0

    def reset(self) -> None:
        release_free_memory()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline_mib = torch.cuda.memory_allocated(self.device) / 2**20
            self.method = "torch.cuda.max_memory_allocated after reset_peak_memory_stats"
            return
        try:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
                handle.write("5")
            self.method = "VmHWM (peak RSS) after resetting it via /proc/self/clear_refs"
        except OSError:
            self.method = "ru_maxrss (peak RSS since process start; reset not possible)"
        rss = _proc_status_kib("VmRSS")
        self.baseline_mib = (rss or 0) / 1024

    def peak_mib(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        hwm = _proc_status_kib("VmHWM") if self.method.startswith("VmHWM") else None
        if hwm is not None:
            return hwm / 1024
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# ---------------------------------------------------------------------------------------------- report
def environment() -> dict[str, Any]:
    """Versions, threads and load average: what a reader needs to judge the timings."""
    import transformers

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "loadavg": [round(x, 2) for x in load] if load else None,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "git": git_state(),
    }


def git_state() -> dict[str, Any] | None:
    """HEAD commit of the falcon_plugin checkout and whether its core files differ from it."""
    import subprocess

    import falcon_plugin

    root = Path(falcon_plugin.__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "falcon_plugin"], cwd=root,
                               capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return {"head": head.stdout.strip(), "falcon_plugin_modified": bool(dirty.stdout.strip())}


def command_line(argv: Sequence[str] | None) -> str:
    """The command as typed (for the JSON and docs)."""
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join(["python", "benchmarks/step.py", *args])


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
