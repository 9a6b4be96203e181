"""Shortcut pattern diagrams in the style of the paper's Fig. 2 (view 6).

ViT layers stack on the left, LLM layers on the right, layer 1 at the bottom, both columns the same height. A
shortcut (i, j) leaves the top of ViT layer i (its output, ``hidden_states[i]``) and enters the bottom of LLM
layer j (it is added before layer j runs). Works for any pattern: a name, an explicit ``"i:j,..."`` string, a list
of pairs, or a model's ``SparseCutConfig``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from sparsecut import SparseCutConfig
from sparsecut.patterns import Shortcut, describe, format_pattern, make_pattern, validate_shortcuts

from .plotting import SHORTCUT_COLOURS, label

VIT_X, LLM_X, WIDTH = 0.0, 3.0, 1.0  # left edges of the two columns, and their width
GAP = 0.15  # fraction of a block's height left empty above it


@dataclass
class PatternDiagram:
    name: str
    shortcuts: list[Shortcut]
    vision_layers: int
    llm_layers: int

    @property
    def description(self) -> str:
        """Order, distribution and density (paper §3.2), then the pairs."""
        return describe(self.shortcuts, self.vision_layers, self.llm_layers)

    def blocks(self) -> list[tuple[str, int, float, float, float, float]]:
        """(tower, layer, x0, y0, x1, y1) for every layer's box; heights are normalised to 1."""
        boxes = []
        for tower, x, count in (("ViT", VIT_X, self.vision_layers), ("LLM", LLM_X, self.llm_layers)):
            h = 1.0 / count
            boxes += [(tower, k, x, (k - 1) * h, x + WIDTH, k * h - GAP * h) for k in range(1, count + 1)]
        return boxes

    def curves(self, points: int = 40) -> list[tuple[Shortcut, np.ndarray, np.ndarray]]:
        """(shortcut, xs, ys): a cubic Bezier from the top of ViT layer i to the bottom of LLM layer j."""
        t = np.linspace(0.0, 1.0, points)[:, None]
        out = []
        for i, j in self.shortcuts:
            start = np.array([VIT_X + WIDTH, (i - GAP) / self.vision_layers])
            end = np.array([LLM_X, (j - 1) / self.llm_layers])
            middle = (VIT_X + WIDTH + LLM_X) / 2
            c1, c2 = np.array([middle, start[1]]), np.array([middle, end[1]])
            path = (
                (1 - t) ** 3 * start + 3 * (1 - t) ** 2 * t * c1 + 3 * (1 - t) * t**2 * c2 + t**3 * end
            )  # (points, 2)
            out.append(((i, j), path[:, 0], path[:, 1]))
        return out

    def _ticks(self, count: int) -> list[int]:
        step = max(1, round(count / 8))
        return sorted({1, count, *range(step, count + 1, step)})

    def plotly(self) -> go.Figure:
        fig = go.Figure()
        for n, ((i, j), xs, ys) in enumerate(self.curves()):
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=ys,
                    mode="lines",
                    name=label((i, j)),
                    line=dict(width=2, color=SHORTCUT_COLOURS[n % len(SHORTCUT_COLOURS)]),
                    hovertemplate=f"ViT layer {i} -> LLM layer {j}<extra></extra>",
                )
            )
        shapes = [
            dict(
                type="rect",
                x0=x0,
                y0=y0,
                x1=x1,
                y1=y1,
                line=dict(width=0.5, color="#555"),
                fillcolor="#dbe9f6" if tower == "ViT" else "#fde2c8",
            )
            for tower, k, x0, y0, x1, y1 in self.blocks()
        ]
        annotations = []
        for tower, x, count in (("ViT", VIT_X, self.vision_layers), ("LLM", LLM_X, self.llm_layers)):
            annotations.append(dict(x=x + WIDTH / 2, y=-0.04, text=f"<b>{tower}</b> ({count} layers)", showarrow=False))
            side, anchor = (x - 0.05, "right") if tower == "ViT" else (x + WIDTH + 0.05, "left")
            annotations += [
                dict(x=side, y=(k - 0.5) / count, text=str(k), showarrow=False, xanchor=anchor, font=dict(size=9))
                for k in self._ticks(count)
            ]
        fig.update_xaxes(visible=False, range=[-0.6, LLM_X + WIDTH + 0.6])
        fig.update_yaxes(visible=False, range=[-0.08, 1.02])
        fig.update_layout(
            title=f"{self.name}: {format_pattern(self.shortcuts)}",
            width=520,
            height=620,
            plot_bgcolor="white",
            legend_title_text="shortcut (ViT:LLM)",
            shapes=shapes,
            annotations=annotations,
        )
        return fig

    def matplotlib(self):
        fig = Figure(figsize=(4.2, 5.2), layout="constrained")
        ax = fig.subplots()
        for tower, k, x0, y0, x1, y1 in self.blocks():
            ax.add_patch(
                Rectangle(
                    (x0, y0),
                    x1 - x0,
                    y1 - y0,
                    facecolor="#dbe9f6" if tower == "ViT" else "#fde2c8",
                    edgecolor="#555",
                    linewidth=0.4,
                )
            )
        for n, ((i, j), xs, ys) in enumerate(self.curves()):
            ax.plot(xs, ys, color=SHORTCUT_COLOURS[n % len(SHORTCUT_COLOURS)], linewidth=1.5)
        for tower, x, count in (("ViT", VIT_X, self.vision_layers), ("LLM", LLM_X, self.llm_layers)):
            ax.text(x + WIDTH / 2, -0.04, f"{tower} ({count})", ha="center", va="top", fontsize=9, fontweight="bold")
            side, align = (x - 0.05, "right") if tower == "ViT" else (x + WIDTH + 0.05, "left")
            for k in self._ticks(count):
                ax.text(side, (k - 0.5) / count, str(k), ha=align, va="center", fontsize=7)
        ax.set_xlim(-0.6, LLM_X + WIDTH + 0.6)
        ax.set_ylim(-0.1, 1.02)
        ax.set_axis_off()
        ax.set_title(f"{self.name} ({len(self.shortcuts)} shortcuts)", fontsize=10)
        return fig


def pattern_diagram(
    pattern="sparse-uniform", vision_layers: int = 24, llm_layers: int = 32, num_shortcuts: int | None = None
) -> PatternDiagram:
    """A diagram for a pattern name / ``"i:j,..."`` string / list of pairs on a ``vision_layers``-layer ViT and a
    ``llm_layers``-layer LLM (default: CLIP-ViT-L and Vicuna-7B), or for a ``SparseCutConfig`` (its own depths)."""
    if isinstance(pattern, SparseCutConfig):
        return PatternDiagram(
            pattern.pattern,
            pattern.shortcut_pairs,
            pattern.vision_config.num_hidden_layers,
            pattern.text_config.num_hidden_layers,
        )
    if isinstance(pattern, str):
        return PatternDiagram(
            pattern, make_pattern(pattern, vision_layers, llm_layers, num_shortcuts), vision_layers, llm_layers
        )
    pairs = validate_shortcuts(pattern, vision_layers, llm_layers)
    return PatternDiagram("custom", pairs, vision_layers, llm_layers)
