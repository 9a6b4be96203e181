"""Build SparseCut models from HF LLaVA checkpoints.

- ``from_hf_llava``: an HF ``LlavaForConditionalGeneration`` as a llava-mode SparseCut model that takes the
  same ``input_ids`` and gives the same logits (the baseline of every comparison).
- ``init_from_llava``: a SparseCut model of any pattern whose tower and LLM come from a LLaVA checkpoint and
  whose adapters' MLPs are all seeded with LLaVA's projector (how a user starts real training; with the ``stack``
  fusion the projector fills the fused token's block of the first layer and the crop blocks start at zero). With the
  extra shortcuts zero-initialised it computes exactly what the LLaVA checkpoint computes.
"""

from __future__ import annotations

import json
import os

import torch
from transformers import LlavaConfig, LlavaForConditionalGeneration

from .config import SparseCutConfig
from .model import SparseCutForConditionalGeneration, adapter_key

_LLAVA_PROJECTOR = "model.multi_modal_projector."


def saved_model_type(path: str) -> str | None:
    """The ``model_type`` in ``path/config.json`` (``"sparsecut"``, ``"llava"``, ...), or None without one."""
    config = os.path.join(path, "config.json")
    if not os.path.isfile(config):
        return None
    with open(config, encoding="utf-8") as handle:
        return json.load(handle).get("model_type")


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
    # built in LLaVA's dtype rather than cast to it: a cast would also round fp32 buffers (rotary inv_freq) that HF
    # keeps in fp32, and the logits would then differ from LLaVA's in bf16
    model = SparseCutForConditionalGeneration._from_config(config, dtype=llava.dtype).to(device=llava.device)
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
        key = adapter_key(shortcut)
        for name, value in projector.items():
            if name == "linear_1.weight" and model.model.adapters[key].stack:
                value = _stacked_input(value, model.config.high_res_grid)
            target[f"model.adapters.{key}.mlp.{name}"] = value
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


def _stacked_input(projector: torch.Tensor, grid: int) -> torch.Tensor:
    """LLaVA's first projector layer (H, Dv) widened for a stacked adapter to (H, (1 + g^2) Dv): the projector on
    the fused token's block, zeros on the crop blocks, so the crops add nothing until training moves them."""
    return torch.cat([projector, projector.new_zeros(projector.shape[0], grid**2 * projector.shape[1])], dim=1)


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
    dtype: torch.dtype | None = None,
    **config_overrides,
) -> SparseCutForConditionalGeneration:
    """A SparseCut model of any pattern, initialised from a LLaVA checkpoint: its tower and LLM, and its projector
    in every adapter's MLP. Attention output projections start at 0 and (by default) the extra shortcuts' gates
    too, so before training the model computes what the LLaVA checkpoint does on the low-res view. ``dtype``: the
    checkpoint's weights are loaded in it (default: as ``from_pretrained`` loads them)."""
    llava = _load_llava(model_or_path, **({"dtype": dtype} if dtype is not None else {}))
    config = sparsecut_config_from_llava(
        llava.config,
        shortcuts=None,
        pattern=pattern,
        num_shortcuts=num_shortcuts,
        high_res=high_res,
        high_res_grid=high_res_grid,
        **{"adapter_attention": True, **config_overrides},
    )
    return _build_from_llava(llava, config)


def _load_vision_tower(path, dtype):
    """A CLIP/SigLIP vision model from a vision-only or a full CLIP/SigLIP checkpoint."""
    from transformers import AutoConfig, CLIPVisionModel, SiglipVisionModel

    model_type = AutoConfig.from_pretrained(path).model_type
    classes = {"clip": CLIPVisionModel, "clip_vision_model": CLIPVisionModel, "siglip": SiglipVisionModel, "siglip_vision_model": SiglipVisionModel}
    if model_type not in classes:
        raise ValueError(f"{path} is a {model_type!r} checkpoint; the vision tower must be CLIP or SigLIP.")
    return classes[model_type].from_pretrained(path, dtype=dtype)


