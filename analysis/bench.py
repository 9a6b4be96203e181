"""Performance: SparseCut against LLaVA (low-res) and against high-res tokens in the context, random weights.

    python -m analysis.bench                                            # tiny preset on the CPU
    python -m analysis.bench --preset paper-7b --json bench.json --plots plots/   # on a GPU: bf16, the paper's shape
    python -m analysis.bench --preset micro --quick                     # seconds: what the test suite runs

Parts (``--parts``, all by default):

- ``prefill``: one image + question, ``llava`` (low-res) / ``concat`` (every view's tokens in the context) /
  ``sparsecut`` (high-res fused), interleaved; ratios sparsecut/llava and concat/sparsecut of the medians.
- ``overhead``: llava mode against HF ``LlavaForConditionalGeneration`` with the same weights
  (``sparsecut.convert.from_hf_llava``); and the share of LLM time spent on injection: the LLM with the
  sparsecut pattern's additions (the layer-1 add into the embeddings and the pre-hook adds at the deeper
  layers, eq. 4) against the same LLM with no injection, same inputs, interleaved.
- ``generation``: time to first token (``generate`` of 1 token) and decode tokens/s at several batch sizes.
- ``training``: ``python -m training.bench`` steps (stage 1; stage 2 with gradient checkpointing) with MFU.
- ``scaling``: prefill time and FLOPs against the number of shortcuts (sparse-uniform 1 ... L_v - 1, then
  dense) and the high-res grid (1, 2x2, 3x3); PNG plots with ``--plots``.

Every timing alternates the variants it compares within each repetition (the order rotates), so slow phases
of a shared machine hit all of them; medians and quartiles are reported. The three modes share one vision
tower, LLM and head (only the adapters differ). GPU: ``torch.cuda.synchronize`` around each call, peak memory
as ``max_memory_allocated`` above what was allocated before the call. CPU: memory is not measured (the
process's peak RSS only grows, so one call's peak cannot be isolated), and timings on a machine shared with
other work are noisy; see the quartiles. A benchmark, not a test: figures depend on the machine, recorded.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
from transformers import LlavaConfig, LlavaForConditionalGeneration

from sparsecut import SparseCutConfig, SparseCutForConditionalGeneration, injection
from sparsecut.config import pattern_config
from sparsecut.convert import from_hf_llava
from sparsecut.patterns import make_pattern
from sparsecut.benchmarking import device_name, interleaved, machine, summary, synchronize, write_json

from .flops import DEFAULT_TEXT_TOKENS, forward_flops, mode_config
from sparsecut.presets import ALIASES, PRESETS, preset_config

MODES = ("llava", "concat", "sparsecut")
PARTS = ("prefill", "overhead", "generation", "training", "scaling")
SHORTCUT_COUNTS = (1, 2, 4, 8, 16, 24)
GRIDS = (1, 2, 3)
# dense bf16/fp16 tensor-core peaks (TFLOP/s) from the vendor's data sheets; first match on the device name wins
PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100", 989.4), ("H200", 989.4), ("A100", 312.0))
TARGETS = (  # the issue's targets, which apply to the paper's shape on a GPU
    ("prefill sparsecut/llava", ("prefill", "ratios", "sparsecut/llava"), "<=", 1.25),
    ("prefill concat/sparsecut", ("prefill", "ratios", "concat/sparsecut"), ">=", 3.5),
    ("llava mode / HF LLaVA", ("overhead", "hf_llava", "ratio"), "<=", 1.05),
    ("injection share of LLM time", ("overhead", "injection", "share"), "<=", 0.03),
)


# ----------------------------------------------------------------------------- timing


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


def _progress(message: str) -> None:
    print(f"[analysis.bench] {message} ...", file=sys.stderr, flush=True)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- models and inputs


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
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
    with torch.device(device), _default_dtype(dtype):
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


# ----------------------------------------------------------------------------- parts


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
            _free(device)
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
    _free(settings["device"])  # the sweep's adapters
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


# ----------------------------------------------------------------------------- report


def _peak_tflops(device: torch.device, dtype: torch.dtype, given: float | None) -> tuple[float | None, str]:
    if given is not None:
        return given, "given (--peak-tflops)"
    if device.type == "cuda" and dtype in (torch.bfloat16, torch.float16):
        name = torch.cuda.get_device_name(device)
        for key, value in PEAK_TFLOPS:
            if key in name:
                return value, f"data sheet, dense {key} {str(dtype).split('.')[-1]}"
    return None, "unknown: pass --peak-tflops for MFU"


def check_targets(results: dict) -> list[dict]:
    """The issue's targets, evaluated on whatever was measured (they are set for the paper's shape on a GPU)."""
    checks = []
    for name, path, op, threshold in TARGETS:
        value = results
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if value is not None:
            met = value <= threshold if op == "<=" else value >= threshold
            checks.append({"target": name, "value": value, "threshold": f"{op} {threshold}", "met": bool(met)})
    return checks


def save_plots(results: dict, folder: str) -> list[str]:
    """shortcuts.png and grid.png: prefill time (median, quartile bars) and FLOPs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(folder, exist_ok=True)
    scaling, machine = results["scaling"], results["machine"]["device"]
    paths = []
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    rows = scaling["shortcuts"]
    x = [r["shortcuts"] for r in rows]
    _errorbar(left, x, rows, "sparsecut")
    right.plot(x, [r["flops"] / 1e9 for r in rows], "o-")
    labels = [f"{n}\n(dense)" if r["pattern"] == "dense-uniform" else str(n) for n, r in zip(x, rows)]
    for axis, ylabel, title in ((left, "prefill (ms)", f"Prefill time ({machine})"), (right, "GFLOPs", "Prefill FLOPs")):
        axis.set(xlabel="shortcuts (sparse-uniform, then dense-uniform)", ylabel=ylabel, title=title, xticks=x, xticklabels=labels)
    paths.append(_save(figure, folder, "shortcuts.png"))
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for mode in ("sparsecut", "concat"):
        rows = [r for r in scaling["grid"] if r["mode"] == mode]
        crops = [r["grid"] ** 2 if r["grid"] > 1 else 0 for r in rows]
        _errorbar(left, crops, rows, mode)
        right.plot(crops, [r["flops"] / 1e9 for r in rows], "o-", label=mode)
    for axis, ylabel, title in ((left, "prefill (ms)", f"Prefill time ({machine})"), (right, "GFLOPs", "Prefill FLOPs")):
        axis.set(xlabel="high-res crops", ylabel=ylabel, title=title, xticks=crops, xticklabels=[_grid_label(r["grid"]) for r in rows])
        axis.legend()
    paths.append(_save(figure, folder, "grid.png"))
    return paths


