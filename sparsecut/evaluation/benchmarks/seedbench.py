"""SEED-Bench (Li et al., 2023), image subset: four-option questions over 9 image dimensions.

``SEED-Bench.json`` (``questions`` with ``question_id``, ``data_id``, ``data_type``, ``question``, ``choice_a``..
``choice_d``, ``answer``, ``question_type_id``; ``question_type`` names the dimensions) with the images in
``SEED-Bench-image/<data_id>``. Split ``image`` reads the questions whose ``data_type`` is ``image``. Prompt:
the question, ``A. ...`` lines and the letter instruction (LLaVA-1.5's ``llava-seed-bench.jsonl``). Accuracy
overall and per dimension, with answer-letter extraction (``choices.py``; LLaVA compares the letter exactly).
"""

from __future__ import annotations

import os
from collections import defaultdict

from .. import prompts
from ..metrics import choice_correct
from .base import (Benchmark, BenchmarkDataError, Sample, cell, percent, read_json, require_file, require_images,
                   require_keys, require_unique)

LAYOUT = "  D/SEED-Bench.json   D/SEED-Bench-image/<data_id>"
NAME = "seedbench"


def read(data_dir: str, split: str, options: dict) -> list[Sample]:
    data = read_json(require_file(data_dir, "SEED-Bench.json", NAME, LAYOUT), NAME)
    require_keys(data, ("questions",), "SEED-Bench.json", NAME)
    names = {v: k for k, v in data.get("question_type", {}).items()}
    samples = []
    for q in data["questions"]:
        require_keys(q, ("question_id", "data_id", "data_type", "question", "answer", "choice_a"),
                     "a question of SEED-Bench.json", NAME)
        if q["data_type"] != split:
            continue
        options_ = prompts.letter_options(q[f"choice_{c}"] for c in "abcd")
        target = {"answer": q["answer"], "options": options_,
                  "dimension": names.get(q.get("question_type_id"), str(q.get("question_type_id")))}
        image = os.path.join(data_dir, "SEED-Bench-image", q["data_id"])
        samples.append(Sample(str(q["question_id"]), prompts.lettered(q["question"], options_), image, target))
    if not samples:
        raise BenchmarkDataError(f"{NAME}: no question has data_type {split!r}; the image subset is split 'image'.")
    return require_images(require_unique(samples, NAME), NAME, LAYOUT)


def score(samples: list[Sample], predictions: list[str], options: dict) -> dict:
    by_dimension = defaultdict(list)
    every = []
    for s, p in zip(samples, predictions):
        hit = choice_correct(p, s.target["answer"], s.target["options"])
        every.append(hit)
        by_dimension[s.target["dimension"]].append(hit)
    return {"accuracy": percent(sum(every) / len(every)) if every else 0.0,
            "per_dimension": {d: percent(sum(v) / len(v)) for d, v in sorted(by_dimension.items())}}


def cells(metrics: dict, split: str) -> dict:
    return {"seedbench": cell(metrics["accuracy"])}


BENCHMARK = Benchmark(NAME, "SEED-Bench image subset (Tables 2, 5)", "image", read, score, cells, LAYOUT)
