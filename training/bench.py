"""Training-step throughput: samples/s, tokens/s and peak memory for a model size and stage (random weights).

    python -m training.bench --preset paper-7b --stage 2 --batch 4 --steps 10 --json out.json   # on a GPU
    python -m training.bench --preset tiny --stage 1                                            # anywhere

Stage 1 trains the adapters (ViT and LLM frozen); stage 2 the adapters and the LLM with gradient checkpointing.
Prints a table and writes JSON. A benchmark, not a test: numbers depend on the machine, which is recorded.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time

import torch
import torch.nn.functional as F

from sparsecut import SparseCutConfig, SparseCutForConditionalGeneration

from .data import IGNORE_INDEX
from .engine import apply_freezing
from .recipes import Recipe

PRESETS = {
    # CLIP-ViT-L/14-336 + a Llama-2-7B-shaped LLM (Vicuna-7B), the paper's main setting
    "paper-7b": dict(
        vision=dict(model_type="clip_vision_model", hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                    num_attention_heads=16, image_size=336, patch_size=14, projection_dim=768),
        text=dict(model_type="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=32, vocab_size=32064),
        text_tokens={1: 64, 2: 400},
    ),
    # a small model that runs on a laptop CPU in seconds per step
    "small": dict(
        vision=dict(model_type="clip_vision_model", hidden_size=256, intermediate_size=1024, num_hidden_layers=8,
                    num_attention_heads=4, image_size=112, patch_size=14),
        text=dict(model_type="llama", hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
                  num_attention_heads=8, num_key_value_heads=8, vocab_size=8000),
        text_tokens={1: 32, 2: 128},
    ),
    "tiny": dict(
        vision=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=6,
                    num_attention_heads=4, image_size=16, patch_size=4),
        text=dict(model_type="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=8,
                  num_attention_heads=4, num_key_value_heads=2, vocab_size=128),
        text_tokens={1: 16, 2: 64},
    ),
}


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (the platform's processor string elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def _peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux -> GiB (whole process)


def run(preset: str, stage: int, batch: int, steps: int, warmup: int, pattern: str, high_res: bool, device: str, dtype: str) -> dict:
    spec = PRESETS[preset]
    device_t = torch.device(device)
    config = SparseCutConfig(
        vision_config=spec["vision"], text_config=spec["text"], pattern=pattern, high_res=high_res,
        image_token_id=spec["text"]["vocab_size"] - 1,
    )
    torch.manual_seed(0)
    with torch.device(device_t):
        model = SparseCutForConditionalGeneration(config)
    recipe = Recipe(train_modules=["adapters"] if stage == 1 else ["adapters", "language_model"], gradient_checkpointing=stage == 2)
    apply_freezing(model, recipe)
    if recipe.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    text = spec["text_tokens"][stage]
    seq = config.num_image_tokens + text
    input_ids = torch.randint(0, config.text_config.vocab_size - 2, (batch, seq), device=device_t)
    input_ids[:, 1 : 1 + config.num_image_tokens] = config.image_token_id
    labels = input_ids.masked_fill(input_ids == config.image_token_id, IGNORE_INDEX)
    size = config.vision_config.image_size
    pixel_values = torch.randn(batch, config.num_views, 3, size, size, device=device_t)
    autocast = torch.autocast(device_t.type, dtype=getattr(torch, dtype), enabled=dtype != "float32")

    def step():
        with autocast:
            logits = model(input_ids=input_ids, pixel_values=pixel_values, use_cache=False).logits
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    if device_t.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device_t)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device_t.type == "cuda":
        torch.cuda.synchronize()
    elapsed = (time.perf_counter() - started) / steps
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "preset": preset, "stage": stage, "pattern": pattern, "high_res": high_res, "batch": batch, "seq_len": seq,
        "dtype": dtype, "device": torch.cuda.get_device_name(device_t) if device_t.type == "cuda" else cpu_name(),
        "threads": torch.get_num_threads(), "trainable_params": trainable, "step_s": elapsed,
        "samples_per_s": batch / elapsed, "tokens_per_s": batch * seq / elapsed, "peak_memory_gb": _peak_memory_gb(device_t),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--stage", type=int, choices=(1, 2), nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--pattern", default="sparse-uniform")
    parser.add_argument("--high-res", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="bfloat16" if torch.cuda.is_available() else "float32")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    results = [run(args.preset, s, args.batch, args.steps, args.warmup, args.pattern, args.high_res, args.device, args.dtype) for s in args.stage]
    print(f"{'preset':<9} {'stage':>5} {'batch':>5} {'seq':>5} {'step s':>8} {'samples/s':>10} {'tokens/s':>10} {'peak GiB':>9}  device")
    for r in results:
        print(f"{r['preset']:<9} {r['stage']:>5} {r['batch']:>5} {r['seq_len']:>5} {r['step_s']:>8.3f} {r['samples_per_s']:>10.2f} "
              f"{r['tokens_per_s']:>10.0f} {r['peak_memory_gb']:>9.2f}  {r['device']} ({r['dtype']})")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
