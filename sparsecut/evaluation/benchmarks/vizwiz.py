"""VizWiz (Gurari et al., 2018): questions from blind people, 10 human answers, many "unanswerable".

Splits ``val`` (``val.json``, images in ``val/``; scored locally with the official VQA rule, overall and per answer
type, ``unanswerable`` included) and ``test`` (``test.json``, images in ``test/``; no answers: the runner writes the
EvalAI file ``[{"image", "answer"}]`` with answers through the EvalAI processor, as LLaVA's converter does). The
prompt adds LLaVA-1.5's unanswerable instruction (``prompts.vizwiz``).
"""

from __future__ import annotations

import json
import os

from .. import prompts
from ..answers import evalai_normalise
from .base import (Benchmark, BenchmarkDataError, Sample, cell, read_json, require_file, require_images,
                   require_keys, require_unique, vqa_scores)

LAYOUT = "  D/val.json   D/val/VizWiz_val_*.jpg   D/test.json   D/test/VizWiz_test_*.jpg"
NAME = "vizwiz"


def read(data_dir: str, split: str, options: dict) -> list[Sample]:
    if split not in ("val", "test"):
        raise BenchmarkDataError(f"{NAME}: unknown split {split!r}; choose val or test.")
    records = read_json(require_file(data_dir, f"{split}.json", NAME, LAYOUT), NAME)
    if not isinstance(records, list):
        raise BenchmarkDataError(f"{NAME}: {split}.json should be a list of questions; got {type(records).__name__}.")
    samples = []
    for number, r in enumerate(records):
        require_keys(r, ("image", "question") + (("answers", "answer_type") if split == "val" else ()),
                     f"question {number} of {split}.json", NAME)
        target = {"answers": [a["answer"] for a in r["answers"]], "answer_type": r["answer_type"]} if split == "val" else {}
        samples.append(Sample(r["image"], prompts.vizwiz(r["question"]), os.path.join(data_dir, split, r["image"]), target))
    return require_images(require_unique(samples, NAME), NAME, LAYOUT)


def score(samples: list[Sample], predictions: list[str], options: dict) -> dict:
    """Accuracy (%) overall and per answer type (unanswerable, yes/no, number, other); ``{}`` for test."""
    if not samples or not samples[0].target:
        return {}
    return vqa_scores(samples, predictions, options.get("vqa_processor") or "official")


def cells(metrics: dict, split: str) -> dict:
    return {"vizwiz": cell(metrics["accuracy"], "‡")} if metrics else {}


def submit(samples: list[Sample], predictions: list[str], data_dir: str, split: str, out_dir: str) -> list[str]:
    path = os.path.join(out_dir, f"vizwiz_{split}_submission.json")
    with open(path, "w", encoding="utf-8") as handle:
        json.dump([{"image": s.id, "answer": evalai_normalise(p)} for s, p in zip(samples, predictions)], handle)
    return [path]


BENCHMARK = Benchmark(NAME, "VizWiz (Tables 1, 5): val scored locally, test written for EvalAI", "val", read, score,
                      cells, LAYOUT, submit)
