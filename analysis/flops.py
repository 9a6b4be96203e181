"""FLOPs and context length of one SparseCut forward, counted on the real module graph on the meta device.

    python -m analysis.flops --preset llava-1.5-7b --json
    python -m analysis.flops --config runs/stage2 --text-tokens 100 --pattern sparse-bottom --grid 3

One forward = one image and ``text_tokens`` text tokens, batch 1, logits at every position (a training or
scoring forward; ``generate`` computes the LM head on the last position only, so take ``lm_head`` out for a
prefill). Three modes of the same towers:

- ``llava``: LLaVA-1.5 (pattern ``(L_v - 1, 1)``, projector only), the low-res view: M_v visual tokens;
- ``concat``: LLaVA-1.5 with every view's tokens in the context: (1 + g^2) * M_v visual tokens;
- ``sparsecut``: the config's own shortcuts and adapters, the g*g crops fused by cross-attention: M_v tokens.

Counting: the model is built on ``torch.device("meta")`` (shapes, no weights) and its parts run under
``torch.utils.flop_counter.FlopCounterMode``, which counts matrix products, convolutions and attention
(SDPA, eager or decomposed) from the operands' shapes. A multiply-add counts as 2 FLOPs; element-wise work
(norms, activations, softmax, residual and injection adds) is not counted; causal attention is counted as
full (the masked half is computed by the kernels). ``vision`` = the tower up to the deepest ViT layer any
shortcut reads (LLaVA never runs the last layer), all views in one pass; ``adapter`` = every active
shortcut's adapter; ``llm_body`` = the decoder layers (and final norm), as a prefill with a fresh KV cache;
``lm_head`` = the output projection.

The paper (§3.3) quotes 8.04T / 43.62T / 9.6T for LLaVA-1.5-7B, counting the vision tower and the LLM
decoder body on the 576 visual tokens (no text): ``paper_count`` below is that sum, with text_tokens=0.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import threading

import torch
from torch.utils.flop_counter import FlopCounterMode

from sparsecut import SparseCutConfig, SparseCutForConditionalGeneration
from sparsecut.config import pattern_config

from sparsecut.presets import PRESETS, preset_config

MODES = ("llava", "concat", "sparsecut")
# LLaVA-1.5's vicuna_v1 prompt (system line, USER:/ASSISTANT:, ~42 tokens) around a VQAv2 question with its
# short-answer instruction (~22 tokens)
DEFAULT_TEXT_TOKENS = 64
PAPER_PRESET = "llava-1.5-7b"
PAPER_FLOPS = {"llava": 8.04e12, "concat": 43.62e12, "sparsecut": 9.6e12}  # §3.3: vision + LLM body, 576 visual tokens

# one count at a time: FlopCounterMode's module tracker uses global module hooks, and the cached meta models are shared
_LOCK = threading.Lock()


def mode_config(config: SparseCutConfig, mode: str) -> SparseCutConfig:
    """The config of ``mode`` built from ``config``'s towers. The high-res views of ``concat`` and ``sparsecut``
    are the config's (``high_res``, ``high_res_grid``); ``sparsecut`` keeps the config's shortcuts and adapters
    (and reading tokens, if any), the two LLaVA modes have none."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}.")
    llava = dict(shortcuts=[config.llava_shortcut], pattern="llava", num_shortcuts=None, adapter_attention=False,
                 reading_tokens=0, reading_layer=None, reading_tower=False)
    if mode == "llava":
        return pattern_config(config, high_res=False, **llava)
    if mode == "concat":
        return pattern_config(config, high_res_fusion="concat", **llava)
    return pattern_config(config, high_res_fusion="cross-attention")


def forward_flops(config: SparseCutConfig, mode: str, text_tokens: int = 0) -> dict:
    """FLOPs of one forward (one image, ``text_tokens`` text tokens) of ``config`` in ``mode``, by part.

    Returns {"vision", "adapter", "llm_body", "lm_head", "total": FLOPs (int, a multiply-add = 2),
    "context_length": visual + text tokens in the LLM context}. Results are cached per (config, mode, text_tokens),
    and the meta model per config: a repeated call is a look-up, a new text length counts the LLM part only."""
    if not isinstance(config, SparseCutConfig):
        raise TypeError(f"config must be a SparseCutConfig; got {type(config).__name__}.")
    if not isinstance(text_tokens, int) or isinstance(text_tokens, bool) or text_tokens < 0:
        raise ValueError(f"text_tokens must be an integer >= 0; got {text_tokens!r}.")
    built = mode_config(config, mode)
    key = built.to_json_string(use_diff=False)
    context = built.num_image_tokens + text_tokens
    vision, adapter = _image_flops(key)
    llm_body, lm_head = _text_flops(key, context)
    parts = dict(vision=vision, adapter=adapter, llm_body=llm_body, lm_head=lm_head)
    return {**parts, "total": sum(parts.values()), "context_length": context}


