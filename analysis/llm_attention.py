"""Where the LLM looks in the image while it answers (view 3): per layer and head, over the visual grid.

The rows used are the query positions that predict the answer tokens (the last prompt token, then every answer
token but the last): the attention in effect when each answer token was produced, teacher-forced in one pass.
``visual_share`` is the attention mass those rows put on the image's tokens; the maps show how it spreads over
the patch grid. Layers where shortcuts land (LLM layer j of a shortcut (i, j)) are marked.

Needs the language model in eager attention (``attn_implementation="eager"``): SDPA never forms the weights, and
transformers 5 returns no attentions for it (it warns once), so this view refuses SDPA instead of switching the
shared model's implementation per call, which would race with requests running in other threads.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
import torch

from .grid import TokenGrid
from .inputs import Example, check_model
from .plotting import add_overlay, draw_overlay, matplotlib_grid, panel_position, plotly_grid, to_numpy
from .probes import AttentionRows

MARK = "*"  # appended to the name of a layer a shortcut feeds


@dataclass
class LLMAttentionResult:
    """``rows`` (L, H, A, T): attention of the A answer-predicting rows over all T positions, per layer and head
    (each row sums to 1); ``visual_positions`` (T_img,) the image's positions among the T."""

    rows: torch.Tensor
    visual_positions: torch.Tensor
    shortcut_layers: list[int]  # 1-based LLM layers where shortcuts add
    grid: TokenGrid
    image: np.ndarray

    @property
    def visual(self) -> torch.Tensor:
        """(L, H, T_img) attention on each visual token, averaged over the answer rows."""
        return self.rows[..., self.visual_positions].mean(-2)

    @property
    def visual_share(self) -> torch.Tensor:
        """(L, H) attention mass on the image, averaged over the answer rows."""
        return self.visual.sum(-1)

    def maps(self, head: int | None = None) -> dict[str, torch.Tensor]:
        """Per layer, the attention over the image grid: {"low-res": (L, side, side)} (+ "high-res" in concat mode);
        ``head=None`` averages the heads."""
        visual = self.visual
        if head is not None:
            if not 0 <= head < visual.shape[1]:
                raise ValueError(f"Head {head} is out of range; the LLM has heads 0..{visual.shape[1] - 1}.")
            return self.grid.context_maps(visual[:, head])
        return self.grid.context_maps(visual.mean(1))

    def layer_name(self, j: int) -> str:
        return f"layer {j}{MARK if j in self.shortcut_layers else ''}"

    def table(self) -> list[dict]:
        share = self.visual_share
        return [
            {
                "layer": j,
                "shortcut_lands": j in self.shortcut_layers,
                "visual_share": float(share[j - 1].mean()),
                "visual_share_per_head": [float(x) for x in share[j - 1]],
            }
            for j in range(1, share.shape[0] + 1)
        ]

    def _panels(self, head, layers) -> list[tuple[str, torch.Tensor, float]]:
        count = self.rows.shape[0]
        chosen = list(range(1, count + 1)) if layers is None else list(layers)
        bad = [j for j in chosen if not 1 <= j <= count]
        if bad:
            raise ValueError(f"Layer(s) {bad} out of range; the LLM has layers 1..{count}.")
        share = self.visual_share if head is None else self.visual_share[:, head : head + 1]
        return [
            (
                f"{self.layer_name(j)} ({kind}, {float(share[j - 1].mean()):.0%} on image)",
                maps[j - 1],
                float(maps[j - 1].max()) or 1.0,
            )
            for kind, maps in self.maps(head).items()
            for j in chosen
        ]

    def plotly(self, head: int | None = None, layers=None) -> go.Figure:
        """Share of attention on the image per layer (shortcut layers marked), then one map per layer."""
        panels = self._panels(head, layers)
        which = "mean of heads" if head is None else f"head {head}"
        fig = plotly_grid(
            len(panels),
            [t for t, _, _ in panels],
            top_rows=1,
            top_titles=(f"attention on the image per layer ({which}; {MARK} = a shortcut lands)",),
        )
        share = to_numpy(self.visual_share.mean(1) if head is None else self.visual_share[:, head])
        names = [self.layer_name(j) for j in range(1, len(share) + 1)]
        colours = ["#d62728" if j in self.shortcut_layers else "#1f77b4" for j in range(1, len(share) + 1)]
        fig.add_trace(go.Bar(x=names, y=share, marker_color=colours, showlegend=False), row=1, col=1)
        fig.update_xaxes(type="category", row=1, col=1)
        fig.update_yaxes(tickformat=".0%", row=1, col=1)
        for k, (title, heat, top) in enumerate(panels):
            row, col = panel_position(k, len(panels), top_rows=1)
            add_overlay(fig, row, col, self.image, heat, title, 0.0, top)
        fig.update_layout(title="LLM attention from the answer to the image (each map on its own scale)")
        return fig

    def matplotlib(self, head: int | None = None, layers=None):
        panels = self._panels(head, layers)
        fig, axes = matplotlib_grid(len(panels), extra_rows=1)
        share = to_numpy(self.visual_share.mean(1) if head is None else self.visual_share[:, head])
        js = np.arange(1, len(share) + 1)
        axes[0].bar(js, share, color=["tab:red" if j in self.shortcut_layers else "tab:blue" for j in js])
        axes[0].set_xticks(js, [f"{j}{MARK if j in self.shortcut_layers else ''}" for j in js])
        axes[0].set_xlabel(f"LLM layer ({MARK} and red: a shortcut lands)")
        axes[0].set_ylabel("attention on the image")
        axes[0].set_title("LLM attention from the answer to the image" + ("" if head is None else f" (head {head})"))
        for ax, (title, heat, top) in zip(axes[1:], panels):
            draw_overlay(ax, self.image, heat, title, 0.0, top)
        return fig


def llm_attention(model, example: Example) -> LLMAttentionResult:
    """One teacher-forced forward pass with an attention probe on every decoder layer (eager attention needed)."""
    check_model(model)
    rows = example.answer_rows
    with torch.no_grad(), AttentionRows(model, rows) as probe:
        model(**example.model_inputs())
    weights = torch.stack([probe.weights[j][0] for j in sorted(probe.weights)])  # (L, H, A, T)
    return LLMAttentionResult(
        rows=weights.float().cpu(),
        visual_positions=example.visual_positions.cpu(),
        shortcut_layers=sorted({j for _, j in example.shortcuts}),
        grid=example.grid,
        image=example.image,
    )
