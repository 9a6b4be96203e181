"""python -m training.tiny: build the synthetic benchmark, pretrain the tiny backbones, train the family, score it.

    python -m training.tiny --output runs/tiny                 # everything, from scratch, deterministic for --seed
    python -m training.tiny --output runs/tiny --quick         # a few steps of every stage (what the tests run)
    python -m training.tiny --output runs/tiny --models sparsecut-tiny,llava-tiny

Each family member is trained by the training CLI (``python -m training``) on the LLaVA JSON this writes, stage 1
then stage 2, with the same recipe and budget; results land in OUTPUT/results.json and OUTPUT/results.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from .family import FAMILY, Budget, backbone_dirs, build_backbones, split_seed, write_data

QUICK = Budget(pretrain_images=24, instruct_images=24, test_images=12, lm_steps=5, clip_steps=5, stage1_steps=2,
               stage2_steps=2, batch=8)


def _train(args: list[str], log_path: str) -> None:
    """One training CLI run in a subprocess (a fresh accelerate state each time); its output goes to a log."""
    with open(log_path, "w", encoding="utf-8") as log:
        code = subprocess.run([sys.executable, "-m", "training", *args], stdout=log, stderr=subprocess.STDOUT).returncode
    if code != 0:
        with open(log_path, encoding="utf-8") as log:
            tail = log.read()[-2000:]
        raise RuntimeError(f"training failed ({code}); see {log_path}:\n{tail}")


def train_member(name: str, root: str, budget: Budget, seed: int, device_flags: list[str]) -> str:
    """Stage 1 then stage 2 for family member ``name``; returns the final model folder."""
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
           out + "-stage1.log")
    _train(["--recipe", "stage2", "--model", out + "-stage1", "--data", os.path.join(root, "data", "instruct.json"),
            "--output", out, "--max-steps", str(budget.stage2_steps), "--epochs", "1000",
            "--learning-rate", str(budget.stage2_lr), *common], out + ".log")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.tiny", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", default=",".join(FAMILY), help=f"comma-separated subset of {', '.join(FAMILY)}")
    parser.add_argument("--quick", action="store_true", help="a few steps of every stage: checks the pipeline, trains nothing useful")
    parser.add_argument("--cpu", action="store_true", help="train on the CPU even if a GPU is present")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in FAMILY]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; the family is {', '.join(FAMILY)}")
    budget = QUICK if args.quick else Budget()
    device_flags = ["--cpu", "--mixed-precision", "no"] if args.cpu or not _has_gpu() else ["--mixed-precision", "bf16"]
    started = time.time()
    os.makedirs(args.output, exist_ok=True)
    write_data(args.output, budget, args.seed)
    build_backbones(args.output, budget, args.seed)
    from .evaluate import predict, read_eval, results_table, score

    from sparsecut import SparseCutForConditionalGeneration, SparseCutProcessor

    results = {}
    test = read_eval(os.path.join(args.output, "data", "test.jsonl"))
    for name in names:
        print(f"[{time.time() - started:6.0f}s] training {name}", flush=True)
        folder = train_member(name, args.output, budget, args.seed, device_flags)
        model = SparseCutForConditionalGeneration.from_pretrained(folder)
        processor = SparseCutProcessor.from_pretrained(folder)
        predictions = predict(model, processor, test, os.path.join(args.output, "data", "images"))
        results[name] = score(test, predictions)
        print(f"[{time.time() - started:6.0f}s] {name}: overall {results[name]['overall']:.3f}", flush=True)
    with open(os.path.join(args.output, "results.json"), "w", encoding="utf-8") as handle:
        json.dump({"seed": args.seed, "budget": budget.__dict__, "seconds": time.time() - started, "results": results}, handle, indent=2)
    with open(os.path.join(args.output, "results.md"), "w", encoding="utf-8") as handle:
        handle.write(f"Held-out split: {len(test)} questions (seed {split_seed(args.seed, 'test')}), accuracy in %.\n\n")
        handle.write(results_table(results))
    print(f"Done in {time.time() - started:.0f}s: {os.path.join(args.output, 'results.json')}")
    return 0


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    sys.exit(main())