@functools.lru_cache(maxsize=8)
def _meta_model(key: str) -> SparseCutForConditionalGeneration:
    """The model of a config (given as its JSON), on the meta device, with SDPA attention (counted by FlopCounterMode
    on every device; flash kernels cannot run on meta)."""
    data = json.loads(key)
    for field in ("model_type", "transformers_version", "architectures"):
        data.pop(field, None)
    config = SparseCutConfig(**data)
    config._attn_implementation = "sdpa"
    with torch.device("meta"):
        return SparseCutForConditionalGeneration(config).eval()


@functools.lru_cache(maxsize=64)
def _image_flops(key: str) -> tuple[int, int]:
    """(vision, adapter) FLOPs for one image: independent of the text length."""
    with _LOCK, torch.no_grad():
        model = _meta_model(key)
        size = model.config.vision_config.image_size
        pixel_values = torch.empty(1, model.config.num_views, 3, size, size, device="meta")  # (I, N, 3, H, W)
        return _shortcut_feature_flops(model, pixel_values)


@functools.lru_cache(maxsize=256)
def _text_flops(key: str, context: int) -> tuple[int, int]:
    """(llm_body, lm_head) FLOPs for a context of ``context`` tokens."""
    with _LOCK, torch.no_grad():
        model = _meta_model(key)
        embeds = torch.empty(1, context, model.config.text_config.hidden_size, device="meta")  # (B, T, Dt)
        with FlopCounterMode(display=False) as body:
            # use_cache: a prefill, as generate() runs it (without a cache transformers inspects position_ids' values)
            hidden = model.model.language_model(inputs_embeds=embeds, use_cache=True).last_hidden_state
        with FlopCounterMode(display=False) as head:
            model.lm_head(hidden)
        return body.get_total_flops(), head.get_total_flops()


def _shortcut_feature_flops(model: SparseCutForConditionalGeneration, pixel_values: torch.Tensor) -> tuple[int, int]:
    """(vision, adapter) FLOPs of ``get_visual_features``: the whole call is counted, each adapter call (the reading
    adapter's too) is recorded and counted again on its own; the tower's share is the difference."""
    calls = []
    reading = [model.model.reading_adapter] if model.model.reading_adapter is not None else []
    handles = [
        adapter.register_forward_hook(lambda module, args, kwargs, out: calls.append((module, args, kwargs)), with_kwargs=True)
        for adapter in [*model.model.adapters.values(), *reading]
    ]
    try:
        with FlopCounterMode(display=False) as counter:
            model.model.get_visual_features(pixel_values)
    finally:
        for handle in handles:
            handle.remove()
    with FlopCounterMode(display=False) as adapters:
        for module, args, kwargs in calls:
            module(*args, **kwargs)
    return counter.get_total_flops() - adapters.get_total_flops(), adapters.get_total_flops()


def paper_count(config: SparseCutConfig, mode: str) -> int:
    """What the paper's §3.3 figures count: vision tower + LLM decoder body on the visual tokens alone."""
    flops = forward_flops(config, mode, text_tokens=0)
    return flops["vision"] + flops["llm_body"]


def load_config(path: str) -> SparseCutConfig:
    """A SparseCut config from a ``config.json`` or a model folder holding one. An HF LLaVA config is read as its
    towers with SparseCut's defaults (sparse-uniform, 2x2 crops fused by cross-attention)."""
    from transformers import LlavaConfig

    from sparsecut.convert import sparsecut_config_from_llava

    file = os.path.join(path, "config.json") if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise FileNotFoundError(f"No config at {path!r}: give a config.json or a model folder that holds one.")
    try:
        with open(file, encoding="utf-8") as handle:
            data = json.load(handle)
    except json.JSONDecodeError as error:
        raise ValueError(f"{file} is not valid JSON: {error}") from None
    model_type = data.get("model_type") if isinstance(data, dict) else None
    if model_type == "sparsecut":
        return SparseCutConfig.from_json_file(file)
    if model_type == "llava":
        llava = LlavaConfig.from_json_file(file)
        return sparsecut_config_from_llava(
            llava, shortcuts=None, pattern="sparse-uniform", high_res=True, high_res_grid=2, adapter_attention=True
        )
    raise ValueError(f"{file} has model_type {model_type!r}; expected a SparseCut ('sparsecut') or HF LLaVA ('llava') config.")


