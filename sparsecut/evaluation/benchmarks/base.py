"""What every benchmark reader produces (``Sample``) and provides (``Benchmark``), and the checks they share."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ..metrics import vqa_accuracy


class BenchmarkDataError(ValueError):
    """A benchmark file is missing or not in the official format; the message says which and how to fix it."""


@dataclass(frozen=True)
class Sample:
    id: str  # unique within a benchmark split; the key of a prediction
    question: str  # the user turn as the model sees it, instruction included, without the image placeholder
    image: str | bytes | None  # a file path, encoded image bytes (MMBench), or None for a text-only question
    target: dict = field(default_factory=dict)  # what the scorer needs (answers, label, options); never shown


@dataclass(frozen=True)
class Benchmark:
    """A benchmark: how to read a split, score predictions and place the result in the paper's tables.

    - ``read(data_dir, split, options) -> [Sample]``;
    - ``score(samples, predictions, options) -> metrics``: rates in % (the synthetic benchmark keeps its fractions),
      ``{}`` when the split has no public answers;
    - ``cells(metrics, split) -> {column key: text}``: the result's cells in the paper's tables (``tables.py``);
    - ``submit(samples, predictions, data_dir, split, out_dir) -> [written paths]``: for a split without public
      answers, the file the benchmark's server takes."""

    name: str
    description: str
    default_split: str
    read: Callable
    score: Callable
    cells: Callable
    layout: str  # the --data-dir layout, for --help and error messages
    submit: Callable | None = None
    max_new_tokens: int = 128  # LLaVA-1.5's evaluation setting; answers end at EOS long before
    table: Callable | None = None  # (metrics, model name) -> markdown, for a benchmark outside the paper's tables


def require_file(data_dir: str, name: str, benchmark: str, layout: str) -> str:
    path = os.path.join(data_dir, name)
    if not os.path.isfile(path):
        raise BenchmarkDataError(
            f"{benchmark}: {path} does not exist. Expected --data-dir layout:\n{layout}"
        )
    return path


def read_json(path: str, benchmark: str):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as err:
        raise BenchmarkDataError(f"{benchmark}: {path} is not valid JSON ({err}); re-download the official file.") from err


def read_jsonl(path: str, benchmark: str) -> list[dict]:
    records = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise BenchmarkDataError(f"{benchmark}: line {number} of {path} is not JSON ({err}); expected one JSON "
                                         "object per line.") from err
    return records


def require_keys(record: dict, keys: Iterable[str], where: str, benchmark: str) -> None:
    missing = [k for k in keys if k not in record]
    if missing:
        raise BenchmarkDataError(f"{benchmark}: {where} lacks field(s) {missing}; is this the official file? "
                                 f"Fields present: {sorted(record)[:12]}.")


def require_unique(samples: list[Sample], benchmark: str) -> list[Sample]:
    seen, repeated = set(), []
    for sample in samples:
        if sample.id in seen:
            repeated.append(sample.id)
        seen.add(sample.id)
    if repeated:
        raise BenchmarkDataError(f"{benchmark}: question ids repeat ({repeated[:5]}); every question needs its own id.")
    return samples


def require_images(samples: list[Sample], benchmark: str, layout: str) -> list[Sample]:
    """Fail before any generation if an image file is missing, naming a few of them and the expected layout."""
    paths = sorted({s.image for s in samples if isinstance(s.image, str)})
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise BenchmarkDataError(
            f"{benchmark}: {len(missing)} of {len(paths)} image files are missing, e.g. {missing[:3]}. "
            f"Expected --data-dir layout:\n{layout}"
        )
    return samples


def percent(value: float) -> float:
    return 100.0 * value


def cell(value: float, mark: str = "") -> str:
    """A table cell: a percentage with one decimal, as in the paper, plus a mark such as ``‡`` (validation set)."""
    return f"{value:.1f}{mark}"


def vqa_scores(samples: list[Sample], predictions: list[str], processor: str) -> dict:
    """VQA accuracy (%) overall and per ``answer_type`` of the samples' targets (VQAv2, VizWiz)."""
    every, by_type = [], defaultdict(list)
    for sample, prediction in zip(samples, predictions):
        accuracy = vqa_accuracy(prediction, sample.target["answers"], processor)
        every.append(accuracy)
        by_type[sample.target["answer_type"]].append(accuracy)
    return {"accuracy": percent(sum(every) / len(every)), "processor": processor,
            "per_answer_type": {t: percent(sum(v) / len(v)) for t, v in sorted(by_type.items())}}
