"""Run a model on a benchmark split: batched greedy generation, resumable, data-parallel, then metrics and tables.

Data parallelism (``accelerate launch`` / ``torchrun``, any number of processes, GPUs or CPUs with gloo): every
process reads the benchmark and the predictions already on disk, cuts the questions still to answer into batches
of ``batch_size`` in the benchmark's order, and takes batches ``rank, rank + n, rank + 2n, ...``. Each batch is
therefore exactly a batch of the single-process run, so with greedy decoding the predictions are the same. Each
process appends its batches to its own part file (``predictions.py``); after a barrier the main process alone
merges them once into ``predictions.jsonl`` and computes the metrics.

Outputs in ``output``: ``predictions.jsonl``, ``metrics.json`` (metrics, table cells, settings), ``results.md``
(the row in the paper's tables), submission files for splits without public answers, and ``run.json`` (the
settings that decide the predictions; a rerun with different ones is refused rather than mixed in).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

from tqdm.auto import tqdm

from . import generation, predictions, tables
from .benchmarks import BENCHMARKS

SETTINGS_FILE = "run.json"


@dataclass
class RunConfig:
    model: str  # shipped name, SparseCut folder or HF LLaVA folder
    benchmark: str
    data_dir: str
    output: str
    split: str | None = None  # the benchmark's default split if None
    batch_size: int = 8
    max_new_tokens: int | None = None  # the benchmark's default (128, LLaVA-1.5's setting) if None
    limit: int | None = None  # only the first N questions (a smoke test)
    vqa_processor: str | None = None  # official / evalai; the benchmark's default if None
    ocr: bool = False  # TextVQA: OCR tokens in the prompt
    lang: str | None = None  # MMBench: en / cn; from the split name if None
    circular: bool = True  # MMBench: CircularEval rotations
    dtype: str = "auto"
    template: str | None = None  # chat template override (vicuna_v1, plain, tokenizer)
    name: str | None = None  # the model's name in the tables (the model folder's name if None)
    cpu: bool = False
    progress: bool = True


def _check_settings(output: str, settings: dict) -> None:
    """Refuse an output folder whose predictions were made with other settings (every process checks)."""
    path = os.path.join(output, SETTINGS_FILE)
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as handle:
        previous = json.load(handle)
    changed = {k: (previous.get(k), v) for k, v in settings.items() if previous.get(k) != v}
    if changed:
        details = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
        raise ValueError(f"{output} holds predictions made with other settings ({details}). Use a new --output, "
                         "or delete the folder to start over.")


def _write_settings(output: str, settings: dict) -> None:
    path = os.path.join(output, SETTINGS_FILE)
    with open(path + ".tmp", "w", encoding="utf-8") as handle:
        json.dump(settings, handle, indent=2)
    os.replace(path + ".tmp", path)  # other processes may read it at the same time


def run(config: RunConfig) -> dict | None:
    """Evaluate; returns the ``metrics.json`` content on the main process, None on the others."""
    from accelerate import PartialState

    if config.benchmark not in BENCHMARKS:
        raise ValueError(f"Unknown benchmark {config.benchmark!r}; choose one of {', '.join(BENCHMARKS)}.")
    if config.batch_size < 1:
        raise ValueError(f"batch_size must be at least 1; got {config.batch_size}.")
    bench = BENCHMARKS[config.benchmark]
    split = config.split or bench.default_split
    options = {"vqa_processor": config.vqa_processor, "ocr": config.ocr, "lang": config.lang, "circular": config.circular}
    max_new_tokens = config.max_new_tokens or bench.max_new_tokens
    state = PartialState(cpu=config.cpu)

    every = bench.read(config.data_dir, split, options)  # each process reads; a bad file fails everywhere at once
    samples = every[: config.limit] if config.limit else every
    settings = {"model": config.model, "benchmark": bench.name, "split": split, "max_new_tokens": max_new_tokens,
                "ocr": config.ocr, "lang": config.lang, "circular": config.circular, "dtype": config.dtype,
                "template": config.template}
    _check_settings(config.output, settings)
    if state.is_main_process:
        os.makedirs(config.output, exist_ok=True)
        _write_settings(config.output, settings)
        predictions.repair_parts(config.output)
    state.wait_for_everyone()

    known = {s.id for s in every}
    done = predictions.load_done(config.output, known)
    todo = [s for s in samples if s.id not in done]
    batches = [todo[i : i + config.batch_size] for i in range(0, len(todo), config.batch_size)]
    mine = batches[state.process_index :: state.num_processes]
    if mine:
        dtype = generation.evaluation_dtype(config.dtype, state.device)
        model, processor = generation.load(config.model, state.device, dtype, config.template)
        show = config.progress and state.is_main_process
        with tqdm(total=sum(map(len, mine)), desc=f"{bench.name} {split}", disable=not show) as bar:
            for batch in mine:
                answers = generation.answer(model, processor, [s.image for s in batch], [s.question for s in batch],
                                            max_new_tokens)
                records = [{"id": s.id, "question": s.question, "prediction": a} for s, a in zip(batch, answers)]
                predictions.append(config.output, state.process_index, records)
                bar.update(len(batch))
    state.wait_for_everyone()
    if not state.is_main_process:
        return None
    return _finish(config, bench, split, options, every, samples, settings, state.num_processes)


def _finish(config: RunConfig, bench, split: str, options: dict, every: list, samples: list, settings: dict,
            processes: int) -> dict:
    """Main process: merge once, score, write metrics, the table row and any submission file."""
    done = predictions.load_done(config.output, {s.id for s in every})
    missing = [s.id for s in samples if s.id not in done]
    if missing:
        raise predictions.PredictionsError(f"{len(missing)} questions have no prediction (e.g. {missing[:3]}).")
    predictions.merge(config.output, [s.id for s in every], done)
    texts = [done[s.id]["prediction"] for s in samples]
    metrics = bench.score(samples, texts, options)
    name = config.name or os.path.basename(os.path.normpath(config.model))
    cells = bench.cells(metrics, split)
    submission = bench.submit(samples, texts, config.data_dir, split, config.output) if not metrics and bench.submit else []
    result = {"name": name, "model": config.model, "benchmark": bench.name, "split": split, "questions": len(samples),
              "metrics": metrics, "cells": cells, "submission": submission, "settings": settings, "processes": processes,
              "run": {k: v for k, v in asdict(config).items() if k not in ("progress",)}}
    with open(os.path.join(config.output, "metrics.json"), "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=2, ensure_ascii=False)
    if bench.table is not None:
        text = bench.table(metrics, name)
    elif cells:
        text = tables.markdown({name: cells})
    else:
        text = f"{bench.name} {split}: no public answers; submit {', '.join(submission)} to the benchmark's server.\n"
    with open(os.path.join(config.output, "results.md"), "w", encoding="utf-8") as handle:
        handle.write(text)
    return result
