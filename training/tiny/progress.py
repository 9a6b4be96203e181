"""The family pipeline's progress: steps done per member and stage, read from each training run's ``metrics.jsonl``,
and an ETA from the seconds per step measured so far in each stage."""

from __future__ import annotations

import json
import os

STAGES = ("stage1", "reading", "stage2")


def stage_dir(root: str, name: str, stage: str) -> str:
    """Where member ``name``'s ``stage`` trains: ``models/<name>-stage1``, ``models/<name>-reading`` and
    ``models/<name>`` (the final model)."""
    return os.path.join(root, "models", name + ("" if stage == "stage2" else f"-{stage}"))


def final_dir(root: str, name: str, stage2_steps: int) -> str:
    """Member ``name``'s final model: stage 2's, or with no stage-2 steps (a reading stage alone) the reading stage's."""
    return stage_dir(root, name, "stage2" if stage2_steps else "reading")


def stage_done(folder: str) -> bool:
    """A finished training CLI run: its final model and summary are written (the summary last)."""
    return os.path.isfile(os.path.join(folder, "training_summary.json"))


def _records(folder: str) -> list[dict]:
    path = os.path.join(folder, "metrics.jsonl")
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip().endswith("}")]  # a line cut by a kill is skipped


def stage_progress(folder: str, total: int) -> tuple[int, int, float]:
    """(steps done, steps timed, their seconds) of one run of ``total`` steps: a step is timed when the log's line
    before it is the step before it (a resumed run's gap between processes is not training time, and steps redone
    after a resume from an earlier checkpoint count once)."""
    records = [r for r in _records(folder) if "time" in r]
    if stage_done(folder):
        done = total
    else:
        done = records[-1]["step"] if records else 0
    step_seconds = {}  # step -> its seconds; a step run again after a resume counts once, as last run
    for previous, record in zip(records, records[1:]):
        if record["step"] == previous["step"] + 1:
            step_seconds[record["step"]] = record["time"] - previous["time"]
    return done, len(step_seconds), sum(step_seconds.values())


def report(root: str, names: list[str], steps: dict[str, int], jobs: int) -> str:
    """One line: every member's stage and step, the family's share done, and the ETA (remaining steps of each stage
    times that stage's measured seconds per step, shared by ``jobs`` members at a time); a stage ``steps`` leaves out
    has none."""
    steps = {stage: steps.get(stage, 0) for stage in STAGES}
    parts, remaining, measured = [], {s: 0 for s in STAGES}, {s: [0, 0.0] for s in STAGES}
    done_all = total_all = 0
    for name in names:
        where = None
        for stage in STAGES:
            done, timed, seconds = stage_progress(stage_dir(root, name, stage), steps[stage])
            remaining[stage] += steps[stage] - done
            measured[stage][0] += timed
            measured[stage][1] += seconds
            done_all, total_all = done_all + done, total_all + steps[stage]
            if where is None and done < steps[stage] and done:
                where = f"{name} {stage} {done}/{steps[stage]}"
        if where:
            parts.append(where)
    rates = {s: measured[s][1] / measured[s][0] for s in STAGES if measured[s][0]}
    eta = None
    if all(s in rates or not remaining[s] for s in STAGES):
        eta = sum(remaining[s] * rates.get(s, 0.0) for s in STAGES) / max(1, jobs)
    left = f"ETA {eta / 60:.0f} min" if eta is not None else "ETA after the first steps of each stage"
    running = "; ".join(parts) or "between runs"
    return f"{100 * done_all / max(1, total_all):.0f}% of the family's steps ({running}); {left}"


def stage_steps(budget) -> dict[str, int]:
    """stage -> its optimizer steps in ``budget``."""
    return {"stage1": budget.stage1_steps, "reading": budget.reading_steps, "stage2": budget.stage2_steps}


def stage_seconds(root: str, names: list[str], budget) -> dict[str, dict[str, float]]:
    """member -> stage -> measured training seconds (the steps timed in its log, scaled to all its steps)."""
    steps = stage_steps(budget)
    table = {}
    for name in names:
        table[name] = {}
        for stage in STAGES:
            done, timed, seconds = stage_progress(stage_dir(root, name, stage), steps[stage])
            table[name][stage] = seconds / timed * done if timed else 0.0
    return table
