"""Model glue for activations: decoder-layer discovery and the truncated forward to layer l*.

FALCON's losses only need the activations at layer l*. One step therefore needs:

1. a no-grad pass of the *frozen* model through layers 0..l* (the trainable tensors swapped for
   their frozen copies with ``torch.func.functional_call``; nothing above l*, no lm_head), which
   yields the frozen activation at l*, the input of the first trainable layer, and the exact
   arguments the model passes to each layer first..l* (masks, rotary embeddings, ...);
2. a pass with grad through the trainable layers first..l* only, from that input, re-using those
   arguments, which yields the updated activation.

Re-using the arguments the model itself built keeps this independent of how a given transformers
version builds causal masks and position embeddings.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .distributed import is_zero3
from .errors import ModelStructureError

_LAYER_PATHS = (
    "model.layers",
    "model.model.layers",
    "transformer.h",
    "gpt_neox.layers",
    "model.decoder.layers",
)


def base_model(model: nn.Module) -> nn.Module:
    """The model inside its wrappers (DDP, DeepSpeed engine, ...: anything with a ``.module``)."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return model


def check_decoder_only(model: nn.Module) -> None:
    """A Hugging Face model must be a decoder-only LM (encoder(-decoder)s have no causal activations)."""
    config = getattr(model, "config", None)
    if getattr(config, "is_encoder_decoder", False):
        raise ModelStructureError(
            f"FALCON: invalid model {type(model).__name__}: it is an encoder-decoder model "
            "(config.is_encoder_decoder=True); FALCON needs a decoder-only causal LM"
        )
    import transformers

    if isinstance(model, transformers.PreTrainedModel) and not model.can_generate():
        raise ModelStructureError(
            f"FALCON: invalid model {type(model).__name__}: it is not a causal LM (can_generate() is False); "
            "FALCON needs a decoder-only causal LM such as AutoModelForCausalLM loads"
        )


def vocab_size(model: nn.Module) -> int | None:
    """Rows of the input embedding (what token ids may index), if the model exposes it."""
    get = getattr(model, "get_input_embeddings", None)
    embedding = get() if callable(get) else None
    size = getattr(embedding, "num_embeddings", None)
    return int(size) if isinstance(size, int) else None


def find_decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(dotted name, ModuleList) of the model's decoder layers (Llama, Mistral, Qwen, GPT-2, NeoX, OPT)."""
    for path in _LAYER_PATHS:
        module: Any = model
        for part in path.split("."):
            module = getattr(module, part, None)
            if module is None:
                break
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            return path, module
    candidates = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if candidates:
        return max(candidates, key=lambda item: len(item[1]))
    raise ModelStructureError(
        f"cannot find decoder layers in {type(model).__name__}: "
        f"expected a ModuleList at one of {', '.join(_LAYER_PATHS)}"
    )


def layer_index_of(param_name: str, layers_path: str) -> int | None:
    """Decoder-layer index a parameter belongs to (``model.layers.7.mlp...`` -> 7), else None."""
    match = re.match(re.escape(layers_path) + r"\.(\d+)\.", param_name)
    return int(match.group(1)) if match else None


def layer_output(output: Any) -> torch.Tensor:
    """Hidden states from a decoder layer's output (a tensor in transformers 5, a tuple in 4.x)."""
    return output[0] if isinstance(output, tuple | list) else output


class _StopForward(Exception):
    """Raised from a hook to end a forward pass early (nothing above the hooked layer runs)."""


@contextlib.contextmanager
def _hooks(handles: list[Any]) -> Iterator[None]:
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def forward_until(model: nn.Module, inputs: Mapping[str, torch.Tensor], last_layer: nn.Module) -> None:
    """Run ``model(**inputs)`` and stop right after ``last_layer`` returns (its hooks have fired)."""

    def stop(_module: nn.Module, _args: Any, _output: Any) -> None:
        raise _StopForward

    with _hooks([last_layer.register_forward_hook(stop)]), contextlib.suppress(_StopForward):
        model(**inputs, use_cache=False)


@dataclass
class LayerCalls:
    """What the model passed to each layer first..l* on one batch, and the frozen activation at l*."""

    hidden_in: torch.Tensor
    """Input hidden states of the first trainable layer."""
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]]
    """(positional args after hidden_states, keyword args) per layer first..l*."""
    frozen_out: torch.Tensor
    """Frozen model's output of layer l*."""


