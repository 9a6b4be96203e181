"""Switching shortcuts off at inference (view 4): how the answer's log-probability and the answer itself change.

For each shortcut of the example (and each group), the model runs with it switched off (``shortcuts=`` the rest,
an inference-time subset; nothing on the model changes). ``logprob`` is the teacher-forced
``log p(answer | image, question)`` of the example's answer (its greedy answer unless one was given);
``delta = logprob - baseline``, so a large negative delta marks a shortcut the answer depends on. ``answer`` is
the greedy answer generated with the shortcut(s) off. Visual positions still enter the LLM at zero, so switching
off every shortcut leaves the image's token slots empty.

Default groups (with two or more shortcuts): all shortcuts (no image at all) and, with three or more, every
shortcut but LLaVA's input shortcut ``(L_v - 1, 1)`` when the example has it (only LLaVA's connection is left).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
import torch
from matplotlib.figure import Figure

from sparsecut.patterns import Shortcut, format_pattern

from .inputs import Example, answer_logprobs, check_model, greedy_answer_ids
from .plotting import label


@dataclass
class AblationRow:
    name: str
    off: tuple[Shortcut, ...]  # switched off
    on: tuple[Shortcut, ...]  # left on (passed as shortcuts=)
    token_logprobs: torch.Tensor  # (A,) teacher-forced log p of each answer token
    delta: float  # sum of token_logprobs minus the baseline's
    answer: str | None  # greedy answer with these shortcuts off (None when not generated)

    @property
    def logprob(self) -> float:
        return float(self.token_logprobs.sum())


@dataclass
class AblationResult:
    """``baseline``: every shortcut of the example on; ``rows``: one per ablation, most harmful first."""

    answer: str  # the answer being scored
    baseline: AblationRow
    rows: list[AblationRow]

    def table(self) -> list[dict]:
        return [
            {
                "ablation": r.name,
                "off": format_pattern(r.off) if r.off else "",
                "logprob": r.logprob,
                "delta": r.delta,
                "answer": r.answer,
                "answer_changed": None if r.answer is None else r.answer != self.baseline.answer,
            }
            for r in [self.baseline, *self.rows]
        ]

    def plotly(self) -> go.Figure:
        """Horizontal bars of the change in log p(answer), most harmful at the top; hover shows the new answer."""
        rows = self.rows[::-1]
        fig = go.Figure(
            go.Bar(
                x=[r.delta for r in rows],
                y=[r.name for r in rows],
                orientation="h",
                marker_color=["#d62728" if r.delta < 0 else "#2ca02c" for r in rows],
                text=[_answer_note(r, self.baseline) for r in rows],
                textposition="auto",
                hovertemplate="%{y}: delta log p = %{x:.4g}<br>%{text}<extra></extra>",
            )
        )
        fig.update_layout(
            title=f"Shortcut ablation: change in log p({self.answer!r}) (baseline {self.baseline.logprob:.3f})",
            xaxis_title="delta log p(answer)",
            height=120 + 32 * len(rows),
            width=760,
            margin=dict(l=160),
        )
        return fig

    def matplotlib(self):
        rows = self.rows[::-1]
        fig = Figure(figsize=(8, 1.2 + 0.4 * len(rows)), layout="constrained")
        ax = fig.subplots()
        y = np.arange(len(rows))
        ax.barh(y, [r.delta for r in rows], color=["tab:red" if r.delta < 0 else "tab:green" for r in rows])
        ax.set_yticks(y, [r.name for r in rows])
        for k, r in enumerate(rows):
            ax.annotate(
                _answer_note(r, self.baseline),
                (0, k),
                xytext=(4, 0),
                textcoords="offset points",
                va="center",
                fontsize=7,
            )
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_xlabel("delta log p(answer)")
        ax.set_title(f"Shortcut ablation: log p({self.answer!r}) = {self.baseline.logprob:.3f} with all on", fontsize=9)
        return fig


def _answer_note(row: AblationRow, baseline: AblationRow) -> str:
    if row.answer is None:
        return ""
    return f"answer: {row.answer!r}" + ("" if row.answer == baseline.answer else " (changed)")


def default_groups(model, example: Example) -> dict[str, tuple[Shortcut, ...]]:
    """Groups switched off by default (see the module docstring)."""
    active = example.shortcuts
    if len(active) < 2:
        return {}
    groups = {}
    llava = model.config.llava_shortcut
    if llava in active and len(active) > 2:  # with two shortcuts this is the other one's own row
        groups[f"only {label(llava)} (LLaVA's) left on"] = tuple(s for s in active if s != llava)
    groups["all shortcuts"] = active
    return groups


def shortcut_ablation(
    model, example: Example, groups: dict | None = None, generate: bool = True, max_new_tokens: int = 32
) -> AblationResult:
    """Score the example's answer with each shortcut off, and each group off. ``groups``: name -> shortcuts to
    switch off (``"23:1,20:5"`` or pairs); None uses ``default_groups``. ``generate``: also decode greedy answers."""
    check_model(model)
    active = example.shortcuts
    if not active:
        raise ValueError("No shortcut is switched on in this example (prepare(..., shortcuts=[])); nothing to ablate.")
    chosen = {f"off {label(s)}": (s,) for s in active}
    for name, spec in (default_groups(model, example) if groups is None else groups).items():
        off = tuple(model.model.resolve_shortcuts(spec))  # parses, and rejects shortcuts the model does not have
        inactive = [s for s in off if s not in active]
        if inactive:
            raise ValueError(
                f"Group {name!r} switches off {format_pattern(inactive)}, which is not on in this example; the example's "
                f"shortcuts are {format_pattern(active)}."
            )
        chosen[name] = off

    def run(name: str, off: tuple, reference: float | None) -> AblationRow:
        on = tuple(s for s in active if s not in off)
        with torch.no_grad():
            logprobs = answer_logprobs(model, example, shortcuts=list(on))[0].cpu()
        answer = _greedy(model, example, on, max_new_tokens) if generate else None
        delta = 0.0 if reference is None else float(logprobs.sum()) - reference
        return AblationRow(name, off, on, logprobs, delta, answer)

    baseline = run("none (all on)", (), None)
    rows = sorted((run(name, off, baseline.logprob) for name, off in chosen.items()), key=lambda r: r.delta)
    return AblationResult(answer=example.answer, baseline=baseline, rows=rows)


def _greedy(model, example: Example, on: tuple, max_new_tokens: int) -> str:
    inputs = {**example.model_inputs(with_answer=False), "shortcuts": list(on)}
    return example.decode(greedy_answer_ids(model, inputs, example.processor.tokenizer, max_new_tokens))
