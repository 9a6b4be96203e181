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
import sys

import torch

from sparsecut.benchmarking import machine, write_json
from sparsecut.convert import from_hf_llava
from sparsecut.presets import ALIASES, PRESETS, preset_config

from .bench_models import build_hf_llava, default_dtype, free_memory, sharing_backbone
from .bench_parts import bench_generation, bench_hf_llava, bench_injection, bench_prefill, bench_scaling, bench_training
from .bench_report import check_targets, format_report, peak_tflops, save_plots
from .flops import DEFAULT_TEXT_TOKENS, mode_config

PARTS = ("prefill", "overhead", "generation", "training", "scaling")


def _progress(message: str) -> None:
    print(f"[analysis.bench] {message} ...", file=sys.stderr, flush=True)




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
        with torch.device(device), default_dtype(dtype):
            llava = from_hf_llava(hf)  # llava mode, HF's weights
        if "overhead" in parts:  # before the other modes share llava's LLM (each adds its no-op pre-hooks to it)
            _progress("overhead: llava mode against HF LLaVA")
            results["overhead"] = {"hf_llava": bench_hf_llava(hf, llava, settings)}
        del hf
        free_memory(device)
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
        free_memory(device)
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
    peak, peak_source = peak_tflops(device, dtype, args.peak_tflops)
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
