"""Score a model on the synthetic benchmark's held-out split: accuracy per family, POPE-style F1, unanswerable recall.

Answers are generated greedily and compared after normalisation (lower case, no trailing period), which is exact
match on the short answers this benchmark uses.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict

import torch
from tqdm.auto import tqdm

from .questions import FAMILIES


def normalise(text: str) -> str:
    return " ".join(text.strip().lower().rstrip(".").split())


def read_eval(path: str, limit: int | None = None) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle if line.strip()]
    return records[:limit] if limit else records


@torch.no_grad()
def predict(model, processor, records: list[dict], image_root: str, batch_size: int = 32, max_new_tokens: int = 6,
            progress: bool = True, **model_kwargs) -> list[str]:
    """Greedy answers for ``records`` (each with ``image`` and ``question``), in order."""
    model.eval()
    answers = []
    for start in tqdm(range(0, len(records), batch_size), desc="evaluating", disable=not progress):
        chunk = records[start : start + batch_size]
        batch = processor(
            images=[os.path.join(image_root, r["image"]) for r in chunk],
            text=[processor.prompt(r["question"]) for r in chunk],
            padding_side="left",
        )
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=processor.tokenizer.pad_token_id, **model_kwargs)
        answers += processor.tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    return answers


def score(records: list[dict], predictions: list[str]) -> dict:
    """{"overall", "families": {family: accuracy}, "existence_f1", "unanswerable_recall", "count"}."""
    hits = defaultdict(list)
    tp = fp = fn = 0
    unanswerable_hits = []
    for record, prediction in zip(records, predictions):
        correct = normalise(prediction) == normalise(record["answer"])
        hits[record["family"]].append(correct)
        if record["family"] == "existence":
            said_yes = normalise(prediction).startswith("yes")
            truth = record["answer"] == "yes"
            tp += said_yes and truth
            fp += said_yes and not truth
            fn += (not said_yes) and truth
        if record["answer"] == "unanswerable":
            unanswerable_hits.append(correct)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    every = [h for family in hits.values() for h in family]
    return {
        "overall": sum(every) / len(every) if every else 0.0,
        "families": {f: sum(hits[f]) / len(hits[f]) for f in FAMILIES if hits[f]},
        "existence_f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "unanswerable_recall": sum(unanswerable_hits) / len(unanswerable_hits) if unanswerable_hits else 0.0,
        "count": len(every),
    }


def results_table(results: dict[str, dict]) -> str:
    """Markdown: one row per model, accuracy (%) per family, overall, existence F1 and unanswerable recall."""
    header = ["model", *FAMILIES, "overall", "existence F1", "unanswerable recall"]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, r in results.items():
        cells = [f"{100 * r['families'][f]:.1f}" if f in r["families"] else "-" for f in FAMILIES]
        cells += [f"{100 * r['overall']:.1f}", f"{r['existence_f1']:.3f}", f"{r['unanswerable_recall']:.3f}"]
        rows.append("| " + " | ".join([name, *cells]) + " |")
    return "\n".join(rows) + "\n"
