"""``analysis.bench``'s parts: prefill, overhead (against HF LLaVA; the injection's share), generation, training
(``python -m training.bench`` as a command) and scaling (shortcut count, high-res grid)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

from sparsecut import SparseCutForConditionalGeneration, injection
from sparsecut.benchmarking import interleaved, summary
from sparsecut.config import pattern_config
from sparsecut.patterns import make_pattern
from sparsecut.presets import preset_config

from .bench_models import free_memory, make_inputs, peak_memory_mib, prefill_call, prefill_flops, sharing_backbone
from .flops import forward_flops

MODES = ("llava", "concat", "sparsecut")
SHORTCUT_COUNTS = (1, 2, 4, 8, 16, 24)
GRIDS = (1, 2, 3)


def bench_hf_llava(hf, llava, settings) -> dict:
    """llava mode against HF LLaVA with the same weights: prefill times, their ratio, the largest logit difference."""
    device, dtype, text = settings["device"], settings["dtype"], settings["text_tokens"]
    inputs = make_inputs(llava.config, 1, text, device, dtype, high_res=False)
    hf_inputs = dict(inputs, pixel_values=inputs["pixel_values"][:, 0])  # (B, 3, S, S)
    with torch.inference_mode():
        difference = (llava(**inputs).logits.float() - hf(**hf_inputs).logits.float()).abs().max().item()
        times = interleaved({"hf_llava": prefill_call(hf, hf_inputs), "llava": prefill_call(llava, inputs)},
                            settings["repeats"], settings["warmup"], device)
    hf_s, ours = summary(times["hf_llava"]), summary(times["llava"])
    return {"hf": hf_s, "llava": ours, "ratio": ours["median_ms"] / hf_s["median_ms"], "max_logit_difference": difference}


def bench_injection(sparse: SparseCutForConditionalGeneration, settings) -> dict:
    """Share of the LLM's prefill time spent on injection (eq. 4): the median over rounds of (with - without),
    each round timing both back to back, over the median time with injection."""
    with torch.inference_mode():
        times = _injection_times(sparse, settings)
    with_s, without = summary(times["with_injection"]), summary(times["without_injection"])
    difference = summary(list(np.subtract(times["with_injection"], times["without_injection"])))  # paired by round
    return {
        "with_injection": with_s, "without_injection": without, "difference": difference,
        "share": difference["median_ms"] / with_s["median_ms"], "shortcuts": len(sparse.config.shortcut_pairs),
    }


def _injection_times(sparse: SparseCutForConditionalGeneration, settings) -> dict[str, list[float]]:
    """The LLM alone on the same input embeddings, with and without the pattern's additions (eq. 4)."""
    device, dtype = settings["device"], settings["dtype"]
    config = sparse.config
    M, width = config.image_seq_length, config.text_config.hidden_size
    T = M + settings["text_tokens"]
    generator = torch.Generator().manual_seed(1)
    embeds = torch.randn(1, T, width, generator=generator).to(device, dtype)  # (B, T, Dt)
    positions = (torch.zeros(M, dtype=torch.long, device=device), torch.arange(1, 1 + M, device=device))
    features = {s: torch.randn(M, width, generator=generator).to(device, dtype) for s in config.shortcut_pairs}
    per_layer = injection.plan(features)  # {layer index: (T_vis, Dt)}
    lm = sparse.model.language_model
    mask = torch.ones(1, T, dtype=torch.long, device=device)

    def with_injection():
        h, deeper = injection.inject(embeds, positions, per_layer)
        extra = {injection.INJECTION_KWARG: deeper} if deeper is not None else {}
        lm(inputs_embeds=h, attention_mask=mask, use_cache=True, **extra)

    def without_injection():
        lm(inputs_embeds=embeds, attention_mask=mask, use_cache=True)

    calls = {"with_injection": with_injection, "without_injection": without_injection}
    return interleaved(calls, settings["repeats"], settings["warmup"], device)


