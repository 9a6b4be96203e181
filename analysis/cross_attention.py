"""Where the adapters look (view 2): attention from low-res queries to high-res keys, per shortcut and head.

Each adapter's attention block (paper eq. 2) lets every low-res token (query) gather detail from the g x g
high-res crops (keys/values). For a chosen low-res patch, the weights over the crops' tokens are stitched into
one map of the whole image: a well-trained adapter looks at the part of the crops covering that patch. With
``adapter_kv_source="low+high"`` the queries also attend to the low-res tokens (a second map); without high-res
views the block attends over the low-res tokens. The attention entropy per shortcut and head (nats; ``log K`` is
uniform attention over the K keys) tells sharp from diffuse fusion. Attention on CLS tokens (CLIP with
``vision_feature_select_strategy="full"``) is left out of the maps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
import torch

from sparsecut.model import adapter_key
from sparsecut.patterns import Shortcut

from .grid import HIGH_RES, LOW_RES, TokenGrid
from .inputs import Example, check_model
from .plotting import (
    add_overlay,
    add_patch_outline,
    draw_overlay,
    label,
    matplotlib_grid,
    outline_patch,
    panel_position,
    plotly_grid,
    to_numpy,
    value_range,
)


def unavailable_reason(config, high_res: bool) -> str | None:
    """Why this model has no adapter attention to show with these settings, or None if it has."""
    if not config.adapter_attention:
        return "The adapters have no attention block (adapter_attention=False, as in llava mode): nothing to show."
    if high_res and config.high_res_fusion == "concat":
        return "In concat mode every view is adapted on its own and its tokens go to the context: there is no cross-attention."
    return None


@dataclass
class CrossAttentionResult:
    """``attentions[s]`` (H, M_q, K): adapter attention of shortcut s, queries = the low-res view's tokens,
    keys in ``keys`` order ("low-res" and/or "high-res" blocks); each row sums to 1."""

    shortcuts: list[Shortcut]
    attentions: dict[Shortcut, torch.Tensor]
    keys: tuple[str, ...]
    grid: TokenGrid
    image: np.ndarray

    def entropy(self) -> torch.Tensor:
        """(S, H) attention entropy in nats, averaged over the queries."""
        return torch.stack([-torch.special.xlogy(a, a).sum(-1).mean(-1) for a in self.attentions.values()])

    @property
    def max_entropy(self) -> float:
        """log K: the entropy of uniform attention over all keys."""
        return math.log(next(iter(self.attentions.values())).shape[-1])

    def key_maps(self, patch=None, head: int | None = None) -> dict[str, torch.Tensor]:
        """Attention of one low-res patch (``(row, col)`` or flat index; default: the centre) over the keys, on the
        image: {"high-res": (S, g*side, g*side)} and/or {"low-res": (S, side, side)}. ``head=None`` averages heads."""
        query = self.grid.cls + self.patch(patch)
        rows = []
        for weights in self.attentions.values():
            if head is not None and not 0 <= head < weights.shape[0]:
                raise ValueError(f"Head {head} is out of range; the adapters have heads 0..{weights.shape[0] - 1}.")
            row = weights[:, query]  # (H, K)
            rows.append(row.mean(0) if head is None else row[head])
        keys = torch.stack(rows)  # (S, K)
        per_view = self.grid.tokens_per_view
        maps, start = {}, 0
        for kind in self.keys:
            if kind == LOW_RES:
                maps[LOW_RES] = self.grid.view_maps(keys[:, start : start + per_view])[:, 0]
                start += per_view
            else:
                count = self.grid.crops**2 * per_view
                maps[HIGH_RES] = self.grid.stitch(self.grid.view_maps(keys[:, start : start + count]))
                start += count
        return maps

    def patch(self, patch=None) -> int:
        """The flat low-res patch index of ``patch``; None gives the centre patch."""
        return self.grid.patch_index((self.grid.side // 2, self.grid.side // 2) if patch is None else patch)

    def table(self) -> list[dict]:
        entropy = self.entropy()
        return [
            {
                "shortcut": label(s),
                "mean_entropy": float(e.mean()),
                "entropy_per_head": [float(x) for x in e],
                "uniform_entropy": self.max_entropy,
            }
            for s, e in zip(self.shortcuts, entropy)
        ]

    def _panels(self, patch, head) -> list[tuple[str, torch.Tensor]]:
        return [
            (f"{label(s)}: {kind} keys", maps[k])
            for kind, maps in self.key_maps(patch, head).items()
            for k, s in enumerate(self.shortcuts)
        ]

    def _title(self, index: int, head: int | None) -> str:
        row, col = divmod(index, self.grid.side)
        which = "mean of heads" if head is None else f"head {head}"
        return f"adapter attention of low-res patch ({row}, {col}) (outlined), {which}"

    def plotly(self, patch=None, head: int | None = None) -> go.Figure:
        """Entropy per shortcut and head, then the chosen patch's attention over the image (patch outlined)."""
        index, panels = self.patch(patch), self._panels(patch, head)
        fig = plotly_grid(
            len(panels),
            [t for t, _ in panels],
            top_rows=1,
            top_titles=(f"attention entropy (nats; uniform = {self.max_entropy:.2f})",),
        )
        names = [label(s) for s in self.shortcuts]
        entropy = to_numpy(self.entropy())
        for h in range(entropy.shape[1]):
            fig.add_trace(go.Bar(x=names, y=entropy[:, h], name=f"head {h}"), row=1, col=1)
        fig.update_xaxes(type="category", row=1, col=1)
        zmin, zmax = value_range([m for _, m in panels], signed=False)
        for k, (title, heat) in enumerate(panels):
            row, col = panel_position(k, len(panels), top_rows=1)
            add_overlay(fig, row, col, self.image, heat, title, zmin, zmax, showscale=k == 0)
            add_patch_outline(fig, row, col, self.image, index, self.grid.side)
        fig.update_layout(title=self._title(index, head), barmode="group")
        return fig

    def matplotlib(self, patch=None, head: int | None = None):
        index, panels = self.patch(patch), self._panels(patch, head)
        fig, axes = matplotlib_grid(len(panels), extra_rows=1)
        entropy = to_numpy(self.entropy())
        heads = entropy.shape[1]
        x, width = np.arange(len(self.shortcuts)), 0.8 / heads
        for h in range(heads):
            axes[0].bar(x + (h - (heads - 1) / 2) * width, entropy[:, h], width, label=f"head {h}")
        axes[0].axhline(self.max_entropy, color="grey", linestyle="--", linewidth=1, label="uniform")
        axes[0].set_xticks(x, [label(s) for s in self.shortcuts])
        axes[0].set_ylabel("entropy (nats)")
        axes[0].legend(fontsize=7, ncol=min(heads + 1, 6))
        axes[0].set_title("Entropy per head; " + self._title(index, head), fontsize=9)
        vmin, vmax = value_range([m for _, m in panels], signed=False)
        for ax, (title, heat) in zip(axes[1:], panels):
            artist = draw_overlay(ax, self.image, heat, title, vmin, vmax)
            outline_patch(ax, self.image, index, self.grid.side)
        fig.colorbar(artist, ax=axes[1:], shrink=0.8)
        return fig


def cross_attention(model, example: Example) -> CrossAttentionResult:
    """The adapters' attention weights for the example's image (vision tower and adapters only; no LLM pass)."""
    config = check_model(model).config
    reason = unavailable_reason(config, example.high_res)
    if reason:
        raise ValueError(reason)
    if not example.shortcuts:
        raise ValueError("No shortcut is switched on in this example (prepare(..., shortcuts=[])); no adapter runs.")
    with torch.no_grad():
        _, weights = model.model.get_shortcut_features(
            example.pixel_values, list(example.shortcuts), example.high_res, output_attentions=True
        )
    if not example.high_res:
        keys = (LOW_RES,)
    else:
        keys = (LOW_RES, HIGH_RES) if config.adapter_kv_source == "low+high" else (HIGH_RES,)
    return CrossAttentionResult(
        shortcuts=list(example.shortcuts),
        attentions={s: weights[adapter_key(s)][0].float().cpu() for s in example.shortcuts},  # (H, M_q, K)
        keys=keys,
        grid=example.grid,
        image=example.image,
    )
