"""``analysis.bench``'s report: the issue's targets checked, the text table, the scaling plots, the device's peak."""

from __future__ import annotations

import os

import numpy as np
import torch

# dense bf16/fp16 tensor-core peaks (TFLOP/s) from the vendor's data sheets; first match on the device name wins
PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100", 989.4), ("H200", 989.4), ("A100", 312.0))
TARGETS = (  # the issue's targets, which apply to the paper's shape on a GPU
    ("prefill sparsecut/llava", ("prefill", "ratios", "sparsecut/llava"), "<=", 1.25),
    ("prefill concat/sparsecut", ("prefill", "ratios", "concat/sparsecut"), ">=", 3.5),
    ("llava mode / HF LLaVA", ("overhead", "hf_llava", "ratio"), "<=", 1.05),
    ("injection share of LLM time", ("overhead", "injection", "share"), "<=", 0.03),
)


def peak_tflops(device: torch.device, dtype: torch.dtype, given: float | None) -> tuple[float | None, str]:
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