def report(config: SparseCutConfig, text_tokens: int, paper: dict | None = None) -> dict:
    """Every mode's FLOPs (``forward_flops``), its ``paper_count`` and, when ``paper`` gives them, the paper's
    figures and our difference; plus the cost ratios between modes."""
    modes = {}
    for mode in MODES:
        entry = forward_flops(config, mode, text_tokens)
        entry["paper_count"] = paper_count(config, mode)
        if paper is not None:
            entry["paper_reported"] = paper[mode]
            entry["paper_difference"] = entry["paper_count"] / paper[mode] - 1
        modes[mode] = entry
    return {
        "flops_per_multiply_add": 2,
        "text_tokens": text_tokens,
        "shortcuts": ",".join(f"{i}:{j}" for i, j in config.shortcut_pairs),
        "high_res_grid": config.high_res_grid if config.high_res else 1,
        "modes": modes,
        "ratios": {
            "concat/sparsecut": modes["concat"]["total"] / modes["sparsecut"]["total"],
            "sparsecut/llava": modes["sparsecut"]["total"] / modes["llava"]["total"],
            "concat/llava": modes["concat"]["total"] / modes["llava"]["total"],
        },
    }


def format_table(result: dict) -> str:
    """The report as a text table."""
    head = f"{'mode':<10} {'context':>7} {'vision':>9} {'adapter':>9} {'LLM body':>9} {'LM head':>9} {'total':>9}  {'paper count':>11}"
    paper = "paper_reported" in result["modes"]["llava"]
    largest = max(e["total"] for e in result["modes"].values())
    scale, unit = next((s, u) for s, u in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1, "")) if largest >= s or s == 1)

    def _tera(flops: float) -> str:
        return f"{flops / scale:.3f}{unit}"

    if paper:
        head += f" {'paper':>8} {'diff':>6}"
    lines = [
        (f"{result['source']}: one forward, 1 image + {result['text_tokens']} text tokens, 1 multiply-add = 2 FLOPs; "
         f"sparsecut shortcuts {result['shortcuts']}, grid {result['high_res_grid']}"),
        head,
    ]
    for mode, e in result["modes"].items():
        line = (f"{mode:<10} {e['context_length']:>7} {_tera(e['vision']):>9} {_tera(e['adapter']):>9} {_tera(e['llm_body']):>9} "
                f"{_tera(e['lm_head']):>9} {_tera(e['total']):>9}  {_tera(e['paper_count']):>11}")
        if paper:
            line += f" {_tera(e['paper_reported']):>8} {e['paper_difference']:>+6.1%}"
        lines.append(line)
    lines.append("paper count = vision + LLM body on the visual tokens only (text_tokens=0), as the paper counts (§3.3).")
    lines.append("total FLOPs ratios: " + ", ".join(f"{k} {v:.2f}x" for k, v in result["ratios"].items()))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m analysis.flops", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--preset", choices=sorted(PRESETS), help=f"a published shape (default {PAPER_PRESET})")
    source.add_argument("--config", metavar="PATH", help="a SparseCut (or HF LLaVA) config.json, or a model folder")
    parser.add_argument("--text-tokens", type=int, default=DEFAULT_TEXT_TOKENS,
                        help=f"text tokens besides the image (default {DEFAULT_TEXT_TOKENS}: LLaVA-1.5's prompt around a VQAv2 question)")
    parser.add_argument("--pattern", help="sparsecut mode's shortcuts: a pattern name or 'i:j,...' (default: the config's)")
    parser.add_argument("--grid", type=int, help="high-res grid g: g*g crops (1 = the low-res view only; default: the config's)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if args.text_tokens < 0:
        parser.error(f"--text-tokens must be >= 0; got {args.text_tokens}.")
    if args.grid is not None and args.grid < 1:
        parser.error(f"--grid must be >= 1; got {args.grid}.")
    try:
        if args.config:
            config, label = load_config(args.config), f"config {args.config}"
        else:
            name = args.preset or PAPER_PRESET
            config, label = preset_config(name), f"preset {name}"
        if args.pattern:
            config = pattern_config(config, pattern=args.pattern, shortcuts=None, num_shortcuts=None)
        if args.grid is not None:
            config = pattern_config(config, high_res=args.grid > 1, high_res_grid=args.grid)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    paper = PAPER_FLOPS if label == f"preset {PAPER_PRESET}" and not args.pattern and args.grid in (None, 2) else None
    result = {"source": label, **report(config, args.text_tokens, paper)}
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
