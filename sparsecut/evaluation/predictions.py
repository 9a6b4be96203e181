"""Predictions on disk, resumable and safe with several processes.

An output folder holds ``predictions.jsonl`` (the merged result, one ``{"id", "question", "prediction"}`` per
line, in the benchmark's order) and, while a run is under way, ``parts/part-<rank>.jsonl``: every process appends
each finished batch to its own part and flushes it, so a run killed at any point loses at most the batch in flight.
A rerun reads the merged file and every part as done; only the main process writes ``predictions.jsonl`` (to a
temporary file renamed over the old one) and then deletes the parts.
"""

from __future__ import annotations

import glob
import json
import os

MERGED = "predictions.jsonl"
PARTS = "parts"


class PredictionsError(ValueError):
    """The output folder's predictions do not belong to this benchmark split, or a file is damaged."""


def part_path(out_dir: str, rank: int) -> str:
    return os.path.join(out_dir, PARTS, f"part-{rank:04d}.jsonl")


def repair_parts(out_dir: str) -> int:
    """Cut an unfinished last line (a process killed mid-write) off every part; returns how many were cut."""
    cut = 0
    for path in glob.glob(os.path.join(out_dir, PARTS, "part-*.jsonl")):
        with open(path, "rb") as handle:
            data = handle.read()
        keep = data.rfind(b"\n") + 1
        if keep < len(data):
            with open(path, "r+b") as handle:
                handle.truncate(keep)
            cut += 1
    return cut


def _records(path: str) -> list[dict]:
    out = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise PredictionsError(f"Line {number} of {path} is not JSON ({err}); delete the file to redo "
                                       "those predictions.") from err
            if not isinstance(record, dict) or "id" not in record or "prediction" not in record:
                raise PredictionsError(f"Line {number} of {path} is not a prediction record ({{'id', 'prediction'}}).")
            out.append(record)
    return out


def load_done(out_dir: str, known_ids: set[str]) -> dict[str, dict]:
    """id -> record for every prediction already made (merged file first, then the parts)."""
    paths = [os.path.join(out_dir, MERGED)] + sorted(glob.glob(os.path.join(out_dir, PARTS, "part-*.jsonl")))
    done: dict[str, dict] = {}
    for path in paths:
        if os.path.isfile(path):
            for record in _records(path):
                done.setdefault(str(record["id"]), record)
    strangers = [i for i in done if i not in known_ids]
    if strangers:
        raise PredictionsError(
            f"{out_dir} holds {len(strangers)} predictions whose ids are not in this benchmark split (e.g. "
            f"{strangers[:3]}): it is the output of another benchmark or split. Use a new --output."
        )
    return done


def append(out_dir: str, rank: int, records: list[dict]) -> None:
    path = part_path(out_dir, rank)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        handle.flush()


def merge(out_dir: str, order: list[str], done: dict[str, dict]) -> list[dict]:
    """Write every prediction in ``done`` to ``predictions.jsonl`` in ``order`` (atomically), delete the parts, and
    return the written records."""
    records = [done[i] for i in order if i in done]
    path = os.path.join(out_dir, MERGED)
    with open(path + ".tmp", "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    os.replace(path + ".tmp", path)
    for part in glob.glob(os.path.join(out_dir, PARTS, "part-*.jsonl")):
        os.remove(part)
    if os.path.isdir(os.path.join(out_dir, PARTS)):
        os.rmdir(os.path.join(out_dir, PARTS))
    return records
