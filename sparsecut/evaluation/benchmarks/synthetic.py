"""The synthetic benchmark of the embedded default (``training/tiny``): one question per family per scene.

A split is ``<split>.jsonl`` in ``--data-dir`` (records with ``id``, ``image``, ``question``, ``answer``,
``family``, ``subtype``; the question already holds its instruction), images under ``images/`` (``python -m
training.tiny`` writes ``OUTPUT/data/test.jsonl`` and ``OUTPUT/data/images/``). Answers are compared after
``normalise`` (lower case, no trailing period, single spaces): exact match on this benchmark's short answers.
Scores are fractions in [0, 1]: accuracy per family and overall (with a 95% bootstrap interval over scenes:
the questions of one scene are resampled together), POPE-style F1 on ``existence`` (an answer starting with "yes" is
a yes) over all its questions and per kind of negative (random / popular / adversarial, each with every third
positive in order, so each is balanced as POPE's splits are), the recall and precision of ``unanswerable``, and the
accuracy per subtype of each family (e.g. count by shape / colour / all, position's where / left-of / above).
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


NEGATIVES = ("random", "popular", "adversarial")  # POPE's kinds of absent object (``questions.existence``)


def _f1(said_yes: list[bool], truth: list[bool]) -> float:
    """POPE's F1 (``metrics.pope_metrics``) of yes/no decisions already made by this benchmark's rule."""
    from ..metrics import pope_metrics

    def words(flags: list[bool]) -> list[str]:
        return ["yes" if flag else "no" for flag in flags]

    return pope_metrics(words(said_yes), words(truth))["f1"]


def score(records: list[dict], predictions: list[str]) -> dict:
    """{"overall", "overall_interval": [low, high], "families": {family: accuracy}, "existence_f1",
    "existence_f1_by_negatives": {kind: F1}, "unanswerable_recall", "unanswerable_precision", "count",
    "subtypes": {family: {subtype: {"accuracy", "n"}}} (records with a ``subtype``)}."""
    from ..metrics import bootstrap_interval

    hits, every, scenes, by_subtype = defaultdict(list), [], [], defaultdict(lambda: defaultdict(list))
    existence = []  # (said yes, truth, subtype)
    unanswerable_hits, said_unanswerable = [], []
    for number, (record, prediction) in enumerate(zip(records, predictions)):
        answer = normalise(prediction)
        correct = answer == normalise(record["answer"])
        hits[record["family"]].append(correct)
        if record.get("subtype"):
            by_subtype[record["family"]][record["subtype"]].append(correct)
        every.append(correct)
        scenes.append(record.get("scene", record.get("id", number)))  # one scene's questions are resampled together
        if record["family"] == "existence":
            existence.append((answer.startswith("yes"), record["answer"] == "yes", record.get("subtype")))
        if record["answer"] == "unanswerable":
            unanswerable_hits.append(correct)
        if answer == "unanswerable":
            said_unanswerable.append(correct)
    positives = [e for e in existence if e[1]]
    by_negatives = {}
    for k, kind in enumerate(NEGATIVES):
        split = positives[k :: len(NEGATIVES)] + [e for e in existence if not e[1] and e[2] == kind]
        if any(not truth for _, truth, _ in split):
            by_negatives[kind] = _f1([e[0] for e in split], [e[1] for e in split])
    return {
        "overall": sum(every) / len(every) if every else 0.0,
        "overall_interval": list(bootstrap_interval(every, scenes)) if every else [0.0, 0.0],  # a list, as in JSON
        "families": {f: sum(hits[f]) / len(hits[f]) for f in FAMILIES if hits[f]},
        "existence_f1": _f1([e[0] for e in existence], [e[1] for e in existence]),
        "existence_f1_by_negatives": by_negatives,
        "unanswerable_recall": sum(unanswerable_hits) / len(unanswerable_hits) if unanswerable_hits else 0.0,
        "unanswerable_precision": sum(said_unanswerable) / len(said_unanswerable) if said_unanswerable else 0.0,
        "count": len(every),
        "subtypes": {f: {kind: {"accuracy": sum(h) / len(h), "n": len(h)} for kind, h in sorted(by_subtype[f].items())}
                     for f in FAMILIES if by_subtype[f]},
    }


def results_table(results: dict[str, dict]) -> str:
    """Markdown: one row per model, accuracy (%) per family, overall with its 95% interval, existence F1 (all
    questions; random / popular / adversarial negatives) and unanswerable recall / precision. Scores made before
    a column existed show "-" there."""
    header = ["model", *FAMILIES, "overall (95% interval)", "existence F1", "F1 random / popular / adversarial",
              "unanswerable recall / precision"]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def fraction(value) -> str:
        return "-" if value is None else f"{value:.3f}"

    for name, r in results.items():
        cells = [f"{100 * r['families'][f]:.1f}" if f in r["families"] else "-" for f in FAMILIES]
        interval = r.get("overall_interval")
        cells.append(f"{100 * r['overall']:.1f}" + (f" ({100 * interval[0]:.1f}-{100 * interval[1]:.1f})" if interval else ""))
        cells.append(fraction(r["existence_f1"]))
        by_negatives = r.get("existence_f1_by_negatives", {})
        cells.append(" / ".join(fraction(by_negatives.get(kind)) for kind in NEGATIVES))
        cells.append(f"{fraction(r['unanswerable_recall'])} / {fraction(r.get('unanswerable_precision'))}")
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