def bench_prefill(models: dict, settings) -> dict:
    """Prefill latency, memory and FLOPs of the three modes, interleaved."""
    device, dtype, text = settings["device"], settings["dtype"], settings["text_tokens"]
    inputs = {mode: make_inputs(models[mode].config, 1, text, device, dtype) for mode in MODES}
    calls = {mode: prefill_call(models[mode], inputs[mode]) for mode in MODES}
    with torch.inference_mode():
        times = interleaved(calls, settings["repeats"], settings["warmup"], device)
        memory = {mode: peak_memory_mib(calls[mode], device) for mode in MODES}
    result = {}
    for mode in MODES:
        config = models[mode].config
        result[mode] = {
            **summary(times[mode]), "peak_memory_mib": memory[mode],
            "context_length": inputs[mode]["input_ids"].shape[1], "flops": prefill_flops(config, mode, text),
        }
    def ratio(a: str, b: str, key: str) -> float:
        return result[a][key] / result[b][key]

    return {
        "modes": result,
        "ratios": {pair: ratio(*pair.split("/"), "median_ms") for pair in ("sparsecut/llava", "concat/sparsecut")},
        "flops_ratios": {pair: ratio(*pair.split("/"), "flops") for pair in ("sparsecut/llava", "concat/sparsecut")},
    }


def bench_generation(models: dict, settings) -> list[dict]:
    """Time to first token (``generate`` of 1 token) and decode throughput per mode and batch size (greedy, fixed
    length). Decode time = generate(N) - generate(1), paired within each round, median over rounds."""
    device, dtype, text, new = settings["device"], settings["dtype"], settings["text_tokens"], settings["new_tokens"]
    rows = []
    for batch in settings["batches"]:
        try:
            inputs = {mode: make_inputs(models[mode].config, batch, text, device, dtype) for mode in MODES}
            calls = {}
            for mode in MODES:
                calls[f"{mode}/first"] = _generate_call(models[mode], inputs[mode], 1)
                calls[f"{mode}/all"] = _generate_call(models[mode], inputs[mode], new)
            times = interleaved(calls, settings["generation_repeats"], min(settings["warmup"], 1), device)
            memory = {mode: peak_memory_mib(calls[f"{mode}/all"], device) for mode in MODES}
        except torch.cuda.OutOfMemoryError:
            free_memory(device)
            rows.extend({"mode": mode, "batch": batch, "error": "out of memory"} for mode in MODES)
            continue
        for mode in MODES:
            first, whole = summary(times[f"{mode}/first"]), summary(times[f"{mode}/all"])
            decode_s = float(np.median(np.subtract(times[f"{mode}/all"], times[f"{mode}/first"])))
            rows.append({
                "mode": mode, "batch": batch, "new_tokens": new, "time_to_first_token_ms": first["median_ms"],
                "first_token": first, "generate": whole, "peak_memory_mib": memory[mode],
                "decode_tokens_per_s": batch * (new - 1) / decode_s if decode_s > 0 else None,
                "tokens_per_s": batch * new / (whole["median_ms"] / 1e3),
            })
    return rows


def _generate_call(model, inputs: dict, new_tokens: int):
    options = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    return lambda: model.generate(**inputs, **options)


def bench_training(settings) -> list[dict]:
    """``python -m training.bench`` steps for stages 1 and 2 (run as a command, one process per stage: this package
    does not import the trainer), with MFU: the FLOPs a step needs (``analysis.flops``, forward counted on the
    module graph) over the step time and the device's peak. Backward = 2x forward for trained weights (input +
    weight gradients), 1x for frozen ones the gradient flows through, 0 for the ViT."""
    preset, batch = settings["train_preset"], settings["train_batch"]
    config = preset_config(preset)  # what training.bench builds
    rows = []
    for stage in (1, 2):
        with tempfile.TemporaryDirectory() as folder:
            out = os.path.join(folder, "train.json")
            command = [sys.executable, "-m", "training.bench", "--preset", preset, "--stage", str(stage),
                       "--batch", str(batch), "--steps", str(settings["train_steps"]),
                       "--warmup", str(settings["train_warmup"]), "--device", str(settings["device"]),
                       "--dtype", settings["dtype_name"], "--json", out]
            env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
            done = subprocess.run(command, capture_output=True, text=True, env=env)
            if done.returncode != 0:  # e.g. out of memory at this batch
                rows.append({"preset": preset, "stage": stage, "batch": batch, "error": done.stderr.strip()[-300:]})
                continue
            with open(out, encoding="utf-8") as handle:
                result = json.load(handle)[0]
        f = forward_flops(config, "sparsecut", result["text_tokens"])
        llm = 2 if stage == 1 else 3  # frozen LLM and head in stage 1, trained in stage 2
        step_flops = batch * (f["vision"] + 3 * f["adapter"] + llm * (f["llm_body"] + f["lm_head"]))
        peak = settings["peak_tflops"]
        result.update(model_flops_per_step=step_flops,
                      mfu=step_flops / result["step_s"] / (peak * 1e12) if peak else None)
        rows.append(result)
    return rows