def _loaded(obj, default_path, auto_class):
    """``obj`` itself, or loaded with ``auto_class`` when it is a path (``default_path`` when None)."""
    if obj is None or isinstance(obj, (str, os.PathLike)):
        return auto_class.from_pretrained(obj or default_path)
    return obj


def grow_embeddings(lm, rows: int) -> None:
    """Grow causal LM ``lm``'s input and output embeddings to ``rows`` rows (if fewer), the new rows at the mean row:
    deterministic, so a delta over the base rebuilds them exactly (the image token's input row is never read)."""
    old_rows = lm.get_input_embeddings().num_embeddings
    if rows <= old_rows:
        return
    lm.resize_token_embeddings(rows, mean_resizing=False)
    with torch.no_grad():
        for matrix in {lm.get_input_embeddings().weight, lm.get_output_embeddings().weight}:
            matrix[old_rows:] = matrix[:old_rows].mean(0)


def from_backbones(
    vision,
    text,
    tokenizer=None,
    image_processor=None,
    pattern: str = "sparse-uniform",
    num_shortcuts: int | None = None,
    high_res: bool = True,
    high_res_grid: int = 2,
    dtype: torch.dtype | str = torch.float32,
    chat_template: str | None = None,
    **config_overrides,
):
    """A SparseCut model from a pretrained vision tower and a pretrained causal LM, with fresh adapters: the paper's
    starting point (stage 1 trains the adapters from scratch). Returns ``(model, processor)``.

    vision: a CLIP/SigLIP checkpoint path or hub id (full or vision-only); text: a causal-LM checkpoint, or the name
    of a base model installed from the package registry (``sparsecut.base_models``, e.g. "smollm2-135m-instruct");
    tokenizer / image_processor: objects or paths (default: from ``text`` / ``vision``). If the tokenizer has no
    ``<image>`` token it is added and the embeddings grow by one row (set to the mean row). ``chat_template``
    replaces the tokenizer's: a Jinja string or a name in ``sparsecut.templates.CHAT_TEMPLATES`` (``"chatml"``:
    ChatML without a default system prompt). ``adapter_output_rms="embeddings"`` starts the adapters' output scale at
    the RMS of the LLM's input embeddings (see ``SparseCutConfig``)."""
    from transformers import AutoImageProcessor, AutoModelForCausalLM, AutoTokenizer

    from .base_models import resolve_text_backbone
    from .processing import SparseCutProcessor
    from .templates import CHAT_TEMPLATES

    text = resolve_text_backbone(text)
    image_token = config_overrides.pop("image_token", "<image>")
    tower = _load_vision_tower(vision, dtype)
    lm = AutoModelForCausalLM.from_pretrained(text, dtype=dtype)
    tokenizer = _loaded(tokenizer, text, AutoTokenizer)
    image_processor = _loaded(image_processor, vision, AutoImageProcessor)
    if tokenizer.convert_tokens_to_ids(image_token) in (None, tokenizer.unk_token_id):
        tokenizer.add_special_tokens({"additional_special_tokens": [image_token]}, replace_extra_special_tokens=False)
    if chat_template is not None:
        tokenizer.chat_template = CHAT_TEMPLATES.get(chat_template, chat_template)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    grow_embeddings(lm, len(tokenizer))
    if config_overrides.get("adapter_output_rms") == "embeddings":
        config_overrides["adapter_output_rms"] = float(lm.get_input_embeddings().weight.detach().float().square().mean().sqrt())
    config = SparseCutConfig(
        vision_config=tower.config.to_dict(),
        text_config=lm.config.to_dict(),
        pattern=pattern,
        num_shortcuts=num_shortcuts,
        high_res=high_res,
        high_res_grid=high_res_grid,
        image_token=image_token,
        image_token_id=tokenizer.convert_tokens_to_ids(image_token),
        tie_word_embeddings=bool(getattr(lm.config, "tie_word_embeddings", False)),
        **config_overrides,
    )
    model = SparseCutForConditionalGeneration(
        config, vision_tower=tower, language_model=lm.get_decoder(), lm_head=lm.get_output_embeddings()
    ).to(dtype)
    model.generation_config = lm.generation_config
    processor = SparseCutProcessor.from_model_config(config, image_processor, tokenizer)
    return model, processor


