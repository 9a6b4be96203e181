"""TextVQA (Singh et al., 2019): questions about text in the image, 10 human answers.

Split ``val``: ``TextVQA_0.5.1_val.json`` with images in ``train_images/`` (TextVQA's val images ship there).
Scored as LLaVA-1.5 scores it, with ``m4c_evaluator`` (the EvalAI processor on every answer): the default answer
processor here is ``evalai``; ``--vqa-processor official`` gives the official VQA rule instead. With ``--ocr``
the prompt carries the Rosetta OCR tokens of ``TextVQA_Rosetta_OCR_v0.2_val.json`` as LLaVA-1.5's reported setting
does: ``question\\nReference OCR token: t1, t2\\nAnswer the question using a single word or phrase.``
"""

from __future__ import annotations

import os

from .. import prompts
from ..metrics import vqa_accuracy
from .base import (Benchmark, BenchmarkDataError, Sample, cell, percent, read_json, require_file, require_images,
                   require_keys, require_unique)

LAYOUT = ("  D/TextVQA_0.5.1_val.json   D/train_images/<image_id>.jpg\n"
          "  with --ocr: D/TextVQA_Rosetta_OCR_v0.2_val.json")
NAME = "textvqa"
OCR_FILE = "TextVQA_Rosetta_OCR_v0.2_{split}.json"


def read(data_dir: str, split: str, options: dict) -> list[Sample]:
    if split != "val":
        raise BenchmarkDataError(f"{NAME}: unknown split {split!r}; only val has public answers.")
    data = read_json(require_file(data_dir, f"TextVQA_0.5.1_{split}.json", NAME, LAYOUT), NAME)
    require_keys(data, ("data",), f"TextVQA_0.5.1_{split}.json", NAME)
    ocr = _ocr_tokens(data_dir, split) if options.get("ocr") else None
    samples = []
    for r in data["data"]:
        require_keys(r, ("question_id", "image_id", "question", "answers"), f"a question of TextVQA_0.5.1_{split}.json", NAME)
        question = r["question"]
        if ocr is not None:
            if r["image_id"] not in ocr:
                raise BenchmarkDataError(f"{NAME}: the OCR file has no tokens for image {r['image_id']}; use the OCR "
                                         f"file of the same split ({OCR_FILE.format(split=split)}).")
            question = f"{question}\nReference OCR token: {', '.join(ocr[r['image_id']])}"
        image = os.path.join(data_dir, "train_images", f"{r['image_id']}.jpg")
        samples.append(Sample(str(r["question_id"]), prompts.short_answer(question), image, {"answers": r["answers"]}))
    return require_images(require_unique(samples, NAME), NAME, LAYOUT)


def _ocr_tokens(data_dir: str, split: str) -> dict[str, list[str]]:
    name = OCR_FILE.format(split=split)
    data = read_json(require_file(data_dir, name, NAME, LAYOUT), NAME)
    require_keys(data, ("data",), name, NAME)
    return {r["image_id"]: r["ocr_tokens"] for r in data["data"]}


def score(samples: list[Sample], predictions: list[str], options: dict) -> dict:
    processor = options.get("vqa_processor") or "evalai"
    scores = [vqa_accuracy(p, s.target["answers"], processor) for s, p in zip(samples, predictions)]
    return {"accuracy": percent(sum(scores) / len(scores)) if scores else 0.0, "processor": processor}


def cells(metrics: dict, split: str) -> dict:
    return {"textvqa": cell(metrics["accuracy"])}


BENCHMARK = Benchmark(NAME, "TextVQA val (Tables 1, 5)", "val", read, score, cells, LAYOUT)
