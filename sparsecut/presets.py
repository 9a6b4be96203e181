"""Model shapes for the cost tools: the FLOPs counter (``analysis.flops``) and the benchmarks (``analysis.bench``,
``training.bench``): one table, so a preset name means one shape everywhere.

Only the fields that set the cost are given (widths, depths, heads, vocabulary, image and patch size); the
published checkpoints' other fields (RoPE base, norm epsilon, ...) do not change a FLOP or a timing.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import SparseCutConfig

# openai/clip-vit-large-patch14-336: 577 tokens per view (576 patches + CLS)
CLIP_VIT_L_336 = dict(
    model_type="clip_vision_model", hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
    num_attention_heads=16, image_size=336, patch_size=14, projection_dim=768,
)
# lmsys/vicuna-7b-v1.5 as in llava-hf/llava-1.5-7b-hf: Vicuna's 32000 tokens + <image> padded to 32064
VICUNA_7B = dict(
    model_type="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=32, vocab_size=32064, max_position_embeddings=4096,
)
# lmsys/vicuna-13b-v1.5 as in llava-hf/llava-1.5-13b-hf
VICUNA_13B = dict(
    model_type="llama", hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
    num_key_value_heads=40, vocab_size=32064, max_position_embeddings=4096,
)
# Qwen/Qwen2.5-3B (config.json on the hub): grouped-query attention with 2 KV heads, tied embeddings
QWEN25_3B = dict(
    model_type="qwen2", hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
    num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, max_position_embeddings=32768,
)


@dataclass(frozen=True)
class Preset:
    vision: dict
    text: dict
    image_token_id: int  # the <image> placeholder id (LLaVA-1.5-hf: 32000; Qwen2.5: <|image_pad|>)
    note: str


PRESETS = {
    "llava-1.5-7b": Preset(CLIP_VIT_L_336, VICUNA_7B, 32000, "CLIP-ViT-L/14-336 + Vicuna-7B (the paper's main setting)"),
    "llava-1.5-13b": Preset(CLIP_VIT_L_336, VICUNA_13B, 32000, "CLIP-ViT-L/14-336 + Vicuna-13B"),
    "qwen2.5-3b": Preset(CLIP_VIT_L_336, QWEN25_3B, 151655, "CLIP-ViT-L/14-336 + Qwen2.5-3B"),
    # CPU benchmark: big enough that a prefill takes tens of milliseconds on two cores, small enough to repeat often
    "tiny": Preset(
        dict(model_type="clip_vision_model", hidden_size=128, intermediate_size=512, num_hidden_layers=4,
             num_attention_heads=4, image_size=64, patch_size=8),
        dict(model_type="llama", hidden_size=256, intermediate_size=688, num_hidden_layers=8, num_attention_heads=4,
             num_key_value_heads=4, vocab_size=2048),
        2047, "ViT 4x128 (64 px, patch 8: 64 tokens per view) + Llama 8x256",
    ),
    # a small model that trains on a laptop CPU in seconds per step
    "small": Preset(
        dict(model_type="clip_vision_model", hidden_size=256, intermediate_size=1024, num_hidden_layers=8,
             num_attention_heads=4, image_size=112, patch_size=14),
        dict(model_type="llama", hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8,
             num_key_value_heads=8, vocab_size=8000),
        7999, "ViT 8x256 (112 px, patch 14) + Llama 8x512",
    ),
    # the test suite's size: every part runs in milliseconds
    "micro": Preset(
        dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=3,
             num_attention_heads=4, image_size=16, patch_size=4),
        dict(model_type="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=128),
        127, "ViT 3x32 (16 px, patch 4) + Llama 4x32",
    ),
}
ALIASES = {"paper-7b": "llava-1.5-7b"}  # the benchmarks' name for the paper's shape


def preset_config(name: str, **overrides) -> SparseCutConfig:
    """A SparseCut config for a preset: sparse-uniform shortcuts, 2x2 high-res crops fused by cross-attention,
    unless ``overrides`` (any ``SparseCutConfig`` field) say otherwise."""
    preset = PRESETS.get(ALIASES.get(name, name))
    if preset is None:
        raise ValueError(f"Unknown preset {name!r}; choose one of {', '.join(list(PRESETS) + list(ALIASES))}.")
    fields = dict(
        vision_config=dict(preset.vision), text_config=dict(preset.text), image_token_id=preset.image_token_id,
        pattern="sparse-uniform", high_res=True, high_res_grid=2,
    )
    fields.update(overrides)
    return SparseCutConfig(**fields)
