"""The app's inside views: each runs one ``analysis`` view and returns a figure, a table and a one-line summary.

Every view explains the model's greedy answer to the request (``analysis.inputs.prepare``), with the request's
shortcuts and high-res setting; only the pattern diagram needs no image.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import plotly.graph_objects as go

from analysis.ablation import shortcut_ablation
from analysis.attributions import integrated_gradients, occlusion, shortcut_attribution
from analysis.contributions import contribution_norms
from analysis.cross_attention import cross_attention
from analysis.diagrams import pattern_diagram
from analysis.inputs import Example
from analysis.llm_attention import llm_attention
from analysis.plotting import label
from sparsecut.patterns import format_pattern

ATTRIBUTION_METHODS = ("integrated gradients", "occlusion", "shortcut attribution")
Progress = Callable[[float, str], None]


@dataclass
class ViewResult:
    figure: go.Figure
    table: list[dict]
    summary: str
    image: np.ndarray | None = None  # the image as the model sees it (cross-attention: click a patch on it)


def _shortcut(example: Example, shortcut: str | None):
    """One of the example's shortcuts written ``"i:j"``, or None for all of them ("all" or empty)."""
    if not shortcut or shortcut == "all":
        return None
    names = {label(s): s for s in example.shortcuts}
    if shortcut not in names:
        raise ValueError(f"Shortcut {shortcut!r} is not on in this request; pick one of {', '.join(names)}.")
    return names[shortcut]


def _answer(example: Example) -> str:
    return f"explaining the greedy answer {example.answer!r}"


def contributions(model, example: Example, ratio: bool = False, **_) -> ViewResult:
    result = contribution_norms(model, example)
    rows = result.table()
    deeper = [row for row in rows if row["llm_layer"] != 1] or rows  # the input shortcut's share is 1
    top = max(deeper, key=lambda row: row["mean_ratio"])
    return ViewResult(
        result.plotly(ratio=ratio),
        rows,
        f"Largest share of the stream: {top['shortcut']} (mean ||Z|| / ||h|| = {top['mean_ratio']:.3f}"
        + ("" if deeper is rows else "; the input shortcut's is 1 by construction") + f"); {_answer(example)}.",
    )


def cross_attention_view(model, example: Example, shortcut: str | None = None, head: int | None = None, patch=None, **_) -> ViewResult:
    result = cross_attention(model, example)
    chosen = _shortcut(example, shortcut)
    if chosen is not None:
        result = replace(result, shortcuts=[chosen], attentions={chosen: result.attentions[chosen]})
    row, col = divmod(result.patch(patch), example.grid.side)
    which = "mean of heads" if head is None else f"head {head}"
    return ViewResult(
        result.plotly(patch=patch, head=head),
        result.table(),
        f"Where low-res patch ({row}, {col}) looks in the {' and '.join(result.keys)} keys ({which}); click the image to "
        f"pick another patch ({example.grid.side} x {example.grid.side} grid).",
        example.image,
    )


def llm_attention_view(model, example: Example, layer: int | None = None, head: int | None = None, **_) -> ViewResult:
    result = llm_attention(model, example)
    layers = result.rows.shape[0]
    layer = layers if layer is None else int(layer)
    figure = result.plotly(head=head, layers=[layer])  # refuses a layer or head out of range
    share = result.table()[layer - 1]["visual_share"]
    return ViewResult(
        figure,
        result.table(),
        f"{result.layer_name(layer)}: {share:.1%} of the answer's attention on the image (mean of heads; {layers} layers, "
        f"* = a shortcut lands); {_answer(example)}.",
    )


def attributions_view(model, example: Example, method: str = "integrated gradients", steps: int = 16,
                      progress: Progress | None = None, **_) -> ViewResult:
    if method not in ATTRIBUTION_METHODS:
        raise ValueError(f"Unknown attribution method {method!r}; choose one of {', '.join(ATTRIBUTION_METHODS)}.")
    if progress is not None:
        progress(0.1, f"{method} ({steps} steps)" if method != "occlusion" else "occlusion (one window per patch)")
    if method == "integrated gradients":
        result = integrated_gradients(model, example, n_steps=int(steps))
    elif method == "occlusion":
        result = occlusion(model, example)
    else:
        result = shortcut_attribution(model, example, n_steps=int(steps))
    if progress is not None:
        progress(0.9, "drawing")
    delta = "" if result.delta is None else f", integration error {result.delta:.2g}"
    return ViewResult(
        result.plotly(),
        result.table(),
        f"{method}: log p(answer) {result.score:.3f} vs {result.baseline_score:.3f} at the baseline{delta}; {_answer(example)}.",
    )


def ablation_view(model, example: Example, max_new_tokens: int = 32, **_) -> ViewResult:
    result = shortcut_ablation(model, example, max_new_tokens=max_new_tokens)
    worst = result.rows[0]
    return ViewResult(
        result.plotly(),
        result.table(),
        f"Switching off {worst.name.removeprefix('off ')} hurts most (delta log p = {worst.delta:.3f}, answer "
        f"{worst.answer!r}); {_answer(example)}.",
    )


def diagram_view(config, shortcuts: list) -> ViewResult:
    """The trained pattern, or the request's inference-time subset of it."""
    vision, llm = config.vision_config.num_hidden_layers, config.text_config.num_hidden_layers
    subset = sorted(shortcuts) != sorted(config.shortcut_pairs)
    diagram = pattern_diagram(list(shortcuts), vision, llm) if subset else pattern_diagram(config)
    if subset:
        diagram.name = f"inference-time subset of {config.pattern}"
    figure = diagram.plotly()
    rows = [{"shortcut": label(s), "vit_layer": s[0], "llm_layer": s[1]} for s in diagram.shortcuts]
    note = f" (the model was trained with {format_pattern(config.shortcut_pairs)})" if subset else ""
    return ViewResult(figure, rows, diagram.description + note)


def side_by_side(views: np.ndarray, grid: int, scale: int = 4, gap: int = 8) -> np.ndarray:
    """(N, S, S, 3) views (low-res, then ``grid`` x ``grid`` crops) -> one (H, W, 3) picture, nearest-neighbour
    enlarged: the low-res view at the size of the stitched crops, then the crops in place, ``gap`` px of white
    between views. Without crops, the low-res view alone."""
    side = views.shape[1]
    if len(views) == 1:
        return views[0].repeat(scale, 0).repeat(scale, 1)
    cell = side * scale
    total = grid * cell + (grid - 1) * gap
    picture = np.full((total, total * 2 + 2 * gap, 3), 255, dtype=np.uint8)
    low = grid * scale
    picture[: grid * cell, : grid * cell] = views[0].repeat(low, 0).repeat(low, 1)[: grid * cell, : grid * cell]
    for k, crop in enumerate(views[1:]):
        r, c = divmod(k, grid)
        y, x = r * (cell + gap), total + 2 * gap + c * (cell + gap)
        picture[y : y + cell, x : x + cell] = crop.repeat(scale, 0).repeat(scale, 1)
    return picture


VIEWS: dict[str, Callable[..., ViewResult]] = {
    "contributions": contributions,
    "cross_attention": cross_attention_view,
    "llm_attention": llm_attention_view,
    "attributions": attributions_view,
    "ablation": ablation_view,
}
