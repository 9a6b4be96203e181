"""Training-step throughput: samples/s, tokens/s and peak memory for a model size and stage (random weights).

    python -m training.bench --preset paper-7b --stage 2 --batch 4 --steps 10 --json out.json   # on a GPU
    python -m training.bench --preset micro --stage 1                                           # anywhere

Stage 1 trains the adapters (ViT and LLM frozen); stage 2 the adapters and the LLM with gradient checkpointing.
Shapes are ``sparsecut.presets``' (paper-7b, small, micro).
Prints a table and writes JSON. A benchmark, not a test: numbers depend on the machine, which is recorded.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
import torch.nn.functional as F

from sparsecut import SparseCutForConditionalGeneration
from sparsecut.benchmarking import cpu_name, device_name, peak_memory_gb, write_json
from sparsecut.presets import ALIASES, preset_config
from sparsecut.vision import vision_hidden_states

from .data import IGNORE_INDEX
from .trainer import adamw, add_lora, apply_freezing
from .recipes import Recipe, load_recipe

# text tokens per sample at each stage (stage 1: a caption; stage 2: a conversation), for every sparsecut.presets shape
TEXT_TOKENS = {"llava-1.5-7b": {1: 64, 2: 400}, "llava-1.5-13b": {1: 64, 2: 400}, "qwen2.5-3b": {1: 64, 2: 400},
               "tiny": {1: 32, 2: 128}, "small": {1: 32, 2: 128}, "micro": {1: 16, 2: 64}}


def run(preset: str, stage: int, batch: int, steps: int, warmup: int, pattern: str, high_res: bool, device: str, dtype: str) -> dict:
    """One training step of preset ``preset``'s shape (random weights, synthetic batch), timed over ``steps``."""
    device_t = torch.device(device)
    config = preset_config(preset, pattern=pattern, high_res=high_res)
    text = TEXT_TOKENS[ALIASES.get(preset, preset)][stage]
    torch.manual_seed(0)
    with torch.device(device_t):
        model = SparseCutForConditionalGeneration(config)
    recipe = Recipe(train_modules=["adapters"] if stage == 1 else ["adapters", "language_model"], gradient_checkpointing=stage == 2)
    apply_freezing(model, recipe)
    if recipe.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    optimizer = adamw([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    seq = config.num_image_tokens + text
    input_ids = torch.randint(0, config.text_config.vocab_size - 2, (batch, seq), device=device_t)
    input_ids[input_ids == config.image_token_id] = 0  # placeholders only where the image's features go
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
        "text_tokens": text, "dtype": dtype, "device": device_name(device_t), "threads": torch.get_num_threads(),
        "trainable_params": trainable, "step_s": elapsed, "samples_per_s": batch / elapsed,
        "tokens_per_s": batch * seq / elapsed, "peak_memory_gb": peak_memory_gb(device_t),
    }


FAMILY_BASE = "smollm2-135m-instruct"


def family_model(base: str = FAMILY_BASE, pattern: str = "sparse-uniform", high_res: bool = True):
    """(model, processor): ``sparsecut-tiny``'s architecture (the family's tower shape, random weights) on the
    installed base LLM ``base`` (its real weights and tokenizer)."""
    import tempfile

    from transformers import CLIPVisionModel

    from sparsecut.convert import from_backbones

    from .tiny.tower import tower_config, tower_image_processor

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tower:
        CLIPVisionModel(tower_config()).save_pretrained(tower)
        tower_image_processor().save_pretrained(tower)
        return from_backbones(tower, base, pattern=pattern, high_res=high_res)


def family_batch(processor, stage: int, batch: int, template: str, high_res: bool, seed: int = 12345) -> dict:
    """``batch`` of the embedded family's real samples (stage 1: captions, stage 2: three-turn conversations),
    written, encoded and collated exactly as the training CLI reads them."""
    import os
    import tempfile

    from .data import collate_records, read_records
    from sparsecut.evaluation.synthetic.dataset import write_split

    with tempfile.TemporaryDirectory() as root:
        path = write_split(root, "bench", seed, batch, "pretrain" if stage == 1 else "instruct")
        return collate_records(read_records(path), processor, os.path.join(root, "images"), template, high_res)


def run_family(stage: int, batch: int, steps: int, warmup: int, dtype: str, supervised_only: bool, system_prompt: bool,
               lora: int = 0, fused: bool = True, model_and_processor=None) -> dict:
    """One training-step benchmark of ``sparsecut-tiny`` on SmolLM2 with real samples, one setting of each lever:
    ``dtype`` (autocast over fp32 weights), ``supervised_only`` (LM head only where a label is), ``system_prompt``
    (stage 2 in SmolLM2's template with its default system prompt, or in ChatML without it), ``lora`` (stage 2:
    the LLM trained through a LoRA of that rank, alpha twice the rank, on the ``stage2_lora`` recipe's layers,
    instead of in full; 0: in full), ``fused`` (AdamW's fused kernel
    instead of its multi-tensor one). Also reports the
    share of the step spent in the frozen tower's forward (what caching its features could save at most) and the
    share of padding tokens (what packing could save at most)."""
    from sparsecut.templates import CHATML_NO_DEFAULT_SYSTEM

    from .data import supervised_positions

    model, processor = model_and_processor or family_model()
    tokenizer = processor.tokenizer
    default_template = tokenizer.chat_template
    if stage == 2 and not system_prompt:
        tokenizer.chat_template = CHATML_NO_DEFAULT_SYSTEM
    try:
        data = family_batch(processor, stage, batch, "plain" if stage == 1 else "tokenizer", model.config.high_res)
    finally:
        tokenizer.chat_template = default_template
    if lora and stage == 2:
        recipe = load_recipe("stage2_lora")
        model = add_lora(copy.deepcopy(model), {**recipe.lora, "r": lora, "alpha": 2 * lora})
    else:
        recipe = Recipe(train_modules=["adapters"] if stage == 1 else ["adapters", "language_model"])
    apply_freezing(model, recipe)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = adamw(trainable, lr=1e-5) if fused else torch.optim.AdamW(trainable, lr=1e-5, foreach=True)
    labels = data.pop("labels")
    keep, targets = supervised_positions(labels)
    autocast = torch.autocast("cpu", dtype=getattr(torch, dtype), enabled=dtype != "float32")

    def step():
        with autocast:
            if supervised_only:
                logits = model(**data, use_cache=False, logits_to_keep=keep).logits
                loss = F.cross_entropy(logits.float(), targets)
            else:
                logits = model(**data, use_cache=False).logits
                loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    taps = {i for i, _ in model.config.shortcut_pairs}
    tower_of = next(m for n, m in model.named_modules() if n.endswith("vision_tower"))
    views = data["pixel_values"].flatten(0, 1)  # (I * N, 3, H, W)

    def tower():
        with torch.no_grad(), autocast:
            vision_hidden_states(tower_of, views, taps, drop_cls=True)

    for _ in range(warmup):
        step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    elapsed = (time.perf_counter() - started) / steps
    started = time.perf_counter()
    for _ in range(steps):
        tower()
    tower_s = (time.perf_counter() - started) / steps
    mask = data["attention_mask"]
    return {
        "preset": "sparsecut-tiny-smollm2", "stage": stage, "batch": batch, "seq_len": int(mask.shape[1]),
        "dtype": dtype, "supervised_only": supervised_only, "system_prompt": system_prompt if stage == 2 else None,
        "lora": lora if stage == 2 else None, "fused_adamw": fused, "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "device": cpu_name(), "threads": torch.get_num_threads(), "step_s": elapsed, "samples_per_s": batch / elapsed,
        "tokens_per_s": int(mask.sum()) / elapsed, "supervised_tokens": int(targets.numel()),
        "tower_share": tower_s / elapsed, "padding_share": 1 - float(mask.float().mean()),
        "peak_memory_gb": peak_memory_gb(torch.device("cpu")),
    }


# the family preset's settings, each lever added to the one before: (dtype, supervised_only, system_prompt, fused, lora)
FAMILY_SETTINGS = [("float32", False, True, False, False), ("bfloat16", False, True, False, False),
                   ("bfloat16", True, True, False, False), ("bfloat16", True, False, False, False),
                   ("bfloat16", True, False, True, False), ("bfloat16", True, False, True, True),
                   ("float32", True, False, True, False)]


def _chosen(rows: str | None) -> list[tuple]:
    """The lever settings named by 1-based row numbers ("5,6"), or all of them."""
    if not rows:
        return FAMILY_SETTINGS
    picked = [int(r) for r in rows.split(",")]
    if any(not 1 <= r <= len(FAMILY_SETTINGS) for r in picked):
        raise SystemExit(f"--settings takes rows 1..{len(FAMILY_SETTINGS)}; got {rows!r}.")
    return [FAMILY_SETTINGS[r - 1] for r in picked]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(TEXT_TOKENS) + sorted(ALIASES) + ["sparsecut-tiny-smollm2"], default="micro",
                        help="sparsecut-tiny-smollm2: the embedded family's architecture on the installed SmolLM2 with "
                        "its real samples, every speed lever on and off (CPU)")
    parser.add_argument("--stage", type=int, choices=(1, 2), nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--pattern", default="sparse-uniform")
    parser.add_argument("--high-res", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="bfloat16" if torch.cuda.is_available() else "float32")
    parser.add_argument("--lora-rank", type=int, default=128, help="sparsecut-tiny-smollm2: the LoRA row's rank "
                        "(default: the stage2_lora recipe's 128)")
    parser.add_argument("--settings", default=None, help="sparsecut-tiny-smollm2: comma-separated rows of the lever "
                        f"table to run, 1..{len(FAMILY_SETTINGS)} (default: all)")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    if args.preset == "sparsecut-tiny-smollm2":
        model_and_processor = family_model(pattern=args.pattern, high_res=args.high_res)
        results = [run_family(stage, args.batch, args.steps, args.warmup, dtype, supervised, system,
                              args.lora_rank if lora else 0, fused, model_and_processor)
                   for stage in args.stage for dtype, supervised, system, fused, lora in _chosen(args.settings)
                   if stage == 2 or not (lora or (not system and not fused))]  # stage 1: plain template, LLM frozen
        print(f"{'stage':>5} {'batch':>5} {'seq':>4} {'dtype':<9} {'head':<10} {'system':<6} {'AdamW':<8} {'LLM':<9} {'step s':>7} {'tokens/s':>9} "
              f"{'tower':>6} {'padding':>7}  device")
        for r in results:
            system = "-" if r["system_prompt"] is None else "yes" if r["system_prompt"] else "no"
            llm = "-" if r["lora"] is None else f"LoRA r{r['lora']}" if r["lora"] else "full"
            print(f"{r['stage']:>5} {r['batch']:>5} {r['seq_len']:>4} {r['dtype']:<9} "
                  f"{'labelled' if r['supervised_only'] else 'all':<10} {system:<6} {'fused' if r['fused_adamw'] else 'foreach':<8} {llm:<9} {r['step_s']:>7.2f} {r['tokens_per_s']:>9.0f} "
                  f"{r['tower_share']:>6.1%} {r['padding_share']:>7.1%}  {r['device']} ({r['threads']} threads)")
    else:
        results = [run(args.preset, s, args.batch, args.steps, args.warmup, args.pattern, args.high_res, args.device, args.dtype)
                   for s in args.stage]
        print(f"{'preset':<9} {'stage':>5} {'batch':>5} {'seq':>5} {'step s':>8} {'samples/s':>10} {'tokens/s':>10} {'peak GiB':>9}  device")
        for r in results:
            print(f"{r['preset']:<9} {r['stage']:>5} {r['batch']:>5} {r['seq_len']:>5} {r['step_s']:>8.3f} {r['samples_per_s']:>10.2f} "
                  f"{r['tokens_per_s']:>10.0f} {r['peak_memory_gb']:>9.2f}  {r['device']} ({r['dtype']})")
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
