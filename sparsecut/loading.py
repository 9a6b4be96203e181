"""One loader for every checkpoint SparseCut reads: ``load_checkpoint(spec)`` -> ``(model, processor)``.

``spec`` is a shipped name (``sparsecut.zoo``, e.g. ``sparsecut-tiny``), a SparseCut ``save_pretrained`` folder, or
an HF LLaVA checkpoint (a folder with ``model_type`` ``llava``, or a hub id). A LLaVA checkpoint becomes the
llava-mode SparseCut baseline (``convert.from_hf_llava``: same inputs, same logits) or, given ``pattern`` options, a
SparseCut model of that pattern initialised from it (``convert.init_from_llava``: how real training starts); its
processor uses LLaVA-1.5's ``vicuna_v1`` prompt unless ``template`` says otherwise. The app, the evaluation runner
and the training CLI all load through here.
"""

from __future__ import annotations

import os
import re

import torch


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # owner/name


def checkpoint_kind(spec: str) -> str:
    """``"shipped"``, ``"sparsecut"``, ``"llava"`` (a LLaVA folder) or ``"hub"`` (an owner/name id, taken as an HF
    LLaVA checkpoint); a ValueError saying what is wrong for anything else (a file, a missing path, a folder with
    another kind of checkpoint)."""
    from . import zoo
    from .convert import saved_model_type

    if zoo.is_known(spec):
        return "shipped"
    if not os.path.isdir(spec):
        if HUB_ID.match(spec) and not os.path.exists(spec):
            return "hub"
        if os.path.exists(spec):
            raise ValueError(f"{spec!r} is a file; pass the checkpoint's folder.")
        shipped = ", ".join(sorted(zoo.available())) or "none in this checkout"
        raise ValueError(f"Model {spec!r} is neither a folder, a hub id (owner/name) nor a shipped name (shipped: {shipped}).")
    kind = saved_model_type(spec)
    if kind in ("sparsecut", "llava"):
        return kind
    if kind is None:
        raise ValueError(f"{spec} has no config.json: it is not a checkpoint folder (a SparseCut save_pretrained "
                         "folder or an HF LLaVA folder).")
    raise ValueError(f"{spec} holds a {kind!r} checkpoint; expected a SparseCut (model_type 'sparsecut') or an HF "
                     "LLaVA (model_type 'llava') folder, or a shipped name.")


def load_checkpoint(spec: str, dtype: torch.dtype = torch.float32, template: str | None = None, **pattern):
    """(model, processor) for ``spec`` (see the module docstring), weights in ``dtype``. ``template`` replaces the
    processor's prompt template; ``pattern`` (``pattern``, ``num_shortcuts``, ``high_res``, ``high_res_grid``,
    ``adapter_attention``, ``adapter_attention_scope``, ``adapter_mlp``) applies to a LLaVA checkpoint only: without it, the llava-mode baseline."""
    from transformers import AutoImageProcessor, AutoTokenizer

    from . import zoo
    from .convert import from_hf_llava, init_from_llava
    from .model import SparseCutForConditionalGeneration
    from .processing import SparseCutProcessor

    kind = checkpoint_kind(spec)
    if kind in ("llava", "hub"):
        model = init_from_llava(spec, dtype=dtype, **pattern) if pattern else from_hf_llava(spec, dtype=dtype)
        processor = SparseCutProcessor.from_model_config(model.config, AutoImageProcessor.from_pretrained(spec),
                                                         AutoTokenizer.from_pretrained(spec),
                                                         template=template or "vicuna_v1")
        return model, processor
    path = zoo.resolve(spec) if kind == "shipped" else spec
    model = SparseCutForConditionalGeneration.from_pretrained(path, dtype=dtype)
    processor = SparseCutProcessor.from_pretrained(path)
    if template:
        processor.template = template
    return model, processor
