"""Checks that need the model and the train data, run when the trainer is built (before any forward pass).

:mod:`falcon_plugin.config` checks each ``method_args`` value on its own; this module checks them
against the model (a decoder-only LM, ``layer`` within its decoder layers, trainable tensors that
exist and lie in layers <= l*) and checks the train data (non-empty, ``{'forget', 'retain'}`` items,
token ids inside the vocabulary, some attended and some answer tokens). Each failure raises
:class:`~falcon_plugin.errors.FalconConfigError`, :class:`~falcon_plugin.errors.FalconDataError`
or :class:`~falcon_plugin.errors.ModelStructureError` naming the parameter or item and the value.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .activations import check_decoder_only, find_decoder_layers, layer_index_of, vocab_size
from .config import FalconConfig, check_mi_sample_count, default_trainable_regex
from .errors import FalconConfigError, FalconDataError
from .masks import IGNORE_INDEX, token_mask

logger = logging.getLogger(__name__)

DATA_CHECK_ITEMS = 64
"""Train items (spread over the dataset) checked at construction; set-up checks every item it samples."""


def check_training_args(args: Any) -> None:
    """FALCON's needs of the ``TrainingArguments``: its nested batches, and checkpoints that can resume.

    ``remove_unused_columns`` is switched off (the batches are ``{'forget', 'retain'}`` dicts, which
    the Trainer would otherwise strip); ``save_only_model`` is warned about (no optimizer state to
    resume from).
    """
    if getattr(args, "remove_unused_columns", False):
        logger.info("FALCON: setting remove_unused_columns=False (batches are {'forget', 'retain'} dicts)")
        args.remove_unused_columns = False
    if getattr(args, "save_only_model", False) and args.save_strategy != "no":
        logger.warning(
            "FALCON: save_only_model=True (open-unlearning's default, from its trainer/finetune.yaml): "
            "checkpoints will hold the weights and FALCON's state but no optimizer, scheduler or RNG state, "
            "so resume_from_checkpoint cannot continue this run (FALCON refuses such a checkpoint); add "
            "trainer.args.save_only_model=false to the command for resumable checkpoints"
        )


SAM_UNDER_ZERO3 = (
    "FALCON method_args: sam_rho={!r} is not supported under DeepSpeed ZeRO-3 (its partitioned parameters "
    "cannot be perturbed in place); use ZeRO-1/2 or no DeepSpeed, or set sam_rho: null"
)


def check_sharpness_supported(config: FalconConfig) -> None:
    """``sam_rho`` perturbs the trainable tensors in place, which ZeRO-3's partitioned parameters forbid."""
    if config.sam_rho is None:
        return
    from transformers.integrations import is_deepspeed_zero3_enabled

    if is_deepspeed_zero3_enabled():
        raise FalconConfigError(SAM_UNDER_ZERO3.format(config.sam_rho))


def validate_against_model(
    model: nn.Module, config: FalconConfig, dataset: Any, pad_id: int
) -> list[str] | None:
    """Every check of ``config`` and ``dataset`` against ``model`` (unwrapped), before any forward pass.

    Returns the trainable tensor names when l* is known (an integer ``layer``): they are resolved
    here, once. With ``layer: auto`` they depend on Step 1's choice and set-up resolves them.
    """
    check_decoder_only(model)
    path, layers = find_decoder_layers(model)
    if isinstance(config.layer, int) and config.layer >= len(layers):
        raise FalconConfigError(
            f"FALCON method_args: invalid layer={config.layer!r}; the model has {len(layers)} decoder layers "
            f"(valid: 0..{len(layers) - 1} or 'auto')"
        )
    names = [n for n, _ in model.named_parameters()]
    if config.trainable_params_regex is not None:
        for pattern in config.trainable_params_regex:
            if not any(re.fullmatch(pattern, n) for n in names):
                raise FalconConfigError(
                    f"FALCON method_args: invalid trainable_params_regex entry {pattern!r}: "
                    "it matches no parameter "
                    f"of {type(model).__name__} (e.g. {names[len(names) // 2]!r})"
                )
    trainable = None
    if isinstance(config.layer, int):
        trainable = resolve_trainable(
            model, path, config.layer, config.trainable_params_regex, config.trainable_modules
        )
    elif config.trainable_params_regex is not None:  # 'auto': l* is not known yet, the decoder layers are
        resolve_trainable(
            model, path, len(layers) - 1, config.trainable_params_regex, config.trainable_modules
        )
    if config.layer == "auto" and config.mi.min_layer >= len(layers):
        raise FalconConfigError(
            f"FALCON method_args: invalid mi.min_layer={config.mi.min_layer!r}; the model has {len(layers)} "
            f"decoder layers (valid: 0..{len(layers) - 1})"
        )
    if dataset is not None and config.layer == "auto":
        check_mi_sample_count(len(dataset), "layer='auto': the train dataset", config.mi)
    validate_train_data(model, dataset, pad_id)
    return trainable


