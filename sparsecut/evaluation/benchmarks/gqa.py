"""GQA (Hudson & Manning, 2019): compositional questions on Visual Genome images; one answer each.

Split ``testdev`` (the paper's; ``testdev_balanced_questions.json``) or any ``<split>_balanced_questions.json``;
images in ``images/<imageId>.jpg``. Scored by exact match as GQA's ``eval.py`` after LLaVA's conversion
(``metrics.gqa_accuracy``), overall and per structural type (verify, query, choose, logical, compare).
"""

from __future__ import annotations

import os
from collections import defaultdict

from .. import prompts
from ..metrics import gqa_accuracy
from .base import Benchmark, BenchmarkDataError, Sample, cell, percent, read_json, require_file, require_images, require_keys

LAYOUT = "  D/testdev_balanced_questions.json   D/images/<imageId>.jpg"
NAME = "gqa"


def read(data_dir: str, split: str, options: dict) -> list[Sample]:
    name = f"{split}_balanced_questions.json"
    data = read_json(require_file(data_dir, name, NAME, LAYOUT), NAME)
    if not isinstance(data, dict):
        raise BenchmarkDataError(f"{NAME}: {name} should map question ids to questions; got a {type(data).__name__}.")
    samples = []
    for qid, q in data.items():
        require_keys(q, ("imageId", "question", "answer"), f"question {qid} of {name}", NAME)
        target = {"answer": q["answer"], "type": q.get("types", {}).get("structural", "unknown")}
        image = os.path.join(data_dir, "images", f"{q['imageId']}.jpg")
        samples.append(Sample(str(qid), prompts.short_answer(q["question"]), image, target))
    return require_images(samples, NAME, LAYOUT)  # ids are the keys of a JSON object: unique


def score(samples: list[Sample], predictions: list[str], options: dict) -> dict:
    by_type = defaultdict(lambda: ([], []))
    for s, p in zip(samples, predictions):
        by_type[s.target["type"]][0].append(p)
        by_type[s.target["type"]][1].append(s.target["answer"])
    return {"accuracy": percent(gqa_accuracy(predictions, [s.target["answer"] for s in samples])),
            "per_type": {t: percent(gqa_accuracy(*pairs)) for t, pairs in sorted(by_type.items())}}


def cells(metrics: dict, split: str) -> dict:
    return {"gqa": cell(metrics["accuracy"])}


BENCHMARK = Benchmark(NAME, "GQA test-dev balanced (Tables 1, 5)", "testdev", read, score, cells, LAYOUT)