def _shortcut_sweep(vision_layers: int, llm_layers: int) -> list[tuple[int, str, list]]:
    """(count, pattern, pairs): sparse-uniform with 1 ... L_v - 1 shortcuts (the counts of SHORTCUT_COUNTS that fit, and
    L_v - 1), then dense-uniform's L_v."""
    counts = sorted({n for n in SHORTCUT_COUNTS if n < vision_layers} | {vision_layers - 1})
    sweep = [(n, "sparse-uniform", make_pattern("sparse-uniform", vision_layers, llm_layers, n)) for n in counts]
    return sweep + [(vision_layers, "dense-uniform", make_pattern("dense-uniform", vision_layers, llm_layers))]


def bench_scaling(models: dict, settings) -> dict:
    """Prefill time and FLOPs against the number of shortcuts and against the high-res grid."""
    shortcuts = _shortcuts_sweep(models, settings)
    free_memory(settings["device"])  # the sweep's adapters
    return {"shortcuts": shortcuts, "grid": _grid_sweep(models, settings)}


def _shortcuts_sweep(models: dict, settings) -> list[dict]:
    """One model holding every shortcut of the sweep (sharing the backbone); each point runs a subset of them."""
    device, dtype, text = settings["device"], settings["dtype"], settings["text_tokens"]
    base = models["sparsecut"].config
    sweep = _shortcut_sweep(base.vision_config.num_hidden_layers, base.text_config.num_hidden_layers)
    union = sorted({pair for _, _, pairs in sweep for pair in pairs})
    every = sharing_backbone(pattern_config(base, shortcuts=union, pattern="custom"), models["llava"], device, dtype)
    inputs = make_inputs(base, 1, text, device, dtype)
    calls = {n: (lambda pairs=pairs: every(**inputs, shortcuts=pairs, use_cache=True, logits_to_keep=1)) for n, _, pairs in sweep}
    with torch.inference_mode():
        times = interleaved(calls, settings["repeats"], settings["warmup"], device)
    return [
        {"shortcuts": n, "pattern": name, "pairs": ",".join(f"{i}:{j}" for i, j in pairs), **summary(times[n]),
         "flops": prefill_flops(pattern_config(base, shortcuts=pairs), "sparsecut", text)}
        for n, name, pairs in sweep
    ]


def _grid_sweep(models: dict, settings) -> list[dict]:
    device, dtype, text = settings["device"], settings["dtype"], settings["text_tokens"]
    calls, rows = {}, []
    for grid in GRIDS:
        for mode in ("sparsecut", "concat"):
            if grid == 1:  # the low-res view only: sparsecut's adapters attend over it, concat is LLaVA
                model = models["sparsecut" if mode == "sparsecut" else "llava"]
            elif grid == models[mode].config.high_res_grid:
                model = models[mode]
            else:
                model = sharing_backbone(pattern_config(models[mode].config, high_res_grid=grid), models["llava"], device, dtype)
            inputs = make_inputs(model.config, 1, text, device, dtype, high_res=grid > 1)
            calls[(mode, grid)] = prefill_call(model, inputs)
            config = pattern_config(models[mode].config, high_res=grid > 1, high_res_grid=grid)
            rows.append({"mode": mode, "grid": grid, "context_length": inputs["input_ids"].shape[1],
                         "flops": prefill_flops(config, mode, text)})
    with torch.inference_mode():
        times = interleaved(calls, settings["repeats"], settings["warmup"], device)
    for row in rows:
        row.update(summary(times[(row["mode"], row["grid"])]))
    return rows
