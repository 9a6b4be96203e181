"""Eq. 4 of the paper: each shortcut's adapter output is added to the LLM's hidden state at the visual positions.

    H_1 = Z_(i, 1) + ...         at the visual positions of the input embeddings (which start at 0)
    H_j = LLM_(j-1)(H_(j-1)) + sum of Z_(i, j) over the shortcuts (i, j) into layer j, at the visual positions

Two steps, as named functions that the model, its hooks and the benchmarks all call:

- ``plan(features)``: which adapter output goes to which decoder layer, summed per layer (0-based index);
- ``add_at(hidden, positions, added)``: the addition itself, at the visual positions.

Layer 1's sum is added to the input embeddings (as HF LLaVA scatters its features). Deeper layers get theirs from
a forward pre-hook on each decoder layer (``install``), which reads the per-call ``Injection`` that the model passes
down the decoder as the keyword argument ``INJECTION_KWARG``. Hooks, rather than a forked decoder loop, keep any HF
causal LM usable as it is (Llama, Qwen2, Mistral, SmolLM2, ...) with its own attention kernels, caches and gradient
checkpointing; nothing is stored on a module between calls, so concurrent calls with different patterns are
independent and cached decode steps (no ``pixel_values``) add nothing. The one thing a decoder must do is hand its
``**kwargs`` to its layers, as transformers' decoders do: ``check_delivered`` raises, naming the decoder class, when
a layer that should have received its share did not.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .patterns import Shortcut

INJECTION_KWARG = "sparsecut_injection"


@dataclass
class Injection:
    """What to add inside the LLM during one forward call.

    positions: (batch_index, seq_index) of the visual tokens, each (T_vis,).
    per_layer: 0-based decoder layer index -> summed adapter outputs for that layer, (T_vis, D_t).
    delivered: the layers whose hook received this injection (filled during the call).
    """

    positions: tuple[torch.Tensor, torch.Tensor]
    per_layer: dict[int, torch.Tensor]
    delivered: set[int] = field(default_factory=set)


def plan(features: dict[Shortcut, torch.Tensor]) -> dict[int, torch.Tensor]:
    """{(vit_layer, llm_layer): Z (B, M, D_t) or (T_vis, D_t)} -> {llm_layer - 1: the sum of the Z going there,
    (T_vis, D_t)}, images in order of appearance."""
    per_layer: dict[int, torch.Tensor] = {}
    for (_, llm_layer), z in features.items():
        z = z.reshape(-1, z.shape[-1])
        index = llm_layer - 1
        per_layer[index] = per_layer[index] + z if index in per_layer else z
    return per_layer


def add_at(hidden: torch.Tensor, positions: tuple[torch.Tensor, torch.Tensor], added: torch.Tensor) -> torch.Tensor:
    """``hidden`` (B, T, D) with ``added`` (T_vis, D) summed into it at ``positions`` (out of place, autograd-safe)."""
    positions = tuple(p.to(hidden.device) for p in positions)  # layers may sit on other devices
    return hidden.index_put(positions, added.to(hidden.device, hidden.dtype), accumulate=True)


def inject(inputs_embeds: torch.Tensor, positions, per_layer: dict[int, torch.Tensor]) -> tuple[torch.Tensor, Injection | None]:
    """Layer 1's share added to ``inputs_embeds``; the deeper layers' shares as the ``Injection`` to pass down the
    decoder (None when the pattern has none)."""
    deeper = dict(per_layer)
    if 0 in deeper:
        inputs_embeds = add_at(inputs_embeds, positions, deeper.pop(0))
    return inputs_embeds, (Injection(positions, deeper) if deeper else None)


def _hook(layer_index: int):
    def hook(module, args, kwargs):
        injection = kwargs.pop(INJECTION_KWARG, None)
        if injection is None or layer_index not in injection.per_layer:
            return args, kwargs
        injection.delivered.add(layer_index)
        if args:
            return (add_at(args[0], injection.positions, injection.per_layer[layer_index]), *args[1:]), kwargs
        kwargs["hidden_states"] = add_at(kwargs["hidden_states"], injection.positions, injection.per_layer[layer_index])
        return args, kwargs

    return hook


def install(layers: nn.ModuleList) -> None:
    """A pre-hook on every decoder layer that adds its share of the call's ``Injection`` (once per layer, even if
    several models share an LLM)."""
    for index, layer in enumerate(layers):
        if not getattr(layer, "_sparsecut_injection_hook", False):
            layer.register_forward_pre_hook(_hook(index), with_kwargs=True)
            layer._sparsecut_injection_hook = True


def check_delivered(injection: Injection | None, decoder: nn.Module) -> None:
    """Raise if a layer due a shortcut's output never received it: the decoder did not pass its ``**kwargs``
    (with ``INJECTION_KWARG``) to its layers, so every shortcut beyond layer 1 would silently do nothing."""
    if injection is None:
        return
    missing = sorted(set(injection.per_layer) - injection.delivered)
    if missing:
        raise RuntimeError(
            f"{type(decoder).__name__} did not pass the keyword argument {INJECTION_KWARG!r} on to its decoder layers "
            f"{[m + 1 for m in missing]} (1-based), so their shortcuts would be lost. SparseCut needs a decoder that "
            "hands its **kwargs to each layer, as transformers' Llama, Qwen2 and Mistral do."
        )
