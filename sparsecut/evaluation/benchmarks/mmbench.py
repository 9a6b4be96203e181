"""MMBench (Liu et al., 2024), English and Chinese: multiple choice with CircularEval.

A split is the stem of a TSV in ``--data-dir`` (``MMBench_DEV_EN`` by default; VLMEvalKit's and LLaVA's files both
work), read with the csv module: columns ``index``, ``question``, ``hint``, ``A``..``D``, ``answer`` (absent in test
files), ``category``, ``image`` (base64; a short value is the ``index`` of the row holding the image, as in
VLMEvalKit's files). Options that are empty, ``nan`` or ``none`` are absent, as in LLaVA's reader.

CircularEval: a question with n options is asked n times, the options rotated by one each time (round r shows
``options[r:] + options[:r]``), and counts as correct only if every round is. Files that already hold the rotations
(rows with ``index`` >= 1,000,000, grouped by ``index % 1,000,000``, VLMEvalKit's convention) are read as they are;
otherwise the rotations are made here with those ids (LLaVA's ``--all-rounds``); ``circular=False`` asks each
question once. Prompt: ``hint\\n`` (if any), question, ``A. ...`` lines, then LLaVA's instruction, in Chinese for
a ``CN`` split (or ``lang``). Answers are matched to letters by rules (``choices.py``); MMBench's official
evaluation falls back to a GPT judge for answers no rule decides, which this does not call: such answers count
as wrong. A test split (no ``answer`` column) is written to ``mmbench_<split>_submission.tsv`` for the server.
"""

from __future__ import annotations

import base64
import binascii
import csv
import os
from collections import defaultdict

from .. import prompts
from ..metrics import choice_correct, circular_accuracy
from .base import Benchmark, BenchmarkDataError, Sample, cell, percent, require_file, require_unique

LAYOUT = "  D/MMBench_DEV_EN.tsv   D/MMBench_DEV_CN.tsv   (any MMBench TSV; --split is its name without .tsv)"
NAME = "mmbench"
ROUND = 1_000_000  # VLMEvalKit: rotation r of question i has index i + r * ROUND
_NONE = ("", "nan", "none")


def language(split: str, options: dict) -> str:
    return options.get("lang") or ("cn" if "cn" in split.lower().replace("-", "_").split("_") else "en")


def _rows(path: str) -> list[dict]:
    csv.field_size_limit(2**31 - 1)  # base64 images are far larger than csv's default field limit
    with open(path, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    if not rows:
        raise BenchmarkDataError(f"{NAME}: {path} has no rows.")
    for key in ("index", "question", "A", "B", "image"):
        if key not in rows[0]:
            raise BenchmarkDataError(f"{NAME}: {path} has no {key!r} column; is it an MMBench TSV (tab-separated)?")
    bad = [row["index"] for row in rows if not str(row["index"]).isdigit()]
    if bad:
        raise BenchmarkDataError(f"{NAME}: {path} has non-integer index values {bad[:3]}; MMBench indexes are integers.")
    return rows


def _image(row: dict, by_index: dict) -> bytes:
    data = row["image"]
    if len(data) <= 64:  # a reference to the row that carries the image
        if data not in by_index or len(by_index[data]["image"]) <= 64:
            raise BenchmarkDataError(f"{NAME}: row {row['index']} points to image row {data!r}, which has no image.")
        data = by_index[data]["image"]
    try:
        return base64.b64decode(data, validate=True)
    except binascii.Error as err:
        raise BenchmarkDataError(f"{NAME}: the image of row {row['index']} is not valid base64 ({err}).") from err


def read(data_dir: str, split: str, options: dict) -> list[Sample]:
    rows = _rows(require_file(data_dir, f"{split}.tsv", NAME, LAYOUT))
    by_index = {row["index"]: row for row in rows}
    lang = language(split, options)
    has_rotations = any(int(row["index"]) >= ROUND for row in rows)
    rotate = options.get("circular", True) and not has_rotations
    samples = []
    for row in rows:
        texts = [row[c] for c in prompts.LETTERS if (row.get(c) or "").strip().lower() not in _NONE]
        hint = row.get("hint") or ""
        prefix = "" if hint.strip().lower() in _NONE else hint + "\n"
        answer = (row.get("answer") or "").strip()
        if answer and answer not in prompts.LETTERS[: len(texts)]:
            raise BenchmarkDataError(
                f"{NAME}: row {row['index']} has answer {answer!r} but options {prompts.LETTERS[:len(texts)]}.")
        image = _image(row, by_index)
        for r in range(len(texts) if rotate else 1):
            options_ = prompts.letter_options(texts[r:] + texts[:r])
            target = {"options": options_, "group": int(row["index"]) % ROUND, "category": row.get("category", ""),
                      "lang": lang}
            if answer:
                target["answer"] = prompts.LETTERS[(prompts.LETTERS.index(answer) - r) % len(texts)]
            question = prompts.lettered(row["question"], options_, prefix=prefix, lang=lang)
            samples.append(Sample(str(int(row["index"]) + r * ROUND), question, image, target))
    return require_unique(samples, NAME)


def score(samples: list[Sample], predictions: list[str], options: dict) -> dict:
    """Circular accuracy (%), the single-pass accuracy of the first rounds, and circular accuracy per category."""
    if not samples or "answer" not in samples[0].target:
        return {}
    groups, categories = defaultdict(list), {}
    first = []
    for s, p in zip(samples, predictions):
        hit = choice_correct(p, s.target["answer"], s.target["options"])
        groups[s.target["group"]].append(hit)
        categories[s.target["group"]] = s.target["category"]
        if int(s.id) < ROUND:
            first.append(hit)
    per_category = defaultdict(dict)
    for group, rounds in groups.items():
        per_category[categories[group]][group] = rounds
    return {"circular_accuracy": percent(circular_accuracy(groups)), "lang": samples[0].target["lang"],
            "single_pass_accuracy": percent(sum(first) / len(first)) if first else 0.0,
            "questions": len(groups),
            "per_category": {c: percent(circular_accuracy(g)) for c, g in sorted(per_category.items())}}


def cells(metrics: dict, split: str) -> dict:
    return {f"mmbench/{metrics['lang']}": cell(metrics["circular_accuracy"])} if metrics else {}


def submit(samples: list[Sample], predictions: list[str], data_dir: str, split: str, out_dir: str) -> list[str]:
    """``index``, ``question``, the options and the raw ``prediction`` per asked round, tab-separated."""
    path = os.path.join(out_dir, f"mmbench_{split}_submission.tsv")
    letters = prompts.LETTERS[: max(len(s.target["options"]) for s in samples)]
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t")
        writer.writerow(["index", "question", *letters, "prediction"])
        for s, p in zip(samples, predictions):
            writer.writerow([s.id, s.question, *(s.target["options"].get(c, "") for c in letters), p])
    return [path]


BENCHMARK = Benchmark(NAME, "MMBench EN/CN with CircularEval (Tables 2, 5)", "MMBench_DEV_EN", read, score, cells,
                      LAYOUT, submit)
