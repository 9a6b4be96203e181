"""Build SparseCut models from HF LLaVA checkpoints.

- ``from_hf_llava``: an HF ``LlavaForConditionalGeneration`` as a llava-mode SparseCut model that takes the
  same ``input_ids`` and gives the same logits (the baseline of every comparison).
- ``init_from_llava``: a SparseCut model of any pattern whose tower and LLM come from a LLaVA checkpoint and
  whose adapters' MLPs are all seeded with LLaVA's projector (how a user starts real training). With the
  extra shortcuts zero-initialised it computes exactly what the LLaVA checkpoint computes.
"""

from __future__ import annotations

import os

import torch
from transformers import LlavaConfig, LlavaForConditionalGeneration

from .config import SparseCutConfig
from .model import SparseCutForConditionalGeneration, adapter_key

_LLAVA_PROJECTOR = "model.multi_modal_projector."


def _load_llava(model_or_path, **load_kwargs) -> LlavaForConditionalGeneration:
    if isinstance(model_or_path, LlavaForConditionalGeneration):
        return model_or_path
    if isinstance(model_or_path, (str, os.PathLike)):
        config = LlavaConfig.from_pretrained(model_or_path)  # fails early with HF's message if not a LLaVA folder/id
        if config.model_type != "llava":
            raise ValueError(f"{model_or_path} is a {config.model_type!r} checkpoint, not an HF LLaVA one.")
        return LlavaForConditionalGeneration.from_pretrained(model_or_path, **load_kwargs)
    raise TypeError(f"Expected a LlavaForConditionalGeneration or a path / hub id; got {type(model_or_path).__name__}.")


def _llava_feature_layer(config: LlavaConfig) -> int:
    layer = config.vision_feature_layer
    if not isinstance(layer, int):
        raise ValueError(f"LLaVA checkpoints that concatenate several feature layers ({layer}) are not supported.")
    num_layers = config.vision_config.num_hidden_layers
    return layer if layer >= 0 else num_layers + 1 + layer  # hidden_states has num_layers + 1 entries


def sparsecut_config_from_llava(llava_config: LlavaConfig, **overrides) -> SparseCutConfig:
    """A SparseCut config with LLaVA's towers, token ids and projector options; ``overrides`` set the rest."""
    fields = dict(
        vision_config=llava_config.vision_config.to_dict(),
        text_config=llava_config.text_config.to_dict(),
        shortcuts=[(_llava_feature_layer(llava_config), 1)],
        pattern="llava",
        high_res=False,
        adapter_attention=False,
        adapter_mlp="mlp2x_gelu",
        adapter_bias=llava_config.multimodal_projector_bias,
        adapter_hidden_act=llava_config.projector_hidden_act,
        image_token_id=llava_config.image_token_id,
        vision_feature_select_strategy=llava_config.vision_feature_select_strategy,
        tie_word_embeddings=llava_config.tie_word_embeddings,
    )
    fields.update(overrides)
    return SparseCutConfig(**fields)


def _build_from_llava(llava: LlavaForConditionalGeneration, config: SparseCutConfig) -> SparseCutForConditionalGeneration:
    """A model for ``config`` on LLaVA's device and dtype, carrying LLaVA's weights."""
    config._attn_implementation = llava.config._attn_implementation
    model = SparseCutForConditionalGeneration(config).to(dtype=llava.dtype, device=llava.device)
    _copy_llava_weights(llava, model)
    if model.config.tie_word_embeddings:
        model.tie_weights()
    model.generation_config = llava.generation_config
    return model.train(llava.training)


def _copy_llava_weights(llava: LlavaForConditionalGeneration, model: SparseCutForConditionalGeneration) -> None:
    """Copy tower, LLM and head; seed every adapter's MLP with LLaVA's projector. Strict about everything else."""
    source = llava.state_dict()
    projector = {k[len(_LLAVA_PROJECTOR):]: v for k, v in source.items() if k.startswith(_LLAVA_PROJECTOR)}
    target = {k: v for k, v in source.items() if not k.startswith(_LLAVA_PROJECTOR)}
    for shortcut in model.config.shortcut_pairs:
        for name, value in projector.items():
            target[f"model.adapters.{adapter_key(shortcut)}.mlp.{name}"] = value
    own = model.state_dict()
    unexpected = sorted(set(target) - set(own))
    if unexpected:
        raise ValueError(f"LLaVA weights with no place in the SparseCut model: {unexpected[:5]}")
    missing = sorted(k for k in set(own) - set(target) if ".attention." not in k and not k.endswith(".gate"))
    if missing and not (missing == ["lm_head.weight"] and model.config.tie_word_embeddings):
        raise ValueError(f"SparseCut weights the LLaVA checkpoint does not provide: {missing[:5]}")
    with torch.no_grad():
        for name, value in target.items():
            own[name].copy_(value)


def from_hf_llava(model_or_path, **load_kwargs) -> SparseCutForConditionalGeneration:
    """An HF LLaVA model (object, ``save_pretrained`` folder or hub id) as a llava-mode SparseCut model.

    Same ``input_ids`` (same image token id), same logits. ``load_kwargs`` go to ``from_pretrained``."""
    llava = _load_llava(model_or_path, **load_kwargs)
    return _build_from_llava(llava, sparsecut_config_from_llava(llava.config))


def init_from_llava(
    model_or_path,
    pattern: str = "sparse-uniform",
    num_shortcuts: int | None = None,
    high_res: bool = True,
    high_res_grid: int = 2,
    **config_overrides,
) -> SparseCutForConditionalGeneration:
    """A SparseCut model of any pattern, initialised from a LLaVA checkpoint: its tower and LLM, and its projector
    in every adapter's MLP. Attention output projections start at 0 and (by default) the extra shortcuts' gates
    too, so before training the model computes what the LLaVA checkpoint does on the low-res view."""
    llava = _load_llava(model_or_path)
    config = sparsecut_config_from_llava(
        llava.config,
        shortcuts=None,
        pattern=pattern,
        num_shortcuts=num_shortcuts,
        high_res=high_res,
        high_res_grid=high_res_grid,
        adapter_attention=True,
        **config_overrides,
    )
    return _build_from_llava(llava, config)