TOWER_SHAPE = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "image_size", "patch_size", "num_channels")  # what a reading tower must share with the model's


def with_reading_tower(model, vision, dtype: torch.dtype | str = torch.float32):
    """``model`` (a SparseCut model with ``reading_tokens``) whose reading queries look at the crops through a vision
    tower of their own: ``vision``, a CLIP/SigLIP checkpoint path (or an already loaded vision model) of the same
    shape as the model's tower, e.g. one pretrained to spell each text (``python -m training.tiny.dense --spell``).
    Sets ``config.reading_tower`` and replaces the reading adapter with a fresh one around that tower (the old one
    was trained on the other tower's tokens), or, when the folder holds ``READER_WEIGHTS`` (a reader aligned to this
    model's LLM: ``python -m training.tiny.reader``), with that adapter. Returns ``model``, changed in place."""
    from .reading import READER_WEIGHTS, ReadingAdapter

    config = model.config
    if not config.reading_tokens:
        raise ValueError("this model has no reading tokens (config.reading_tokens = 0): a reading tower is what they "
                         "look through; build the model with reading_tokens=K first.")
    tower = _load_vision_tower(vision, dtype) if isinstance(vision, (str, os.PathLike)) else vision
    differs = [f"{key} {getattr(tower.config, key, None)!r} (the model's {getattr(config.vision_config, key, None)!r})"
               for key in TOWER_SHAPE if getattr(tower.config, key, None) != getattr(config.vision_config, key, None)]
    if differs:
        raise ValueError(f"the reading tower does not have the shape of the model's vision tower: {', '.join(differs)}. "
                         "Pretrain it with the model's vision config (python -m training.tiny.dense).")
    config.reading_tower = True
    adapter = ReadingAdapter(config, tower.to(model.dtype))
    tower_modules = set(tower.modules())
    for module in adapter.modules():  # the tower's weights are kept; the queries, attentions and MLP start fresh
        if module not in tower_modules:
            model._init_weights(module)
    reader = isinstance(vision, (str, os.PathLike)) and os.path.join(vision, READER_WEIGHTS)
    if reader and os.path.isfile(reader):
        _load_reader(adapter, reader)
    model.model.reading_adapter = adapter
    return model


def _load_reader(adapter, path: str) -> None:
    """Load a trained reading adapter's weights (all but its tower's) from ``path`` into ``adapter``, or raise
    naming what does not fit."""
    from safetensors.torch import load_file

    weights = load_file(path)
    own = {name: param for name, param in adapter.state_dict().items() if not name.startswith("vision_tower.")}
    wrong = [f"{name} {tuple(weights[name].shape)} (the model's {tuple(own[name].shape)})"
             for name in sorted(set(own) & set(weights)) if weights[name].shape != own[name].shape]
    wrong += [f"{name} (only in the model)" for name in sorted(set(own) - set(weights))]
    wrong += [f"{name} (only in the reader)" for name in sorted(set(weights) - set(own))]
    if wrong:
        raise ValueError(f"{path} is a reader for another model: {', '.join(wrong[:4])}"
                         f"{f' and {len(wrong) - 4} more' if len(wrong) > 4 else ''} do not fit this model's reading "
                         "adapter. Align a reader to this model (python -m training.tiny.reader --member ...).")
    adapter.load_state_dict({name: tensor.to(own[name].dtype) for name, tensor in weights.items()}, strict=False)
