"""python -m training.tiny: build the synthetic benchmark, pretrain the tiny backbones, train the family, ship it, score it.

    python -m training.tiny --output runs/tiny                 # everything, from scratch, deterministic for --seed
    python -m training.tiny --output runs/tiny --ship assets/sparsecut-tiny   # ... and replace the shipped family
    python -m training.tiny --output runs/tiny --quick         # a few steps of every stage (what the tests run)
    python -m training.tiny --output runs/tiny --models sparsecut-tiny,llava-tiny
    python -m training.tiny --output runs/long --budget stage2_steps=12000,instruct_images=60000   # e.g. on a GPU

Each family member is trained by the training CLI (``python -m training``) on the LLaVA JSON this writes, stage 1
then stage 2, with the same recipe and budget; ``--jobs`` members train side by side (on a CPU each gets its share
of the cores). The members are then exported in the zoo's format (to ``--ship``, default OUTPUT/family) and the
exported checkpoints scored on the held-out split: OUTPUT/results.json and results.md, and the same beside the
shipped family with its MODEL_CARD.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from .family import FAMILY, Budget, backbone_dirs, budget_with, build_backbones, cpu_mixed_precision, write_data

QUICK = Budget(pretrain_images=24, instruct_images=24, test_images=12, lm_steps=5, clip_steps=5, stage1_steps=2,
               stage2_steps=2, batch=8)


def _train(args: list[str], log_path: str, threads: int | None) -> None:
    """One training CLI run in a subprocess (a fresh accelerate state each time); its output goes to a log."""
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    with open(log_path, "w", encoding="utf-8") as log:
        code = subprocess.run([sys.executable, "-m", "training", *args], stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    if code != 0:
        with open(log_path, encoding="utf-8") as log:
            tail = log.read()[-2000:]
        raise RuntimeError(f"training failed ({code}); see {log_path}:\n{tail}")


def train_member(name: str, root: str, budget: Budget, seed: int, device_flags: list[str], threads: int | None = None) -> str:
    """Stage 1 then stage 2 for family member ``name`` (``threads``: the CPU threads it may use); returns the final
    model folder."""
    spec = FAMILY[name]
    vision, text = backbone_dirs(root)
    out = os.path.join(root, "models", name)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    common = ["--images", os.path.join(root, "data", "images"), "--global-batch-size", str(budget.batch),
              "--per-device-batch-size", str(budget.batch), "--seed", str(seed), "--num-workers", "1",
              "--gradient-checkpointing", "false", "--save-every", "100000", *device_flags]
    _train(["--recipe", "stage1", "--vision", vision, "--text", text, "--pattern", spec["pattern"],
            "--high-res" if spec["high_res"] else "--no-high-res",
            "--adapter-attention" if spec.get("adapter_attention", True) else "--no-adapter-attention", "--data", os.path.join(root, "data", "pretrain.json"),
            "--output", out + "-stage1", "--max-steps", str(budget.stage1_steps), "--epochs", "1000", *common],
           out + "-stage1.log", threads)
    _train(["--recipe", "stage2", "--model", out + "-stage1", "--data", os.path.join(root, "data", "instruct.json"),
            "--output", out, "--max-steps", str(budget.stage2_steps), "--epochs", "1000",
            "--learning-rate", str(budget.stage2_lr), *common], out + ".log", threads)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.tiny", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", default=",".join(FAMILY), help=f"comma-separated subset of {', '.join(FAMILY)}")
    parser.add_argument("--quick", action="store_true", help="a few steps of every stage: checks the pipeline, trains nothing useful")
    parser.add_argument("--cpu", action="store_true", help="train on the CPU even if a GPU is present")
    parser.add_argument("--mixed-precision", choices=("auto", "no", "bf16"), default="auto",
                        help="auto: bf16 on a GPU; on a CPU bf16 only where a short probe (a training step of "
                        "sparsecut-tiny on real samples, both ways) shows it at least 1.2x faster, fp32 otherwise")
    parser.add_argument("--jobs", type=int, default=None,
                        help="members trained side by side (default: one per 1-2 CPU cores on a CPU, 1 on a GPU)")
    parser.add_argument("--budget", default="", help="comma-separated FIELD=VALUE overrides of the budget (steps, data "
                        f"sizes, stage-2 lr, batch; fields: {', '.join(Budget.__dataclass_fields__)}), e.g. "
                        "stage2_steps=12000,instruct_images=60000 for a longer run on a GPU")
    parser.add_argument("--ship", default=None, help="family folder to export to (default OUTPUT/family); "
                        "assets/sparsecut-tiny replaces the shipped family")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in FAMILY]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; the family is {', '.join(FAMILY)}")
    try:
        budget = budget_with(QUICK if args.quick else Budget(), args.budget)
    except ValueError as err:
        parser.error(str(err))
    on_cpu = args.cpu or not _has_gpu()
    cores = os.cpu_count() or 1
    jobs = max(1, min(len(names), args.jobs or (cores if on_cpu else 1)))
    threads = max(1, cores // jobs) if on_cpu else None
    started = time.time()
    os.makedirs(args.output, exist_ok=True)
    write_data(args.output, budget, args.seed)
    build_backbones(args.output, budget, args.seed)
    precision, speedup = args.mixed_precision, None
    if precision == "auto":
        precision, speedup = cpu_mixed_precision(args.output, budget, threads) if on_cpu else ("bf16", None)
        print(f"mixed precision: {precision}" + (f" (bf16 step {speedup:.2f}x as fast as fp32 on this CPU)" if speedup else ""))
    device_flags = ["--mixed-precision", precision, *(["--cpu"] if on_cpu else [])]
    print(f"[{time.time() - started:6.0f}s] backbones ready; training {len(names)} member(s), {jobs} at a time", flush=True)

    def run(name: str) -> str:
        folder = train_member(name, args.output, budget, args.seed, device_flags, threads)
        print(f"[{time.time() - started:6.0f}s] trained {name}", flush=True)
        return folder

    with ThreadPoolExecutor(jobs) as pool:  # each member trains in its own subprocesses
        list(pool.map(run, names))
    trained = time.time() - started
    from .ship import export, score_shipped, write_card, write_results

    ship = args.ship or os.path.join(args.output, "family")
    export(args.output, names, ship)
    scored = score_shipped(ship, names, args.seed, data_dir=os.path.join(args.output, "data"))  # the split written above
    scored["run"] = {"seed": args.seed, "budget": budget.__dict__, "jobs": jobs, "train_seconds": trained,
                     "seconds": time.time() - started, "device": "cpu" if on_cpu else "cuda", "command": _command(argv),
                     "mixed_precision": precision, "bf16_speedup": speedup}
    for folder in {args.output, ship}:
        write_results(folder, scored)
    write_card(ship, args.output, scored)
    for name, result in scored["results"].items():
        print(f"{name}: overall {result['overall']:.3f}", flush=True)
    print(f"Done in {time.time() - started:.0f}s: {os.path.join(ship, 'results.md')}")
    return 0


def _command(argv) -> str:
    return "python -m training.tiny " + " ".join(sys.argv[1:] if argv is None else argv)


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    sys.exit(main())