def _grid_label(grid: int) -> str:
    return "low-res only" if grid == 1 else f"{grid}x{grid}"


def _errorbar(axis, x, rows, label):
    medians = np.array([r["median_ms"] for r in rows])
    spread = [medians - [r["q1_ms"] for r in rows], np.array([r["q3_ms"] for r in rows]) - medians]
    axis.errorbar(x, medians, yerr=spread, fmt="o-", capsize=3, label=label)


def _save(figure, folder, name) -> str:
    import matplotlib.pyplot as plt

    path = os.path.join(folder, name)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _ms(entry: dict) -> str:
    return f"{entry['median_ms']:.2f} ms [{entry['q1_ms']:.2f}-{entry['q3_ms']:.2f}]"


def format_report(results: dict) -> str:
    """The results as text tables."""
    s, m = results["settings"], results["machine"]
    lines = [(f"{m['device']} ({m['device_type']}, {m['threads']} threads, torch {m['torch']}); preset {s['preset']}, "
              f"{s['dtype']}, {s['text_tokens']} text tokens, {s['repeats']} repeats (median [quartiles])")]
    if "prefill" in results:
        p = results["prefill"]
        lines += ["", "prefill (1 image + question)", f"{'mode':<10} {'context':>7} {'time':>30} {'GFLOPs':>9} {'peak MiB':>9}"]
        for mode, e in p["modes"].items():
            memory = "n/a" if e["peak_memory_mib"] is None else f"{e['peak_memory_mib']:.0f}"
            lines.append(f"{mode:<10} {e['context_length']:>7} {_ms(e):>30} {e['flops'] / 1e9:>9.2f} {memory:>9}")
        for key, value in p["ratios"].items():
            lines.append(f"{key}: time {value:.2f}x, FLOPs {p['flops_ratios'][key]:.2f}x")
    if "overhead" in results:
        o = results["overhead"]
        h, i = o["hf_llava"], o["injection"]
        lines += ["", "overhead",
                  (f"HF LLaVA {_ms(h['hf'])}; llava mode {_ms(h['llava'])}; ratio {h['ratio']:.3f} "
                   f"(max logit difference {h['max_logit_difference']:.2e})"),
                  (f"LLM with injection ({i['shortcuts']} shortcuts) {_ms(i['with_injection'])}; "
                   f"without {_ms(i['without_injection'])}; paired difference {_ms(i['difference'])}: "
                   f"injection share {i['share']:+.1%}")]
    if "generation" in results:
        lines += ["", "generation (greedy)",
                  f"{'mode':<10} {'batch':>5} {'first token ms':>15} {'decode tok/s':>13} {'tok/s':>9} {'peak MiB':>9}"]
        for r in results["generation"]:
            if "error" in r:
                lines.append(f"{r['mode']:<10} {r['batch']:>5} {r['error']}")
                continue
            memory = "n/a" if r["peak_memory_mib"] is None else f"{r['peak_memory_mib']:.0f}"
            decode = "n/a" if r["decode_tokens_per_s"] is None else f"{r['decode_tokens_per_s']:.1f}"
            lines.append(f"{r['mode']:<10} {r['batch']:>5} {r['time_to_first_token_ms']:>15.2f} {decode:>13} "
                         f"{r['tokens_per_s']:>9.1f} {memory:>9}")
    if "training" in results:
        lines += ["", f"training (training.bench preset {s['train_preset']}, MFU peak: {s['peak_tflops_source']})"]
        for r in results["training"]:
            if "error" in r:
                lines.append(f"stage {r['stage']}: batch {r['batch']}: {r['error']}")
                continue
            mfu = "n/a" if r["mfu"] is None else f"{r['mfu']:.1%}"
            lines.append(f"stage {r['stage']}: batch {r['batch']}, seq {r['seq_len']}, {r['step_s']:.3f} s/step, "
                         f"{r['samples_per_s']:.2f} samples/s, peak {r['peak_memory_gb']:.2f} GiB, MFU {mfu}")
    if "scaling" in results:
        lines += ["", "scaling: shortcuts (sparsecut prefill)"]
        lines += [f"{r['shortcuts']:>3} shortcuts ({r['pattern']:<14}) {_ms(r):>30}  {r['flops'] / 1e9:9.2f} GFLOPs"
                  for r in results["scaling"]["shortcuts"]]
        lines += ["scaling: high-res grid (prefill)"]
        lines += [f"{r['mode']:<10} grid {r['grid']}  context {r['context_length']:>5}  {_ms(r):>30}  {r['flops'] / 1e9:9.2f} GFLOPs"
                  for r in results["scaling"]["grid"]]
    if results.get("targets"):
        lines += ["", "targets (set for the paper's shape on a GPU)"]
        lines += [f"{t['target']:<30} {t['value']:.3f} (target {t['threshold']}): {'met' if t['met'] else 'NOT met'}"
                  for t in results["targets"]]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def run(settings: dict) -> dict:
    """Build the models once and run the requested parts; returns the JSON-ready results."""
    device, dtype, parts = settings["device"], settings["dtype"], settings["parts"]
    config = preset_config(settings["preset"])
    shown = {**settings, "device": str(device), "dtype": settings["dtype_name"], "parts": sorted(parts)}
    del shown["dtype_name"]
    results = {"machine": machine(device), "settings": shown}
    if parts & {"prefill", "overhead", "generation", "scaling"}:
        _progress(f"building the {settings['preset']} models")
        hf = build_hf_llava(config, device, dtype)
        with torch.device(device), _default_dtype(dtype):
            llava = from_hf_llava(hf)  # llava mode, HF's weights
        if "overhead" in parts:  # before the other modes share llava's LLM (each adds its no-op pre-hooks to it)
            _progress("overhead: llava mode against HF LLaVA")
            results["overhead"] = {"hf_llava": bench_hf_llava(hf, llava, settings)}
        del hf
        _free(device)
        models = {"llava": llava}
        for mode in ("concat", "sparsecut"):
            models[mode] = sharing_backbone(mode_config(config, mode), llava, device, dtype)
        if "overhead" in parts:
            _progress("overhead: injection share of LLM time")
            results["overhead"]["injection"] = bench_injection(models["sparsecut"], settings)
        for part, bench in (("prefill", bench_prefill), ("generation", bench_generation), ("scaling", bench_scaling)):
            if part in parts:
                _progress(part)
                results[part] = bench(models, settings)
        del models, llava
        _free(device)
    if "training" in parts:
        _progress("training")
        results["training"] = bench_training(settings)
    results["targets"] = check_targets(results)
    return results


