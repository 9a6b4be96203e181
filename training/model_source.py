"""Where a training run's model comes from: a SparseCut folder, an HF LLaVA folder, or two backbones."""

from __future__ import annotations

import os

from sparsecut import SparseCutForConditionalGeneration, SparseCutProcessor
from sparsecut.convert import from_backbones, init_from_llava, saved_model_type


def load_model(model=None, vision=None, text=None, pattern="sparse-uniform", num_shortcuts=None, high_res=True, grid=2,
               adapter_attention=True, chat_template=None, adapter_mlp="mlp2x_gelu"):
    """(model, processor) for training.

    - ``model`` a SparseCut ``save_pretrained`` folder (e.g. stage 1's output): loaded as is (pattern options ignored);
    - ``model`` an HF LLaVA folder or hub id: ``init_from_llava`` with the pattern options;
    - ``vision`` + ``text``: ``from_backbones`` (fresh adapters, the paper's stage-1 start; ``text`` may name an
      installed base model such as ``smollm2-135m-instruct``), with ``chat_template`` replacing the tokenizer's.
    ``adapter_mlp`` (``mlp2x_gelu`` or ``linear``) shapes new adapters (backbones or LLaVA)."""
    if model is not None and (vision or text):
        raise ValueError("Give either --model or --vision and --text, not both.")
    if model is not None and chat_template is not None:
        raise ValueError("--chat-template applies to a new model (--vision and --text); a saved model keeps its own.")
    if model is None:
        if not (vision and text):
            raise ValueError("Give --model (a SparseCut or LLaVA checkpoint) or both --vision and --text (backbones).")
        return from_backbones(vision, text, pattern=pattern, num_shortcuts=num_shortcuts, high_res=high_res, high_res_grid=grid,
                              adapter_attention=adapter_attention, adapter_mlp=adapter_mlp, chat_template=chat_template)
    kind = saved_model_type(model) if os.path.isdir(model) else "llava"
    if kind == "sparsecut":
        return SparseCutForConditionalGeneration.from_pretrained(model), SparseCutProcessor.from_pretrained(model)
    if kind == "llava":
        from transformers import AutoImageProcessor, AutoTokenizer

        built = init_from_llava(model, pattern=pattern, num_shortcuts=num_shortcuts, high_res=high_res, high_res_grid=grid,
                                adapter_attention=adapter_attention, adapter_mlp=adapter_mlp)
        processor = SparseCutProcessor.from_model_config(
            built.config, AutoImageProcessor.from_pretrained(model), AutoTokenizer.from_pretrained(model)
        )
        return built, processor
    raise ValueError(f"{model} is neither a SparseCut nor an HF LLaVA checkpoint (model_type {kind!r}).")
