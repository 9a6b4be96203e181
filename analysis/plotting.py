"""Figure helpers shared by the views: heatmaps laid over the image, subplot grids, colours.

Matplotlib figures are built with ``matplotlib.figure.Figure`` (no pyplot, no global state), so views can be drawn
from several threads at once.
"""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
import torch
from matplotlib import colormaps
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from plotly.subplots import make_subplots

from sparsecut.patterns import Shortcut, format_pattern

SEQUENTIAL = ("Inferno", "inferno")  # (plotly, matplotlib) colour maps for values >= 0
DIVERGING = ("RdBu_r", "RdBu_r")  # for signed values, centred on 0
SHORTCUT_COLOURS = tuple(to_hex(c) for c in colormaps["tab10"].colors)  # one colour per shortcut, in order


def label(shortcut: Shortcut) -> str:
    """``"23:1"``: ViT layer 23 into LLM layer 1."""
    return format_pattern([shortcut])


def to_numpy(values) -> np.ndarray:
    return values.detach().float().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)


def grid_shape(count: int, max_cols: int = 4) -> tuple[int, int]:
    cols = max(1, min(count, max_cols))
    return math.ceil(count / cols), cols


def value_range(maps, signed: bool) -> tuple[float, float]:
    """One colour range for several maps: [0, max] or symmetric [-m, m] for signed values."""
    values = np.concatenate([to_numpy(m).ravel() for m in maps])
    if signed:
        bound = float(np.abs(values).max()) or 1.0
        return -bound, bound
    return 0.0, float(values.max()) or 1.0


def matplotlib_grid(count: int, max_cols: int = 4, panel: float = 2.6, extra_rows: int = 0) -> tuple[Figure, list]:
    """A Figure with ``count`` image panels (and ``extra_rows`` full-width rows on top); returns (fig, [top axes..., panels...])."""
    rows, cols = grid_shape(count, max_cols)
    fig = Figure(figsize=(max(cols * panel, 6.0), (rows + 1.2 * extra_rows) * panel), layout="constrained")
    spec = fig.add_gridspec(extra_rows + rows, cols, height_ratios=[1.2] * extra_rows + [1.0] * rows)
    top = [fig.add_subplot(spec[r, :]) for r in range(extra_rows)]
    panels = [fig.add_subplot(spec[extra_rows + k // cols, k % cols]) for k in range(count)]
    return fig, top + panels


def draw_overlay(
    ax, image: np.ndarray, heat, title: str, vmin: float, vmax: float, signed: bool = False, alpha: float = 0.55
):
    """Draw ``heat`` (h, w) stretched over ``image`` (H, W, 3) on a matplotlib axis; returns the heat artist."""
    H, W = image.shape[:2]
    ax.imshow(image, extent=(0, W, H, 0))
    artist = ax.imshow(
        to_numpy(heat),
        extent=(0, W, H, 0),
        cmap=(DIVERGING if signed else SEQUENTIAL)[1],
        vmin=vmin,
        vmax=vmax,
        alpha=alpha,
        interpolation="nearest",
    )
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()
    return artist


def outline_patch(ax, image: np.ndarray, patch: int, side: int, colour: str = "cyan") -> None:
    """Outline low-res patch ``patch`` (flat index on a side x side grid) on a matplotlib image axis."""
    H, W = image.shape[:2]
    row, col = divmod(patch, side)
    ax.add_patch(
        Rectangle((col * W / side, row * H / side), W / side, H / side, fill=False, edgecolor=colour, linewidth=1.5)
    )


def plotly_grid(count: int, titles: list[str], max_cols: int = 4, top_rows: int = 0, top_titles=()) -> go.Figure:
    """Subplots: ``top_rows`` full-width chart rows, then ``count`` image panels."""
    rows, cols = grid_shape(count, max_cols)
    specs = [[{"colspan": cols}] + [None] * (cols - 1) for _ in range(top_rows)] + [[{}] * cols for _ in range(rows)]
    subplot_titles = list(top_titles) + list(titles)
    fig = make_subplots(
        rows=top_rows + rows,
        cols=cols,
        specs=specs,
        subplot_titles=subplot_titles,
        row_heights=[1.2] * top_rows + [1.0] * rows,
        vertical_spacing=0.25 / (top_rows + rows),
    )
    fig.update_layout(
        height=260 * (top_rows * 1.2 + rows) + 80, width=max(240 * cols, 640), margin=dict(t=60, l=30, r=30, b=30)
    )
    return fig


def panel_position(index: int, count: int, max_cols: int = 4, top_rows: int = 0) -> tuple[int, int]:
    """(row, col), 1-based, of image panel ``index`` in a ``plotly_grid``."""
    _, cols = grid_shape(count, max_cols)
    return top_rows + 1 + index // cols, 1 + index % cols


def add_overlay(
    fig: go.Figure,
    row: int,
    col: int,
    image: np.ndarray,
    heat,
    name: str,
    zmin: float,
    zmax: float,
    signed: bool = False,
    showscale: bool = False,
    opacity: float = 0.55,
) -> None:
    """Add ``image`` and ``heat`` (h, w) stretched over it to subplot (row, col) of a plotly figure."""
    H, W = image.shape[:2]
    values = to_numpy(heat)
    h, w = values.shape
    fig.add_trace(go.Image(z=image, x0=0.5, y0=0.5, hoverinfo="skip"), row=row, col=col)  # pixel k spans [k, k + 1]
    fig.add_trace(
        go.Heatmap(
            z=values,
            x0=W / w / 2,
            dx=W / w,
            y0=H / h / 2,
            dy=H / h,
            zmin=zmin,
            zmax=zmax,
            opacity=opacity,
            colorscale=(DIVERGING if signed else SEQUENTIAL)[0],
            showscale=showscale,
            name=name,
            hovertemplate=f"{name}<br>row %{{y}}, col %{{x}}: %{{z:.4g}}<extra></extra>",
        ),
        row=row,
        col=col,
    )
    fig.update_xaxes(visible=False, row=row, col=col)
    fig.update_yaxes(visible=False, autorange="reversed", row=row, col=col)


def add_patch_outline(
    fig: go.Figure, row: int, col: int, image: np.ndarray, patch: int, side: int, colour: str = "cyan"
) -> None:
    H, W = image.shape[:2]
    r, c = divmod(patch, side)
    fig.add_shape(
        type="rect",
        x0=c * W / side,
        x1=(c + 1) * W / side,
        y0=r * H / side,
        y1=(r + 1) * H / side,
        line=dict(color=colour, width=2),
        row=row,
        col=col,
    )
