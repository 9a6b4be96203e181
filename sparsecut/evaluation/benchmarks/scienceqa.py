"""ScienceQA-IMG (Lu et al., 2022): the science multiple-choice problems that come with an image.

``problems.json`` + ``pid_splits.json`` of the official release; split ``test`` (default) or any key of
``pid_splits.json``; only problems with an image are read (2,017 in test), found at ``images/<split>/<pid>/<file>``
(LLaVA's layout) or ``<split>/<pid>/<file>`` (the official zip). Prompt as LLaVA-1.5's ``llava_test_CQM-A``:
``Context: <hint>\\n`` (when there is a hint), the question, ``A. ...`` lines, the letter instruction.
Accuracy with answer-letter extraction (``choices.py``).
"""

from __future__ import annotations

import os

from .. import prompts
from ..metrics import choice_correct
from .base import (Benchmark, BenchmarkDataError, Sample, cell, percent, read_json, require_file, require_images,
                   require_keys)

LAYOUT = "  D/problems.json   D/pid_splits.json   D/images/test/<pid>/image.png (or D/test/<pid>/image.png)"
NAME = "scienceqa"


def read(data_dir: str, split: str, options: dict) -> list[Sample]:
    problems = read_json(require_file(data_dir, "problems.json", NAME, LAYOUT), NAME)
    splits = read_json(require_file(data_dir, "pid_splits.json", NAME, LAYOUT), NAME)
    if split not in splits:
        raise BenchmarkDataError(f"{NAME}: pid_splits.json has no split {split!r}; it has {sorted(splits)}.")
    root = _image_root(data_dir, split)
    samples = []
    for pid in splits[split]:
        if pid not in problems:
            raise BenchmarkDataError(f"{NAME}: problem {pid} of split {split} is not in problems.json; use the two "
                                     "files of the same release.")
        problem = problems[pid]
        require_keys(problem, ("question", "choices", "answer", "hint", "image"), f"problem {pid}", NAME)
        if not problem["image"]:
            continue
        options_ = prompts.letter_options(problem["choices"])
        context = f"Context: {problem['hint']}\n" if problem["hint"] else ""
        question = prompts.lettered(problem["question"], options_, prefix=context)
        target = {"answer": prompts.LETTERS[problem["answer"]], "options": options_}
        samples.append(Sample(pid, question, os.path.join(root, pid, problem["image"]), target))
    return require_images(samples, NAME, LAYOUT)  # ids are pid_splits entries, keys of problems.json


def _image_root(data_dir: str, split: str) -> str:
    llava = os.path.join(data_dir, "images", split)
    return llava if os.path.isdir(llava) else os.path.join(data_dir, split)


def score(samples: list[Sample], predictions: list[str], options: dict) -> dict:
    hits = [choice_correct(p, s.target["answer"], s.target["options"]) for s, p in zip(samples, predictions)]
    return {"accuracy": percent(sum(hits) / len(hits)) if hits else 0.0, "count": len(hits)}


def cells(metrics: dict, split: str) -> dict:
    return {"scienceqa": cell(metrics["accuracy"])}


BENCHMARK = Benchmark(NAME, "ScienceQA-IMG test (Tables 1, 5)", "test", read, score, cells, LAYOUT)
