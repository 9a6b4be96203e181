"""Run the vision tower once over every view and keep the hidden states the shortcut pattern needs.

Layer ``i`` is ``hidden_states[i]`` of the HF vision model (0 = embeddings, after CLIP's pre-layernorm).
The loop stops after the deepest layer needed, so LLaVA's pattern never runs the last ViT layer.
"""

from __future__ import annotations

import torch
from torch import nn


def vision_layers_of(tower: nn.Module) -> nn.ModuleList:
    """The encoder layers of an HF CLIP/SigLIP vision model."""
    layers = getattr(getattr(tower, "encoder", None), "layers", None)
    if not isinstance(layers, nn.ModuleList) or not hasattr(tower, "embeddings"):
        raise TypeError(
            f"Unsupported vision tower {type(tower).__name__}: expected an HF vision model with `embeddings` and "
            "`encoder.layers` (CLIPVisionModel, SiglipVisionModel)."
        )
    return layers


def vision_hidden_states(
    tower: nn.Module, pixel_values: torch.Tensor, layers: set[int] | list[int], drop_cls: bool
) -> dict[int, torch.Tensor]:
    """pixel_values (V, 3, H, W) -> {layer i: hidden states (V, M_v, D_v)} for each requested layer (1-based)."""
    encoder_layers = vision_layers_of(tower)
    wanted = sorted(set(layers))
    if not wanted or wanted[0] < 1 or wanted[-1] > len(encoder_layers):
        raise ValueError(f"Vision layers must lie in 1..{len(encoder_layers)}; got {wanted}.")
    dtype = next(tower.parameters()).dtype
    hidden = tower.embeddings(pixel_values.to(dtype))  # (V, 1 + P, D) for CLIP, (V, P, D) for SigLIP
    pre_norm = getattr(tower, "pre_layrnorm", None)
    if pre_norm is not None:
        hidden = pre_norm(hidden)
    out: dict[int, torch.Tensor] = {}
    for index, layer in enumerate(encoder_layers[: wanted[-1]], start=1):
        hidden = layer(hidden, None)
        if index in wanted:
            out[index] = hidden[:, 1:] if drop_cls else hidden
    return out