def resolve_trainable(
    model: nn.Module, layers_path: str, layer: int, patterns: Sequence[str] | None, modules: str = "mlp"
) -> list[str]:
    """Names of the tensors FALCON trains at l* = ``layer``: ``patterns`` matched (None: the ``modules``
    weights of layers l*-2..l*, :func:`falcon_plugin.config.default_trainable_regex`).

    Each must lie in a decoder layer <= l*: FALCON's losses live at l* and give layers above it, and
    tensors outside the decoder layers, no gradient.
    """
    patterns = patterns or default_trainable_regex(layer, layers_path, modules)
    matched = [n for n, _ in model.named_parameters() if any(re.fullmatch(p, n) for p in patterns)]
    if not matched:
        raise FalconConfigError(
            f"FALCON method_args: invalid trainable_params_regex={list(patterns)!r}: no parameter matches "
            f"(set trainable_params_regex for {type(model).__name__})"
        )
    for name in matched:
        index = layer_index_of(name, layers_path)
        if index is None:
            raise FalconConfigError(
                f"FALCON method_args: invalid trainable_params_regex: it matches {name!r}, "
                "outside the decoder "
                f"layers ({layers_path}.N); FALCON trains tensors of layers <= l*={layer}"
            )
        if index > layer:
            raise FalconConfigError(
                f"FALCON method_args: invalid trainable_params_regex: it matches {name!r} in layer {index} > "
                f"l*={layer}; FALCON's losses live at layer l* and give it no gradient"
            )
    return matched


def validate_train_data(model: nn.Module, dataset: Any, pad_id: int) -> None:
    """Empty data, a pad id or token ids outside the model's vocabulary, all-padding or answerless items."""
    vocab = vocab_size(model)
    if vocab is not None and not 0 <= pad_id < vocab:
        raise FalconDataError(
            f"FALCON: invalid pad_token_id={pad_id}: the model's input embedding has {vocab} rows (valid ids "
            f"0..{vocab - 1}); the tokenizer does not match the model"
        )
    if dataset is None or not hasattr(dataset, "__len__"):
        return  # no data yet, or an iterable dataset: set-up checks the items it samples
    size = len(dataset)
    if size == 0:
        raise FalconDataError(
            "FALCON: invalid train_dataset: it is empty (len 0); FALCON needs {'forget', 'retain'} items"
        )
    # fork_rng: datasets may draw from the global RNG in __getitem__ (the host's pairs a random retain item)
    with torch.random.fork_rng(devices=[]):
        for index in range(0, size, max(1, size // DATA_CHECK_ITEMS))[:DATA_CHECK_ITEMS]:
            item = dataset[index]
            for part in ("forget", "retain"):
                check_example(part_of(item, part, index), f"train_dataset[{index}][{part!r}]", vocab)


def part_of(item: Any, part: str, index: int) -> Mapping[str, Any]:
    """``item[part]`` of a train item, or a :class:`FalconDataError` saying what the item is instead."""
    if not isinstance(item, Mapping) or part not in item or not isinstance(item[part], Mapping):
        keys = sorted(item) if isinstance(item, Mapping) else type(item).__name__
        raise FalconDataError(
            f"FALCON: invalid train_dataset[{index}]: "
            "expected {'forget': {input_ids, ...}, 'retain': {...}}, "
            f"got {keys} (no {part!r} part)"
        )
    return item[part]


def check_example(example: Mapping[str, Any], where: str, vocab: int | None) -> None:
    """One tokenised example: non-empty, ids inside the vocabulary, not all padding, some answer tokens."""
    if "input_ids" not in example:
        raise FalconDataError(f"FALCON: invalid {where}: no input_ids (keys: {sorted(example)})")
    ids = torch.as_tensor(example["input_ids"])
    if ids.numel() == 0:
        raise FalconDataError(f"FALCON: invalid {where}.input_ids=[]: an empty sequence")
    low, high = int(ids.min()), int(ids.max())
    if vocab is not None and (low < 0 or high >= vocab):
        bad = high if high >= vocab else low
        raise FalconDataError(
            f"FALCON: invalid {where}.input_ids: token id {bad} is outside "
            f"the model's vocabulary 0..{vocab - 1} "
            f"(input embedding size {vocab}); the tokenizer does not match the model"
        )
    attention = example.get("attention_mask")
    attention = None if attention is None else torch.as_tensor(attention)
    if attention is not None and not bool(attention.bool().any()):
        raise FalconDataError(f"FALCON: invalid {where}.attention_mask: all 0 (the sequence is all padding)")
    labels = example.get("labels")
    if labels is not None and not bool(token_mask(torch.as_tensor(labels), attention).any()):
        raise FalconDataError(
            f"FALCON: invalid {where}.labels: all {IGNORE_INDEX} on the attended tokens "
            "(no answer tokens for FALCON's losses)"
        )


__all__ = [
    "DATA_CHECK_ITEMS",
    "check_example",
    "check_training_args",
    "part_of",
    "resolve_trainable",
    "validate_against_model",
    "validate_train_data",
]
