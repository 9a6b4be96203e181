"""python -m app.bench: latency of a short answer through the app's engine, the two models together and alone.

    python -m app.bench                                        # the embedded family, 2 threads, greedy, 8 new tokens
    python -m app.bench --model runs/stage2 --baseline llava-hf/llava-1.5-7b-hf --device cuda --json bench.json

Each round asks every case study of the gallery in turn (image + question, greedy) three ways: both models at once
(``Engine.compare``, what the page does with the comparison on), SparseCut alone and the baseline alone; the order
rotates from round to round (``sparsecut.benchmarking.interleaved``). Times are wall-clock from the call to the finished
answer(s), image decoding and processing included; medians with quartiles. A benchmark, not a test. It also reports
each model's answer to every case study and whether it is right (compared as the synthetic benchmark scores answers;
greedy, so every round gives the same answers).
"""

from __future__ import annotations

import argparse
import itertools
import sys

import torch

from sparsecut.benchmarking import interleaved, machine, summary, write_json

from .examples import load_examples
from .request_checks import Decoding

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
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="the SparseCut model (default: the embedded sparsecut-tiny)")
    parser.add_argument("--baseline", help="the baseline (default: the embedded llava-tiny)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2, the issue's 2 cores)")
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=8, help="a short answer (default: 8)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    from .engine import Engine
    from .checkpoints import FamilyNotShipped, served_specs

    torch.set_num_threads(args.threads)
    if bool(args.model) != bool(args.baseline):
        parser.error("give both --model and --baseline, or neither (the embedded family)")
    try:
        models, baseline = served_specs(args.model and [args.model], args.baseline)
        result = run(Engine(models, baseline, args.device, args.dtype), args.repeats, args.warmup, args.max_new_tokens)
    except (FamilyNotShipped, ValueError) as err:  # RequestError is a ValueError: a model that fails to load
        sys.exit(f"python -m app.bench: {err}")
    result["machine"] = machine(torch.device(args.device))
    print(format_report(result))
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
