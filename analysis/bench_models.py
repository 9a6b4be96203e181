"""``analysis.bench``'s models and inputs: HF LLaVA and the three modes sharing one backbone, random inputs, a
prefill call and its FLOPs, and the GPU memory a call takes."""

from __future__ import annotations

import contextlib
import gc

import torch
from transformers import LlavaConfig, LlavaForConditionalGeneration

from sparsecut import SparseCutConfig, SparseCutForConditionalGeneration
from sparsecut.benchmarking import synchronize

from .flops import forward_flops


def peak_memory_mib(call, device: torch.device) -> float | None:
    """GPU memory a call allocates at its peak above what was allocated before it (MiB); None on CPU."""
    if device.type != "cuda":
        return None
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    call()
    synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_hf_llava(config: SparseCutConfig, device: torch.device, dtype: torch.dtype) -> LlavaForConditionalGeneration:
    """An HF LLaVA-1.5 with ``config``'s towers and random weights (penultimate ViT layer, CLS dropped)."""
    llava_config = LlavaConfig(
        vision_config=config.vision_config.to_dict(), text_config=config.text_config.to_dict(),
        image_token_index=config.image_token_id, image_seq_length=config.image_seq_length,
        vision_feature_layer=-2, vision_feature_select_strategy="default",
    )
    torch.manual_seed(0)
    with torch.device(device):
        return LlavaForConditionalGeneration._from_config(llava_config, dtype=dtype).eval()


def sharing_backbone(config: SparseCutConfig, base: SparseCutForConditionalGeneration, device, dtype) -> SparseCutForConditionalGeneration:
    """A model for ``config`` whose vision tower, LLM and head are ``base``'s (new adapters only). Each such model
    registers its own injection pre-hooks on the shared decoder layers; all but the first are no-ops."""
    with torch.device(device), default_dtype(dtype):
        model = SparseCutForConditionalGeneration(
            config, vision_tower=base.model.vision_tower, language_model=base.model.language_model, lm_head=base.lm_head
        )
    return model.eval()


def make_inputs(config: SparseCutConfig, batch: int, text_tokens: int, device, dtype, high_res: bool = True) -> dict:
    """input_ids (B, T) = one token, the image placeholders, then the question; pixel_values (B, N, 3, S, S)
    with the config's views (the low-res view alone when ``high_res`` is False or the config has none)."""
    views = config.num_views if high_res else 1
    image_tokens = config.tokens_per_image(views > 1)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, config.image_token_id, (batch, text_tokens + image_tokens), generator=generator)
    ids[:, 1 : 1 + image_tokens] = config.image_token_id
    size = config.vision_config.image_size
    pixels = torch.randn(batch, views, 3, size, size, generator=generator)
    return {
        "input_ids": ids.to(device),
        "attention_mask": torch.ones_like(ids).to(device),
        "pixel_values": pixels.to(device, dtype),
    }


def prefill_call(model, inputs: dict):
    """One prefill as ``generate`` runs it: a fresh KV cache, logits at the last position only."""
    return lambda: model(**inputs, use_cache=True, logits_to_keep=1)


def prefill_flops(config: SparseCutConfig, mode: str, text_tokens: int) -> int:
    """FLOPs of one prefill (``analysis.flops``), with the LM head on the last position only."""
    flops = forward_flops(config, mode, text_tokens)
    return flops["vision"] + flops["adapter"] + flops["llm_body"] + flops["lm_head"] // flops["context_length"]
