"""The synthetic benchmark of the embedded default (``training/tiny``): one question per family per scene.

A split is ``<split>.jsonl`` in ``--data-dir`` (records with ``id``, ``image``, ``question``, ``answer``,
``family``, ``subtype``; the question already holds its instruction), images under ``images/`` (``python -m
training.tiny`` writes ``OUTPUT/data/test.jsonl`` and ``OUTPUT/data/images/``). Answers are compared after
``normalise`` (lower case, no trailing period, single spaces): exact match on this benchmark's short answers.
Scores are fractions in [0, 1]: accuracy per family and overall, POPE-style F1 on ``existence`` (an answer
starting with "yes" is a yes), and the recall of ``unanswerable``.
"""

from __future__ import annotations

import os
from collections import defaultdict

from .base import Benchmark, Sample, read_jsonl, require_file, require_images, require_keys, require_unique

FAMILIES = ("attribute", "count", "position", "existence", "reading", "unanswerable", "choice")
LAYOUT = "  D/test.jsonl   D/images/test/*.png   (python -m training.tiny writes OUTPUT/data/ like this)"
NAME = "synthetic"


def normalise(text: str) -> str:
    return " ".join(text.strip().lower().rstrip(".").split())


def read_eval(path: str, limit: int | None = None) -> list[dict]:
    """The records of an ``eval`` split file, in order (the first ``limit`` if given)."""
    records = read_jsonl(path, NAME)
    return records[:limit] if limit else records


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


def read(data_dir: str, split: str, options: dict) -> list[Sample]:
    path = require_file(data_dir, f"{split}.jsonl", NAME, LAYOUT)
    samples = []
    for number, r in enumerate(read_eval(path), 1):
        require_keys(r, ("id", "image", "question", "answer", "family"), f"line {number} of {path}", NAME)
        samples.append(Sample(str(r["id"]), r["question"], os.path.join(data_dir, "images", r["image"]), r))
    return require_images(require_unique(samples, NAME), NAME, LAYOUT)


def score_samples(samples: list[Sample], predictions: list[str], options: dict) -> dict:
    return score([s.target for s in samples], predictions)


def no_cells(metrics: dict, split: str) -> dict:
    return {}  # not a benchmark of the paper's tables: ``table`` writes its own


def table(metrics: dict, model: str) -> str:
    return results_table({model: metrics})


BENCHMARK = Benchmark(
    NAME, "the embedded default's synthetic benchmark (per-family accuracy, existence F1, unanswerable recall)",
    "test", read, score_samples, no_cells, LAYOUT, max_new_tokens=6, table=table,
)