def main(argv=None) -> int:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(
        prog="python -m analysis.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", choices=sorted(list(PRESETS) + list(ALIASES)), default="paper-7b" if cuda else "tiny")
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="bfloat16" if cuda else "float32")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--quick", action="store_true", help="few repetitions, small batches: checks that everything runs")
    parser.add_argument("--repeats", type=int, help="timed rounds per comparison (default 20, quick 3)")
    parser.add_argument("--warmup", type=int, help="untimed rounds first (default 3, quick 1)")
    parser.add_argument("--text-tokens", type=int, default=DEFAULT_TEXT_TOKENS, help="question length besides the image")
    parser.add_argument("--batches", type=int, nargs="+", help="generation batch sizes (default 1 8 32, quick 1 2)")
    parser.add_argument("--new-tokens", type=int, help="generated tokens per sequence (default 32, quick 3)")
    parser.add_argument("--train-preset", help="training.bench preset (default paper-7b on a GPU, micro on the CPU)")
    parser.add_argument("--train-batch", type=int, default=4)
    parser.add_argument("--peak-tflops", type=float, help="the device's peak for MFU (known GPUs are looked up)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--json", metavar="PATH", help="write the results here")
    parser.add_argument("--plots", metavar="DIR", help="write the scaling plots (PNG) here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not cuda:
        parser.error("--device cuda, but CUDA is not available here.")
    for name in ("repeats", "warmup", "new_tokens", "text_tokens", "train_batch", "threads"):
        value = getattr(args, name)
        if value is not None and value < (0 if name in ("warmup", "text_tokens") else 1):
            parser.error(f"--{name.replace('_', '-')} must be >= {0 if name in ('warmup', 'text_tokens') else 1}; got {value}.")
    if args.batches and min(args.batches) < 1:
        parser.error(f"--batches must be >= 1; got {args.batches}.")
    dtype = getattr(torch, args.dtype)
    peak, peak_source = _peak_tflops(device, dtype, args.peak_tflops)
    settings = {
        "preset": args.preset, "device": device, "dtype": dtype, "dtype_name": args.dtype, "parts": set(args.parts),
        "text_tokens": args.text_tokens, "quick": args.quick,
        "repeats": args.repeats or (3 if args.quick else 20),
        "warmup": args.warmup if args.warmup is not None else (1 if args.quick else 3),
        "generation_repeats": args.repeats or (2 if args.quick else 5),
        "batches": args.batches or ([1, 2] if args.quick else [1, 8, 32]), "new_tokens": args.new_tokens or (3 if args.quick else 32),
        "train_preset": args.train_preset or ("paper-7b" if device.type == "cuda" else "micro"),
        "train_steps": 1 if args.quick else 10, "train_warmup": 0 if args.quick else 2, "train_batch": args.train_batch,
        "peak_tflops": peak, "peak_tflops_source": peak_source,
    }
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results = run(settings)
    if args.plots and "scaling" in results:
        results["plots"] = save_plots(results, args.plots)
    print(format_report(results))
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
