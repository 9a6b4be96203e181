"""python -m training.tiny: build the synthetic benchmark, pretrain the tower, train the family, ship it, score it.

    python -m training.tiny --output runs/tiny                 # everything, deterministic for --seed; a rerun resumes
    python -m training.tiny --output runs/tiny --ship assets/sparsecut-tiny   # ... and replace the shipped family
    python -m training.tiny --output runs/tiny --quick         # a few steps of every stage (what the tests run)
    python -m training.tiny --output runs/tiny --models sparsecut-tiny,llava-tiny
    python -m training.tiny --output runs/long --budget stage2_steps=4000,instruct_images=40000   # e.g. on a GPU
    python -m training.tiny --output runs/more --models sparsecut-tiny-sparse-top --tower assets/sparsecut-tiny \
        --ship assets/sparsecut-tiny                           # train more members on the shipped family's tower

Each family member is trained by the training CLI (``python -m training``) on the LLaVA JSON this writes, stage 1
(adapters on captions) then stage 2 (adapters + a LoRA on the LLM, multi-question conversations), with the same
recipe and budget; ``--jobs`` members train side by side (on a CPU each gets its share of the cores). Every stage
checkpoints as it goes: a rerun of the same command skips finished members and stages and resumes an interrupted one
from its last checkpoint. Progress (steps per member and stage, ETA) is printed every ``--progress-every`` seconds.
The members are then exported in the zoo's format as deltas over the base LLM (to ``--ship``, default
OUTPUT/family) and the exported checkpoints scored on the held-out split: OUTPUT/results.json and results.md, and
the same beside the shipped family with its MODEL_CARD.md. With ``--tower FAMILY`` the run takes the vision tower
of a shipped family instead of pretraining one, so that its members join that family when shipped into it (the
family can be trained a few members at a time, in separate runs); the results then cover every member shipped there.
``--tower DIR`` with a ``python -m training.tiny.dense`` output instead reuses a tower trained exactly as this run
would train it (checked against its record), e.g. one pretrained beside another job.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from sparsecut.zoo import LORA_DIR
from .family import (ADAPTER_MLP, BASE_TEXT, CHAT_TEMPLATE, FAMILY, LAYOUT, Budget, backbone_dirs,
                     budget_with, build_backbones, cpu_mixed_precision, reading_tower_record, write_data)
from .continued import START, check_continuable, continued_start, grafted_start, shipped_config, shipped_record
from .progress import final_dir, report, stage_dir, stage_done, stage_seconds, stage_steps

QUICK = Budget(pretrain_images=24, instruct_images=24, test_images=12, tower_images=24, tower_steps=2, stage1_steps=2, stage2_steps=2,
               batch=8, save_every=1, reading_images=24)


def _train(args: list[str], log_path: str, threads: int | None) -> None:
    """One training CLI run in a subprocess (a fresh accelerate state each time); its output is appended to a log."""
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    with open(log_path, "a", encoding="utf-8") as log:
        code = subprocess.run([sys.executable, "-m", "training", *args], stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    if code != 0:
        with open(log_path, encoding="utf-8") as log:
            tail = log.read()[-2000:]
        raise RuntimeError(f"training failed ({code}); see {log_path}:\n{tail}")


def started_by(root: str, name: str, record: dict) -> dict:
    """How member ``name``'s training began (``record``: {"command", "jobs", "threads"} of this invocation), written when it
    first starts and kept from then on, so that a member resumed or shipped by a later invocation is still credited
    to the command and the sharing of cores that trained it."""
    path = os.path.join(root, "models", name + ".started.json")
    if not os.path.isfile(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(record, handle, indent=2)
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def train_member(name: str, root: str, budget: Budget, seed: int, device_flags: list[str], threads: int | None = None,
                 continue_from: str | None = None, reading_tower: str | None = None) -> str:
    """Stage 1 then stage 2 for family member ``name`` (``threads``: the CPU threads it may use), each skipped when
    finished and resumed from its last checkpoint when interrupted; returns the final model folder. With
    ``continue_from`` (a shipped family) stage 1 is not trained: stage 2 starts from that family's ``name`` and trains
    its LoRA on (``continued.py``); with the budget's ``reading_steps``, a reading stage first trains the member's
    reading adapter and LoRA on reading questions (each followed by ``reading_look_ups`` look-up turns): a fresh
    adapter around ``reading_tower`` (a vision tower folder), or without one the member's own reading adapter and
    tower as shipped; with ``stage2_steps`` 0 its output is the final model."""
    spec = FAMILY[name]
    vision, text = backbone_dirs(root)
    stage1, final = stage_dir(root, name, "stage1"), stage_dir(root, name, "stage2")
    os.makedirs(os.path.dirname(final), exist_ok=True)
    started = os.path.isdir(stage1) or os.path.isdir(final)
    continuing = os.path.isdir(os.path.join(root, "models", name + START))
    if started and continue_from is None and continuing:
        raise ValueError(f"{name} in {root} continues a shipped member: rerun with the --continue-from it started with.")
    if started and continue_from is not None and not continuing:
        raise ValueError(f"{name} in {root} was started from its own stage 1: rerun without --continue-from, or use "
                         "another --output.")
    common = ["--images", os.path.join(root, "data", "images"), "--global-batch-size", str(budget.batch),
              "--per-device-batch-size", str(budget.batch), "--seed", str(seed),
              "--num-workers", "0",  # a worker forked from a 6.5 GB SmolLM2 run copies it (two members OOM in 24 GB)
              "--gradient-checkpointing", "false", "--save-every", str(budget.save_every), "--keep-checkpoints", "1",
              "--resume", *device_flags]
    init = {}  # the LoRA stage 2 starts from: a new one, or the continued member's
    lora = {"r": budget.lora_rank, "alpha": 2 * budget.lora_rank, "dropout": 0.0, "modules": budget.lora_modules}
    if continue_from is not None:
        stage1 = continued_start(continue_from, name, root)
        if budget.reading_steps:
            reading = stage_dir(root, name, "reading")
            if not stage_done(reading):
                tower = ["--reading-tower", reading_tower] if reading_tower is not None else []  # else its own, kept
                _train(["--recipe", "stage_reading", "--model", stage1, *tower,
                        "--data", os.path.join(root, "data", "reading.json"), "--output", reading,
                        "--max-steps", str(budget.reading_steps), "--epochs", "1000",
                        "--learning-rate", str(budget.reading_lr), "--adapter-learning-rate", str(budget.adapter_lr),
                        "--lora", json.dumps({**lora, "init": os.path.join(stage1, LORA_DIR)}), *common],
                       reading + ".log", threads)
            if not budget.stage2_steps:  # the reading stage alone continues the member
                return final_dir(root, name, budget.stage2_steps)
            stage1 = grafted_start(stage1, reading, root, name)
        init = {"init": os.path.join(stage1, LORA_DIR)}
    elif not stage_done(stage1):
        _train(["--recipe", "stage1", "--vision", vision, "--text", text, "--chat-template", CHAT_TEMPLATE,
                "--template", "auto", "--pattern", spec["pattern"], "--high-res" if spec["high_res"] else "--no-high-res",
                "--adapter-attention" if spec.get("adapter_attention", True) else "--no-adapter-attention",
                "--adapter-mlp", ADAPTER_MLP, "--high-res-fusion", spec.get("high_res_fusion", "cross-attention"),
                "--reading-tokens", str(spec.get("reading_tokens", 0)),
                "--data", os.path.join(root, "data", "pretrain.json"), "--output", stage1,
                "--max-steps", str(budget.stage1_steps), "--epochs", "1000", "--learning-rate", str(budget.stage1_lr),
                *common], stage1 + ".log", threads)
    if not stage_done(final):
        _train(["--recipe", "stage2_lora", "--model", stage1, "--data", os.path.join(root, "data", "instruct.json"),
                "--output", final, "--max-steps", str(budget.stage2_steps), "--epochs", "1000",
                "--learning-rate", str(budget.stage2_lr), "--adapter-learning-rate", str(budget.adapter_lr),
                "--lora", json.dumps({**lora, **init}), *common], final + ".log", threads)
    return final


def _report_every(seconds: float, root: str, names: list[str], budget: Budget, jobs: int, started: float) -> threading.Event:
    """Print the family's progress every ``seconds`` from a background thread until the returned event is set."""
    stop = threading.Event()
    steps = stage_steps(budget)

    def loop():
        while not stop.wait(seconds):
            print(f"[{time.time() - started:6.0f}s] {report(root, names, steps, jobs)}", flush=True)

    threading.Thread(target=loop, daemon=True).start()
    return stop


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
    parser.add_argument("--threads", type=int, default=None, help="CPU threads per member (default: the cores shared "
                        "among --jobs); fewer leaves cores to other work, e.g. a probe beside the run")
    parser.add_argument("--budget", default="", help="comma-separated FIELD=VALUE overrides of the budget (steps, data "
                        f"sizes, learning rates, LoRA rank, batch; fields: {', '.join(Budget.__dataclass_fields__)}), "
                        "e.g. stage2_steps=4000,instruct_images=40000 for a longer run on a GPU")
    parser.add_argument("--text", default=BASE_TEXT, help=f"the LLM every member starts from: an installed base model's "
                        f"name (default {BASE_TEXT}) or a causal-LM folder; a run keeps the one it started with")
    parser.add_argument("--tower", default=None, help="a vision tower this run uses instead of pretraining one: a "
                        "shipped family folder (e.g. assets/sparsecut-tiny), whose family its members can then join "
                        "when shipped into it, or a `python -m training.tiny.dense` output trained exactly as this run "
                        "would train its tower (same scenes, steps, seed and labels; checked)")
    parser.add_argument("--continue-from", default=None, metavar="FAMILY", help="a shipped family folder (e.g. "
                        "assets/sparsecut-tiny) whose members this run trains on: stage 2 starts from each shipped "
                        "member (adapters + LoRA) for the budget's stage2_steps, with no stage 1, on the family's "
                        "tower; the LoRA's rank and projections must be the shipped ones")
    parser.add_argument("--reading-tower", default=None, metavar="DIR", help="with --continue-from and the budget's "
                        "reading_steps: a reading stage first gives each member's reading tokens this tower of their "
                        "own (a python -m training.tiny.dense output, e.g. --spell) and trains their fresh adapter "
                        "and the LoRA on reading questions (reading_look_ups: look-up turns after each); stage 2 "
                        "follows, or with stage2_steps=0 the reading stage's output is the member. Without it, a "
                        "reading stage trains on the reading adapter and tower the members already have")
    parser.add_argument("--progress-every", type=float, default=60.0, help="seconds between progress lines")
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
    if args.continue_from is not None:
        if args.tower is not None and os.path.abspath(args.tower) != os.path.abspath(args.continue_from):
            parser.error("--continue-from trains on the tower of the family it continues: drop --tower.")
        args.tower = args.continue_from
        try:
            check_continuable(args.continue_from, names, budget)
        except ValueError as err:
            parser.error(str(err))
        budget = replace(budget, stage1_steps=0)  # recorded as it ran: no stage 1 in this run
    reading = {}  # how the reading tower was made, for each member's record
    if args.reading_tower is not None or budget.reading_steps or budget.reading_look_ups:
        try:
            reading = {"reading_tower": _reading_tower(args.reading_tower, args.continue_from, names, budget)}
        except ValueError as err:
            parser.error(str(err))
    if not budget.stage2_steps and not reading:
        parser.error("stage2_steps=0 trains no stage 2: it is for a reading stage alone (--continue-from FAMILY "
                     "--budget reading_steps=N,stage2_steps=0, with --reading-tower DIR for a new reading tower).")
    on_cpu = args.cpu or not _has_gpu()
    cores = os.cpu_count() or 1
    jobs = max(1, min(len(names), args.jobs or (cores if on_cpu else 1)))
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be at least 1, not {args.threads}")
    threads = (args.threads or max(1, cores // jobs)) if on_cpu else None
    started = time.time()
    os.makedirs(args.output, exist_ok=True)
    write_data(args.output, budget, args.seed)
    try:
        build_backbones(args.output, budget, args.seed, args.text, args.tower)
    except ValueError as err:
        parser.error(str(err))
    precision, speedup = args.mixed_precision, None
    if precision == "auto":
        precision, speedup = cpu_mixed_precision(args.output, budget, threads) if on_cpu else ("bf16", None)
        print(f"mixed precision: {precision}" + (f" (bf16 step {speedup:.2f}x as fast as fp32 on this CPU)" if speedup else ""))
    device_flags = ["--mixed-precision", precision, *(["--cpu"] if on_cpu else [])]
    backbones_seconds = time.time() - started
    print(f"[{backbones_seconds:6.0f}s] backbones ready; training {len(names)} member(s), {jobs} at a time", flush=True)
    member_seconds, finals = {}, {}  # name -> its final model's folder

    def run(name: str) -> str:
        began = time.time()
        history = {"continued_from": shipped_record(args.continue_from, name)} if args.continue_from else {}
        started_by(args.output, name, {"command": _command(argv), "jobs": jobs, "threads": threads, **history, **reading})
        folder = finals[name] = train_member(name, args.output, budget, args.seed, device_flags, threads,
                                             args.continue_from, args.reading_tower)
        member_seconds[name] = time.time() - began
        print(f"[{time.time() - started:6.0f}s] trained {name} ({member_seconds[name] / 60:.1f} min in this process)", flush=True)
        return folder

    stop = _report_every(args.progress_every, args.output, names, budget, jobs, started)
    try:
        with ThreadPoolExecutor(jobs) as pool:  # each member trains in its own subprocesses
            list(pool.map(run, names))
    finally:
        stop.set()
    trained = time.time() - started
    from .answers import ANSWERS
    from .ship import export, score_shipped, write_card, write_results

    own_family = os.path.join(args.output, "family")
    ship = args.ship or own_family
    device = "cpu" if on_cpu else "cuda"
    stage_times = stage_seconds(args.output, names, budget)
    members = export(args.output, {name: {**started_by(args.output, name, {}), "seed": args.seed, "budget": budget.__dict__,
                                          "device": device, "mixed_precision": precision,
                                          "stage_seconds": stage_times[name]} for name in names}, ship, finals)
    scored = score_shipped(ship, list(members), args.seed, data_dir=os.path.join(args.output, "data"),  # the split written above
                           answers_dir=os.path.join(ship, ANSWERS),  # and those the run's own family kept, when
                           earlier_answers=os.path.join(own_family, ANSWERS))  # it ships elsewhere now
    scored["run"] = {"seed": args.seed, "budget": budget.__dict__, "jobs": jobs, "threads": threads, "train_seconds": trained,
                     "seconds": time.time() - started, "device": device, "command": _command(argv),
                     "mixed_precision": precision, "bf16_speedup": speedup, "backbones_seconds": backbones_seconds,
                     "member_seconds": member_seconds, "stage_seconds": stage_times, "layout": LAYOUT.name}
    scored["members"] = members
    for folder in {args.output, ship}:
        write_results(folder, scored)
    write_card(ship, scored)
    for name, result in scored["results"].items():
        print(f"{name}: overall {result['overall']:.3f}", flush=True)
    print(f"Done in {time.time() - started:.0f}s: {os.path.join(ship, 'results.md')}")
    return 0


def _reading_tower(tower_dir: str | None, continue_from: str | None, names: list[str], budget: Budget) -> dict:
    """The record of a reading stage's tower: ``--reading-tower``'s (``family.reading_tower_record``), or without it
    ``{"kept": True}`` (the members' own, as shipped). ValueError unless the stage has ``--continue-from`` and
    ``reading_steps`` > 0, every member has reading tokens, and without ``--reading-tower`` a reading tower too."""
    if not budget.reading_steps or continue_from is None:
        raise ValueError("a reading stage trains shipped members' reading tokens: give --continue-from FAMILY and "
                         "--budget reading_steps=N (> 0) together, with --reading-tower DIR for a tower of their own.")
    without = [name for name in names if not FAMILY[name].get("reading_tokens")]
    if without:
        raise ValueError(f"{', '.join(without)} {'has' if len(without) == 1 else 'have'} no reading tokens for a reading "
                         "stage: train only members with them (--models sparsecut-tiny).")
    if tower_dir is not None:
        return reading_tower_record(tower_dir)
    towerless = [name for name in names if not shipped_config(continue_from, name).get("reading_tower")]
    if towerless:
        raise ValueError(f"{', '.join(towerless)} in {continue_from} {'has' if len(towerless) == 1 else 'have'} no "
                         "reading tower of its own to train on: give one with --reading-tower DIR.")
    return {"kept": True}


def _command(argv) -> str:
    return "python -m training.tiny " + " ".join(sys.argv[1:] if argv is None else argv)


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    sys.exit(main())
