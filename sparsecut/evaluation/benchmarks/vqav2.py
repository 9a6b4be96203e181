"""VQAv2 (Goyal et al., 2017): open-ended questions on COCO images, 10 human answers each.

Splits:
- ``val``: ``v2_OpenEnded_mscoco_val2014_questions.json`` + ``v2_mscoco_val2014_annotations.json``, scored locally
  with the official rule (``metrics.vqa_accuracy``), overall and per answer type;
- ``test-dev``: ``v2_OpenEnded_mscoco_test-dev2015_questions.json`` (official), or ``llava-test-dev``: LLaVA's
  ``llava_vqav2_mscoco_test-dev2015.jsonl`` (its ``text`` already holds the instruction). No answers: the runner
  writes the EvalAI submission file, answers passed through the EvalAI processor as LLaVA's converter does, over
  every test2015 question when ``v2_OpenEnded_mscoco_test2015_questions.json`` (or LLaVA's
  ``llava_vqav2_mscoco_test2015.jsonl``) is there too ("" for questions outside test-dev), as the server expects.
"""

from __future__ import annotations

import json
import os

from .. import prompts
from ..answers import evalai_normalise
from .base import (Benchmark, BenchmarkDataError, Sample, cell, read_json, read_jsonl, require_file,
                   require_images, require_keys, require_unique, vqa_scores)

LAYOUT = """  D/v2_OpenEnded_mscoco_val2014_questions.json   D/v2_mscoco_val2014_annotations.json   D/val2014/COCO_val2014_*.jpg
  D/v2_OpenEnded_mscoco_test-dev2015_questions.json (or LLaVA's llava_vqav2_mscoco_test-dev2015.jsonl)   D/test2015/*.jpg
  optional, to fill the submission: D/v2_OpenEnded_mscoco_test2015_questions.json (or llava_vqav2_mscoco_test2015.jsonl)"""
NAME = "vqav2"
QUESTIONS = {"val": "v2_OpenEnded_mscoco_val2014_questions.json",
             "test-dev": "v2_OpenEnded_mscoco_test-dev2015_questions.json"}
LLAVA_TEST_DEV = "llava_vqav2_mscoco_test-dev2015.jsonl"
FULL_TEST = ("v2_OpenEnded_mscoco_test2015_questions.json", "llava_vqav2_mscoco_test2015.jsonl")


def _image_folder(data_subtype: str) -> str:
    return "test2015" if data_subtype.startswith("test") else data_subtype  # test-dev2015 images live in test2015/


def read(data_dir: str, split: str, options: dict) -> list[Sample]:
    if split == "llava-test-dev":
        records = read_jsonl(require_file(data_dir, LLAVA_TEST_DEV, NAME, LAYOUT), NAME)
        for number, r in enumerate(records, 1):
            require_keys(r, ("question_id", "image", "text"), f"line {number} of {LLAVA_TEST_DEV}", NAME)
        samples = [Sample(str(r["question_id"]), r["text"], os.path.join(data_dir, "test2015", r["image"])) for r in records]
        return require_images(require_unique(samples, NAME), NAME, LAYOUT)
    if split not in QUESTIONS:
        raise BenchmarkDataError(f"{NAME}: unknown split {split!r}; choose val, test-dev or llava-test-dev.")
    data = read_json(require_file(data_dir, QUESTIONS[split], NAME, LAYOUT), NAME)
    require_keys(data, ("questions", "data_subtype"), QUESTIONS[split], NAME)
    folder = _image_folder(data["data_subtype"])
    answers = _annotations(data_dir, data["data_subtype"]) if split == "val" else {}
    samples = []
    for q in data["questions"]:
        require_keys(q, ("question_id", "image_id", "question"), f"a question of {QUESTIONS[split]}", NAME)
        image = os.path.join(data_dir, folder, f"COCO_{folder}_{q['image_id']:012d}.jpg")
        target = answers.get(q["question_id"], {}) if answers else {}
        samples.append(Sample(str(q["question_id"]), prompts.short_answer(q["question"]), image, target))
    if answers:
        unmatched = [s.id for s in samples if not s.target]
        if unmatched:
            raise BenchmarkDataError(f"{NAME}: {len(unmatched)} questions have no annotation (e.g. ids {unmatched[:3]}): "
                                     "the questions and annotations files are from different splits.")
    return require_images(require_unique(samples, NAME), NAME, LAYOUT)


def _annotations(data_dir: str, data_subtype: str) -> dict:
    name = f"v2_mscoco_{data_subtype}_annotations.json"
    data = read_json(require_file(data_dir, name, NAME, LAYOUT), NAME)
    require_keys(data, ("annotations",), name, NAME)
    out = {}
    for a in data["annotations"]:
        require_keys(a, ("question_id", "answers", "answer_type"), f"an annotation of {name}", NAME)
        out[a["question_id"]] = {"answers": [x["answer"] for x in a["answers"]], "answer_type": a["answer_type"]}
    return out


def score(samples: list[Sample], predictions: list[str], options: dict) -> dict:
    """Accuracy (%) overall and per answer type (yes/no, number, other); ``{}`` for the test splits."""
    if not samples or not samples[0].target:
        return {}
    return vqa_scores(samples, predictions, options.get("vqa_processor") or "official")


def cells(metrics: dict, split: str) -> dict:
    return {"vqav2": cell(metrics["accuracy"], "‡")} if metrics else {}


def submit(samples: list[Sample], predictions: list[str], data_dir: str, split: str, out_dir: str) -> list[str]:
    """The EvalAI file: ``[{"question_id": int, "answer": str}]``."""
    answers = {int(s.id): evalai_normalise(p) for s, p in zip(samples, predictions)}
    everyone = _full_test_ids(data_dir)
    ids = everyone if everyone is not None else list(answers)
    path = os.path.join(out_dir, f"vqav2_{split}_submission.json")
    with open(path, "w", encoding="utf-8") as handle:
        json.dump([{"question_id": i, "answer": answers.get(i, "")} for i in ids], handle)
    return [path]


def _full_test_ids(data_dir: str) -> list[int] | None:
    official, llava = (os.path.join(data_dir, name) for name in FULL_TEST)
    if os.path.isfile(official):
        return [q["question_id"] for q in read_json(official, NAME)["questions"]]
    if os.path.isfile(llava):
        return [r["question_id"] for r in read_jsonl(llava, NAME)]
    return None


BENCHMARK = Benchmark(NAME, "VQAv2 (Table 1): val scored locally, test-dev written for EvalAI", "val", read, score,
                      cells, LAYOUT, submit)
