"""python -m app.bench: latency of a short answer through the app's engine, the two models together and alone.

    python -m app.bench                                        # the embedded family, 1 thread each, greedy, 8 new tokens
    python -m app.bench --model runs/stage2 --baseline llava-hf/llava-1.5-7b-hf --device cuda --json bench.json

Each round asks every case study of the gallery in turn (image + question, greedy) three ways: both models at once
(``Engine.compare``, what the page does with the comparison on), SparseCut alone and the baseline alone; the order
rotates from round to round (``sparsecut.benchmarking.interleaved``). Times are wall-clock from the call to the finished
answer(s), image decoding and processing included; medians with quartiles. A benchmark, not a test. It also reports
each model's answer to every case study and whether it is right (compared as the synthetic benchmark scores answers;
greedy, so every round gives the same answers). ``--breakdown`` also times the phases of one answer per model alone
(``PHASES``: preparing the request, the vision tower, the rest of the prefill, the decoding steps, the rest) with
forward hooks (``sparsecut.benchmarking.ForwardTimes``): where a latency target is won or lost.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time

import numpy as np
import torch

from sparsecut.benchmarking import ForwardTimes, interleaved, machine, summary, write_json
from sparsecut.vision import vision_layers_of

from .examples import load_examples
from .request_checks import Decoding
from .streaming import CPU_THREADS

TARGET_S = 0.3  # issue 16's target for a short answer from both models together, on 2 CPU cores


def run(engine, repeats: int, warmup: int, max_new_tokens: int) -> dict:
    cases = load_examples()
    if not cases:
        raise SystemExit("No case studies in assets/examples; run python -m app.examples first.")
    decoding = Decoding(max_new_tokens=max_new_tokens)
    tokens = {"sparsecut": [], "baseline": []}

    def asker(kind: str):
        order = itertools.cycle(cases)

        def call():
            case = next(order)
            if kind == "both":
                ours, theirs = list(engine.compare(case.path, case.question, decoding=decoding))[-1]
                tokens["sparsecut"].append(ours.new_tokens)
                tokens["baseline"].append(theirs.new_tokens)
            else:
                model = engine.models[0] if kind == "sparsecut" else engine.baseline
                list(engine.answer(case.path, case.question, model, decoding=decoding))

        return call

    for name in (engine.models[0], engine.baseline):
        engine.load(name)
    answers = {case.name: [a.text for a in list(engine.compare(case.path, case.question, decoding=decoding))[-1]]
               for case in cases}  # once each, before the timed rounds
    times = interleaved({k: asker(k) for k in ("both", "sparsecut", "baseline")}, repeats, warmup, torch.device(engine.device))
    return {
        "models": {"sparsecut": engine.models[0], "baseline": engine.baseline},
        "max_new_tokens": max_new_tokens,
        "cases": len(cases),
        "answers": [{"case": case.name, "right": case.answer, "sparsecut": answers[case.name][0],
                     "sparsecut_right": case.is_right(answers[case.name][0]), "baseline": answers[case.name][1],
                     "baseline_right": case.is_right(answers[case.name][1])} for case in cases],
        "new_tokens_median": {k: sorted(v)[len(v) // 2] for k, v in tokens.items()},
        "latency": {k: summary(v) for k, v in times.items()},
        "target_s": TARGET_S,
        "target_met": summary(times["both"])["median_ms"] <= TARGET_S * 1e3,
    }


PHASES = {  # --breakdown: the phases of one answer, in order, and what each holds
    "prepare": "the request: image decoded and processed, prompt tokenized",
    "vision": "the vision tower(s), inside the prefill",
    "prefill": "the rest of the prefill: adapters, injection, the LLM over the context",
    "decode": "the decoding steps, one LLM call per new token after the first",
    "other": "generate's own work between calls, streaming, detokenizing",
}


def vision_parts(model) -> dict:
    """The vision towers inside ``model`` (a SparseCut or HF LLaVA model) by name, each as its embeddings and encoder
    layers (SparseCut runs them one by one, not through the tower's forward), for ``ForwardTimes``."""
    inner = getattr(model, "model", model)
    towers = {"tower": getattr(inner, "vision_tower", None),
              "reading tower": getattr(getattr(inner, "reading_adapter", None), "vision_tower", None)}
    towers = {name: getattr(tower, "vision_model", tower) for name, tower in towers.items() if tower is not None}  # HF's wrapper
    return {name: [tower.embeddings, *vision_layers_of(tower)] for name, tower in towers.items()}


def breakdown(engine, repeats: int, max_new_tokens: int) -> dict:
    """Where one answer's time goes, per model asked alone: each case study ``repeats`` times after one warm-up pass;
    per phase (``PHASES``) the median milliseconds, and the median number of decoding steps and time per step."""
    cases = load_examples()
    decoding = Decoding(max_new_tokens=max_new_tokens)
    device = torch.device(engine.device)
    result = {}
    for kind, name in (("sparsecut", engine.models[0]), ("baseline", engine.baseline)):
        model = engine.load(name).model
        parts, rows = vision_parts(model), []
        for round_index in range(repeats + 1):
            for case in cases:
                with ForwardTimes(model, parts, device) as timer:
                    started = time.perf_counter()
                    list(engine.answer(case.path, case.question, name, decoding=decoding))
                    ended = time.perf_counter()
                if round_index:
                    rows.append(_phases(timer, started, ended))
        result[kind] = {key: float(np.median([row[key] for row in rows])) for key in rows[0]}
    return result


def _phases(timer: ForwardTimes, started: float, ended: float) -> dict:
    """Milliseconds per phase of one answer timed by ``timer`` (its first forward call is the prefill)."""
    durations = [end - start for start, end in timer.calls]
    prepare, vision, decode = timer.calls[0][0] - started, sum(timer.part_seconds[0].values()), durations[1:]
    row = {"prepare": prepare, "vision": vision, "prefill": durations[0] - vision, "decode": sum(decode),
           "other": (ended - started) - prepare - sum(durations), "total": ended - started}
    row = {key: seconds * 1e3 for key, seconds in row.items()}
    return row | {"decode_steps": len(decode), "ms_per_decode_step": 1e3 * sum(decode) / max(len(decode), 1)}


def format_breakdown(phases: dict, models: dict) -> str:
    lines = ["", "where one answer's time goes (each model alone, medians, ms):",
             "| phase | " + " | ".join(models[kind] for kind in phases) + " | what it holds |",
             "|---|" + "---|" * len(phases) + "---|"]
    for phase, what in PHASES.items():
        lines.append(f"| {phase} | " + " | ".join(f"{phases[kind][phase]:.0f}" for kind in phases) + f" | {what} |")
    lines.append("| total | " + " | ".join(f"{phases[kind]['total']:.0f}" for kind in phases) + " | the answer, end to end |")
    lines.append("| decoding steps (ms each) | " + " | ".join(
        f"{phases[kind]['decode_steps']:.0f} ({phases[kind]['ms_per_decode_step']:.1f})" for kind in phases) + " | |")
    return "\n".join(lines)


def format_report(result: dict) -> str:
    machine = result["machine"]
    lines = [
        (f"{machine['device']}, {machine['threads']} threads, torch {machine['torch']}; {result['models']['sparsecut']} "
         f"vs {result['models']['baseline']}, greedy, <= {result['max_new_tokens']} new tokens (median generated: "
         f"{result['new_tokens_median']['sparsecut']} / {result['new_tokens_median']['baseline']}), "
         f"{result['cases']} case studies"),
        "| request | median (ms) | quartiles (ms) |",
        "|---|---|---|",
    ]
    labels = {"both": "both models together (compare)", "sparsecut": "SparseCut alone", "baseline": "baseline alone"}
    for kind, label in labels.items():
        entry = result["latency"][kind]
        lines.append(f"| {label} | {entry['median_ms']:.0f} | {entry['q1_ms']:.0f}-{entry['q3_ms']:.0f} |")
    lines.append(f"target: both together <= {result['target_s']:g} s: {'met' if result['target_met'] else 'NOT met'}")
    lines += ["", "| case | right answer | SparseCut | baseline |", "|---|---|---|---|"]
    for entry in result["answers"]:
        marks = {side: f"{entry[side]} ({'right' if entry[side + '_right'] else 'wrong'})" for side in ("sparsecut", "baseline")}
        lines.append(f"| {entry['case']} | {entry['right']} | {marks['sparsecut']} | {marks['baseline']} |")
    right = {side: sum(entry[side + "_right"] for entry in result["answers"]) for side in ("sparsecut", "baseline")}
    lines.append(f"right: SparseCut {right['sparsecut']} / {len(result['answers'])}, baseline {right['baseline']} / "
                 f"{len(result['answers'])}")
    if "breakdown" in result:
        lines.append(format_breakdown(result["breakdown"], result["models"]))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="the SparseCut model (default: the embedded sparsecut-tiny)")
    parser.add_argument("--baseline", help="the baseline (default: the embedded llava-tiny)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--threads", type=int, default=CPU_THREADS,
                        help=f"torch CPU threads per computation (default: {CPU_THREADS}, as the app: a comparison's two "
                             "models run at once, one per core of the issue's 2)")
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=8, help="a short answer (default: 8)")
    parser.add_argument("--breakdown", action="store_true",
                        help="also time the phases of one answer per model alone (request, vision, prefill, decoding)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    from .engine import Engine
    from .checkpoints import FamilyNotShipped, served_specs

    torch.set_num_threads(args.threads)
    if bool(args.model) != bool(args.baseline):
        parser.error("give both --model and --baseline, or neither (the embedded family)")
    try:
        models, baseline = served_specs(args.model and [args.model], args.baseline)
        engine = Engine(models, baseline, args.device, args.dtype)
        result = run(engine, args.repeats, args.warmup, args.max_new_tokens)
        if args.breakdown:
            result["breakdown"] = breakdown(engine, args.repeats, args.max_new_tokens)
    except (FamilyNotShipped, ValueError) as err:  # RequestError is a ValueError: a model that fails to load
        sys.exit(f"python -m app.bench: {err}")
    result["machine"] = machine(torch.device(args.device))
    print(format_report(result))
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
