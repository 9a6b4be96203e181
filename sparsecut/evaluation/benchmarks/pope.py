"""POPE (Li et al., 2023): "Is there a <object> in the image?" on COCO val2014, three negative-sampling settings.

Files ``coco_pope_{random,popular,adversarial}.json`` (one JSON object per line: ``question_id``, ``image``,
``text``, ``label``); split ``all`` (default) reads the three, or name one. Ids are ``<setting>/<question_id>``
(each file counts from 1). Prompt: the question and LLaVA-1.5's short-answer instruction. Metrics per setting as
LLaVA's ``eval_pope.py`` (``metrics.pope_metrics``); the paper's Table 2 reports F1 per setting, Table 5 their mean.
"""

from __future__ import annotations

import os

from .. import prompts
from ..metrics import pope_metrics
from .base import (Benchmark, BenchmarkDataError, Sample, cell, read_jsonl, require_file, require_images, require_keys,
                   require_unique)

LAYOUT = "  D/coco_pope_random.json   D/coco_pope_popular.json   D/coco_pope_adversarial.json   D/val2014/*.jpg"
NAME = "pope"
SETTINGS = ("random", "popular", "adversarial")
RATES = ("accuracy", "precision", "recall", "f1", "yes_ratio")


def read(data_dir: str, split: str, options: dict) -> list[Sample]:
    settings = SETTINGS if split == "all" else (split,)
    if split != "all" and split not in SETTINGS:
        raise BenchmarkDataError(f"{NAME}: unknown split {split!r}; choose all, {', '.join(SETTINGS)}.")
    samples = []
    for setting in settings:
        name = f"coco_pope_{setting}.json"
        for number, r in enumerate(read_jsonl(require_file(data_dir, name, NAME, LAYOUT), NAME), 1):
            require_keys(r, ("question_id", "image", "text", "label"), f"line {number} of {name}", NAME)
            if r["label"] not in ("yes", "no"):
                raise BenchmarkDataError(f"{NAME}: line {number} of {name} has label {r['label']!r}; expected yes/no.")
            samples.append(Sample(f"{setting}/{r['question_id']}", prompts.short_answer(r["text"]),
                                  os.path.join(data_dir, "val2014", r["image"]), {"label": r["label"], "setting": setting}))
    return require_images(require_unique(samples, NAME), NAME, LAYOUT)


def score(samples: list[Sample], predictions: list[str], options: dict) -> dict:
    """Per setting: accuracy, precision, recall, F1, yes-ratio in % and the confusion counts; ``average``: the mean
    of each rate over the settings read."""
    out = {}
    for setting in SETTINGS:
        pairs = [(p, s.target["label"]) for s, p in zip(samples, predictions) if s.target["setting"] == setting]
        if pairs:
            m = pope_metrics([p for p, _ in pairs], [label for _, label in pairs])
            out[setting] = {k: 100.0 * v if k in RATES else v for k, v in m.items()}
    out["average"] = {k: sum(out[s][k] for s in out) / len(out) for k in RATES}
    return out


def cells(metrics: dict, split: str) -> dict:
    out = {f"pope/{s}": cell(metrics[s]["f1"]) for s in SETTINGS if s in metrics}
    if len(out) == len(SETTINGS):
        out["pope/avg"] = cell(metrics["average"]["f1"])
    return out


BENCHMARK = Benchmark(NAME, "POPE random/popular/adversarial (Tables 2, 5)", "all", read, score, cells, LAYOUT)