def frozen_prefix_pass(
    model: nn.Module,
    layers: nn.ModuleList,
    first: int,
    target: int,
    inputs: Mapping[str, torch.Tensor],
    frozen_params: Mapping[str, torch.Tensor],
) -> LayerCalls:
    """No-grad pass through layers 0..``target`` with ``frozen_params`` swapped in (``functional_call``).

    Records the input of layer ``first``, the arguments of layers first..target and the output of
    layer ``target``. The model runs in eval mode for this pass (the frozen reference model).
    """
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    captured: dict[str, torch.Tensor] = {}

    def record_call(index: int):
        def hook(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if index == first:
                captured["hidden_in"] = args[0] if args else kwargs["hidden_states"]
            rest = args[1:] if args else ()
            kw = {k: v for k, v in kwargs.items() if k != "hidden_states"}
            calls.append((rest, kw))

        return hook

    def record_out(_module: nn.Module, _args: Any, output: Any) -> None:
        captured["frozen_out"] = layer_output(output)
        raise _StopForward

    handles = [
        layers[i].register_forward_pre_hook(record_call(i), with_kwargs=True)
        for i in range(first, target + 1)
    ]
    handles.append(layers[target].register_forward_hook(record_out))
    was_training = model.training
    model.eval()
    try:
        with _hooks(handles), torch.no_grad(), contextlib.suppress(_StopForward):
            if is_zero3_partitioned(model, frozen_params):
                with swapped_inside_owner_calls(model, frozen_params):
                    model(**inputs, use_cache=False)
            else:
                torch.func.functional_call(
                    model, dict(frozen_params), args=(), kwargs={**inputs, "use_cache": False}, strict=False
                )
    finally:
        model.train(was_training)
    if "frozen_out" not in captured:
        raise ModelStructureError(f"layer {target} was never called by {type(model).__name__}.forward")
    return LayerCalls(captured["hidden_in"], calls, captured["frozen_out"])


def is_zero3_partitioned(model: nn.Module, names: Iterable[str]) -> bool:
    """Whether any named parameter is a DeepSpeed ZeRO-3 parameter (partitioned across processes)."""
    params = dict(model.named_parameters())
    return is_zero3([params[name] for name in names if name in params])


@contextlib.contextmanager
def swapped_inside_owner_calls(model: nn.Module, values: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """Give parameters ``values`` (full tensors) only while the modules that own them run.

    The DeepSpeed ZeRO-3 fallback of ``functional_call``: ZeRO-3 keeps each parameter partitioned
    and gathers a module's parameters in a forward pre-hook registered when the engine is built, so
    ``functional_call`` (which puts plain tensors where ZeRO-3 expects its parameters) breaks its
    hooks. Here a pre-hook registered after ZeRO-3's (so it runs after the gather) points
    ``param.data`` at the given value, and a forward hook prepended before ZeRO-3's release hook
    points it back at the gathered data; anything left swapped by an exception is restored on exit.
    Outside a ZeRO-3 engine the same swap works on plain parameters.
    """
    modules = dict(model.named_modules())
    owned: dict[nn.Module, list[tuple[str, torch.Tensor]]] = {}
    for name, value in values.items():
        owner, _, local = name.rpartition(".")
        owned.setdefault(modules[owner], []).append((local, value))
    saved: dict[tuple[int, str], tuple[nn.Parameter, torch.Tensor]] = {}

    def swap_in(module: nn.Module, _args: Any) -> None:
        for local, value in owned[module]:
            param = module._parameters[local]
            assert param is not None
            saved[(id(module), local)] = (param, param.data)
            param.data = value

    def swap_back(module: nn.Module, _args: Any, _output: Any) -> None:
        for local, _ in owned[module]:
            param, data = saved.pop((id(module), local))
            param.data = data

    handles: list[Any] = []
    for module in owned:
        handles.append(module.register_forward_pre_hook(swap_in))
        handles.append(module.register_forward_hook(swap_back, prepend=True))
    try:
        with _hooks(handles):
            yield
    finally:
        for param, data in saved.values():
            param.data = data


def run_layers(layers: nn.ModuleList, first: int, record: LayerCalls) -> torch.Tensor:
    """Run layers first..l* (live parameters, grad enabled) from the recorded input and arguments."""
    hidden = record.hidden_in
    for offset, (args, kwargs) in enumerate(record.calls):
        hidden = layer_output(layers[first + offset](hidden, *args, **kwargs))
    return hidden


__all__ = [
    "LayerCalls",
    "ModelStructureError",
    "base_model",
    "check_decoder_only",
    "find_decoder_layers",
    "forward_until",
    "frozen_prefix_pass",
    "is_zero3_partitioned",
    "layer_index_of",
    "layer_output",
    "run_layers",
    "swapped_inside_owner_calls",
    "vocab_size",
]
