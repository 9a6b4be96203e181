"""Where a training run's model comes from: a SparseCut folder, an HF LLaVA folder, or two backbones."""

from __future__ import annotations

from sparsecut.convert import from_backbones, with_reading_tower
from sparsecut.loading import checkpoint_kind, load_checkpoint


def load_model(model=None, vision=None, text=None, pattern="sparse-uniform", num_shortcuts=None, high_res=True, grid=2,
               adapter_attention=True, chat_template=None, adapter_mlp="mlp2x_gelu",
               adapter_attention_scope="global", adapter_region_bias=None, high_res_fusion="cross-attention",
               reading_tokens=0, reading_layer=None, reading_tower=None):
    """(model, processor) for training.

    - ``model`` a SparseCut ``save_pretrained`` folder (e.g. stage 1's output) or a shipped name: loaded as is
      (pattern options ignored);
    - ``model`` an HF LLaVA folder or hub id: ``init_from_llava`` with the pattern options, LLaVA-1.5's prompt;
    - ``vision`` + ``text``: ``from_backbones`` (fresh adapters, the paper's stage-1 start; ``text`` may name an
      installed base model such as ``smollm2-135m-instruct``), with ``chat_template`` replacing the tokenizer's.
    ``adapter_mlp`` (``mlp2x_gelu`` or ``linear``), ``adapter_attention_scope`` (``global`` or ``local``),
    ``adapter_region_bias`` (local only: the per-head place bias's start, or None) and ``high_res_fusion``
    (``cross-attention``, ``concat`` or ``stack``: ``SparseCutConfig``), ``reading_tokens`` and ``reading_layer``
    (``sparsecut.reading``) shape new adapters (backbones or LLaVA); ``reading_tower`` (a vision tower folder) then
    gives the model's reading tokens a tower of their own, with a fresh reading adapter
    (``sparsecut.convert.with_reading_tower``)."""
    model, processor = _loaded_model(model, vision, text, pattern, num_shortcuts, high_res, grid, adapter_attention,
                                     chat_template, adapter_mlp, adapter_attention_scope, adapter_region_bias,
                                     high_res_fusion, reading_tokens, reading_layer)
    if reading_tower is not None:
        with_reading_tower(model, reading_tower, model.dtype)
    return model, processor


def _loaded_model(model, vision, text, pattern, num_shortcuts, high_res, grid, adapter_attention, chat_template,
                  adapter_mlp, adapter_attention_scope, adapter_region_bias, high_res_fusion, reading_tokens,
                  reading_layer):
    if model is not None and (vision or text):
        raise ValueError("Give either --model or --vision and --text, not both.")
    if model is not None and chat_template is not None:
        raise ValueError("--chat-template applies to a new model (--vision and --text); a saved model keeps its own.")
    if model is None:
        if not (vision and text):
            raise ValueError("Give --model (a SparseCut or LLaVA checkpoint) or both --vision and --text (backbones).")
        return from_backbones(vision, text, pattern=pattern, num_shortcuts=num_shortcuts, high_res=high_res, high_res_grid=grid,
                              adapter_attention=adapter_attention, adapter_mlp=adapter_mlp, chat_template=chat_template,
                              adapter_attention_scope=adapter_attention_scope, adapter_region_bias=adapter_region_bias,
                              high_res_fusion=high_res_fusion, reading_tokens=reading_tokens, reading_layer=reading_layer)
    return load_checkpoint(model, **({} if checkpoint_kind(model) in ("shipped", "sparsecut") else
                                     dict(pattern=pattern, num_shortcuts=num_shortcuts, high_res=high_res, high_res_grid=grid,
                                          adapter_attention=adapter_attention, adapter_mlp=adapter_mlp,
                                          adapter_attention_scope=adapter_attention_scope,
                                          adapter_region_bias=adapter_region_bias, high_res_fusion=high_res_fusion,
                                          reading_tokens=reading_tokens, reading_layer=reading_layer)))
