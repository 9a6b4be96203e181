"""How much each shortcut adds (view 1): ||Z_i|| and its ratio to the hidden state it joins, at the visual positions.

For a shortcut (i, j), at every visual token t of the image:

    norm[t]   = ||Z_i[t]||                   the adapter output the shortcut adds
    stream[t] = ||h_j[t]||                   the hidden state entering LLM layer j, with its shortcuts added
    ratio[t]  = norm[t] / stream[t]          the shortcut's share of what layer j reads

The stream is taken after the addition because visual positions enter the LLM at zero: before it, the state a
layer-1 shortcut joins is 0. A ratio near 1 means the shortcut dominates that token; near 0, it is a small nudge.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
import torch

from sparsecut.patterns import Shortcut

from .grid import TokenGrid
from .inputs import Example, check_model
from .plotting import (
    SHORTCUT_COLOURS,
    add_overlay,
    draw_overlay,
    label,
    matplotlib_grid,
    panel_position,
    plotly_grid,
    to_numpy,
    value_range,
)
from .probes import AdapterOutputs, LayerInputs


@dataclass
class ContributionResult:
    """Per shortcut s and visual token t: ``norms`` (S, T_img) ||Z||, ``stream_norms`` (S, T_img) ||h_j||."""

    shortcuts: list[Shortcut]
    norms: torch.Tensor
    stream_norms: torch.Tensor
    grid: TokenGrid
    image: np.ndarray

    @property
    def ratios(self) -> torch.Tensor:
        """(S, T_img) ||Z|| / ||h_j||."""
        return self.norms / self.stream_norms

    @property
    def mean_norms(self) -> torch.Tensor:
        """(S,) ||Z|| averaged over the visual tokens."""
        return self.norms.mean(-1)

    @property
    def mean_ratios(self) -> torch.Tensor:
        """(S,) the per-token ratio averaged over the visual tokens."""
        return self.ratios.mean(-1)

    def maps(self, ratio: bool = False) -> dict[str, torch.Tensor]:
        """Per-token norms (or ratios) on the patch grid: {"low-res": (S, side, side)} (+ "high-res" in concat mode)."""
        return self.grid.context_maps(self.ratios if ratio else self.norms)

    def table(self) -> list[dict]:
        return [
            {"shortcut": label(s), "vit_layer": s[0], "llm_layer": s[1], "mean_norm": float(n), "mean_ratio": float(r)}
            for s, n, r in zip(self.shortcuts, self.mean_norms, self.mean_ratios)
        ]

    def _panels(self, ratio: bool) -> list[tuple[str, torch.Tensor]]:
        what = "ratio" if ratio else "||Z||"
        return [
            (f"{label(s)} {what} ({kind})", maps[k])
            for kind, maps in self.maps(ratio).items()
            for k, s in enumerate(self.shortcuts)
        ]

    def plotly(self, ratio: bool = False) -> go.Figure:
        """Bars of the mean norm and mean ratio per shortcut, then per-token heatmaps over the image."""
        panels = self._panels(ratio)
        names = [label(s) for s in self.shortcuts]
        fig = plotly_grid(
            len(panels),
            [t for t, _ in panels],
            top_rows=2,
            top_titles=("mean ||Z|| per shortcut", "mean ||Z|| / ||h_j||"),
        )
        colours = [SHORTCUT_COLOURS[k % len(SHORTCUT_COLOURS)] for k in range(len(names))]
        fig.add_trace(
            go.Bar(x=names, y=to_numpy(self.mean_norms), marker_color=colours, showlegend=False), row=1, col=1
        )
        fig.add_trace(
            go.Bar(x=names, y=to_numpy(self.mean_ratios), marker_color=colours, showlegend=False), row=2, col=1
        )
        fig.update_xaxes(title_text="shortcut (ViT layer : LLM layer)", type="category", row=2, col=1)
        zmin, zmax = value_range([m for _, m in panels], signed=False)
        for k, (title, heat) in enumerate(panels):
            row, col = panel_position(k, len(panels), top_rows=2)
            add_overlay(fig, row, col, self.image, heat, title, zmin, zmax, showscale=k == 0)
        fig.update_layout(title="Shortcut contributions at the visual positions")
        return fig

    def matplotlib(self, ratio: bool = False):
        panels = self._panels(ratio)
        names = [label(s) for s in self.shortcuts]
        fig, axes = matplotlib_grid(len(panels), extra_rows=1)
        bars, images = axes[0], axes[1:]
        x = np.arange(len(names))
        bars.bar(x - 0.2, to_numpy(self.mean_norms), 0.4, label="mean ||Z||")
        twin = bars.twinx()
        twin.bar(x + 0.2, to_numpy(self.mean_ratios), 0.4, color="tab:orange", label="mean ||Z|| / ||h_j||")
        bars.set_xticks(x, names)
        bars.set_xlabel("shortcut (ViT layer : LLM layer)")
        bars.set_ylabel("mean ||Z||")
        twin.set_ylabel("mean ratio", color="tab:orange")
        bars.set_title("Shortcut contributions at the visual positions")
        vmin, vmax = value_range([m for _, m in panels], signed=False)
        for ax, (title, heat) in zip(images, panels):
            artist = draw_overlay(ax, self.image, heat, title, vmin, vmax)
        fig.colorbar(artist, ax=images, shrink=0.8)
        return fig


def contribution_norms(model, example: Example) -> ContributionResult:
    """One forward pass with probes on the adapters and on the inputs of the layers the shortcuts feed."""
    check_model(model)
    if not example.shortcuts:
        raise ValueError(
            "No shortcut is switched on in this example (prepare(..., shortcuts=[])); nothing contributes."
        )
    targets = {j for _, j in example.shortcuts}
    with torch.no_grad(), AdapterOutputs(model) as adapters, LayerInputs(model, targets) as layers:
        model(**example.model_inputs())
    positions = example.visual_positions
    norms, streams = [], []
    for shortcut in example.shortcuts:
        z = adapters.outputs[shortcut].reshape(1, positions.numel(), -1)[0]  # (T_img, D_t); concat: views in order
        h = layers.inputs[shortcut[1]][0, positions]  # (T_img, D_t)
        norms.append(z.float().norm(dim=-1))
        streams.append(h.float().norm(dim=-1))
    return ContributionResult(
        shortcuts=list(example.shortcuts),
        norms=torch.stack(norms).cpu(),
        stream_norms=torch.stack(streams).cpu(),
        grid=example.grid,
        image=example.image,
    )
