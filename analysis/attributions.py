"""What drove the answer (view 5): attributions of ``log p(answer | image, question)`` with captum.

- ``integrated_gradients``: captum ``IntegratedGradients`` on the pixels of every view, from a baseline image to
  the example's. Pixel maps sum the three channels, so a map's total is the attribution of that view; all views
  together add up to ``score - baseline_score`` (up to ``delta``, the integration error: raise ``n_steps``).
- ``occlusion``: captum ``Occlusion``: a ``window`` x ``window`` square of one view at a time is replaced by the
  baseline; a pixel's value is the mean drop in log p over the windows covering it (positive: the region supports
  the answer). Costs views x (S / stride)^2 forward passes.
- ``shortcut_attribution``: integrated gradients on the adapter outputs Z_i (layer attribution on the adapters),
  from Z = 0 (the shortcut switched off) to the example's Z. Each shortcut's total is its share of
  ``score - baseline_score``, where the baseline is every shortcut off; per-token sums give a map per shortcut.
  The adapter outputs are fed in by hooks that act only in the calling context (see ``analysis.probes``), so
  requests running at the same time on the same model are untouched, which captum's ``LayerIntegratedGradients``
  (hooks that rewrite a layer's output for every caller) would not guarantee.

Image baselines, in the processor's normalised pixel space: ``"mean"`` (all zeros: the image processor's mean
colour, a flat grey for CLIP), ``"black"``, or a tensor shaped like ``example.pixel_values``.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
import torch
from captum.attr import IntegratedGradients, Occlusion

from sparsecut.model import adapter_key
from sparsecut.patterns import Shortcut
from sparsecut.quantization import has_int8_layers

from .grid import HIGH_RES, LOW_RES, TokenGrid
from .inputs import Example, answer_logprobs, check_model
from .plotting import (
    add_overlay,
    draw_overlay,
    label,
    matplotlib_grid,
    panel_position,
    plotly_grid,
    to_numpy,
    value_range,
)
from .probes import ContextHooks, base_model

BASELINES = ("mean", "black")
METHODS = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")


@dataclass
class ImageAttribution:
    """``attributions`` (N, 3, S, S) per view and pixel; ``maps`` {"low-res": (S, S), "high-res": (g*S, g*S)}."""

    method: str
    attributions: torch.Tensor
    maps: dict[str, torch.Tensor]
    score: float  # log p(answer) for the example's image
    baseline_score: float  # log p(answer) for the baseline image
    delta: float | None  # integrated gradients' convergence delta (None for occlusion)
    settings: dict
    image: np.ndarray

    def table(self) -> list[dict]:
        return [
            {"view": kind, "total": float(m.sum()), "max": float(m.max()), "min": float(m.min())}
            for kind, m in self.maps.items()
        ]

    def _title(self) -> str:
        settings = ", ".join(f"{k}={v}" for k, v in self.settings.items())
        return f"{self.method} ({settings}): log p(answer) {self.score:.3f}, baseline {self.baseline_score:.3f}"

    def plotly(self) -> go.Figure:
        """One panel per view; red supports the answer, blue works against it."""
        panels = list(self.maps.items())
        fig = plotly_grid(len(panels), [f"{kind} view" for kind, _ in panels])
        zmin, zmax = value_range([m for _, m in panels], signed=True)
        for k, (kind, heat) in enumerate(panels):
            row, col = panel_position(k, len(panels))
            add_overlay(fig, row, col, self.image, heat, kind, zmin, zmax, signed=True, showscale=k == 0)
        fig.update_layout(title=self._title())
        return fig

    def matplotlib(self):
        panels = list(self.maps.items())
        fig, axes = matplotlib_grid(len(panels))
        vmin, vmax = value_range([m for _, m in panels], signed=True)
        for ax, (kind, heat) in zip(axes, panels):
            artist = draw_overlay(ax, self.image, heat, f"{kind} view", vmin, vmax, signed=True)
        fig.colorbar(artist, ax=axes, shrink=0.8)
        fig.suptitle(textwrap.fill(self._title(), 75), fontsize=9)
        return fig


@dataclass
class ShortcutAttribution:
    """``per_token`` (S, T_img): integrated gradients on each shortcut's adapter output, summed over features."""

    shortcuts: list[Shortcut]
    per_token: torch.Tensor
    score: float  # log p(answer), every shortcut on
    baseline_score: float  # log p(answer), every shortcut off (Z = 0)
    delta: float  # convergence delta: sum of attributions - (score - baseline_score)
    settings: dict
    grid: TokenGrid
    image: np.ndarray

    @property
    def totals(self) -> torch.Tensor:
        """(S,) each shortcut's attribution; they add up to score - baseline_score (up to delta)."""
        return self.per_token.sum(-1)

    def maps(self) -> dict[str, torch.Tensor]:
        """{"low-res": (S, side, side)} (+ "high-res" in concat mode)."""
        return self.grid.context_maps(self.per_token)

    def table(self) -> list[dict]:
        return [{"shortcut": label(s), "attribution": float(t)} for s, t in zip(self.shortcuts, self.totals)]

    def _panels(self) -> list[tuple[str, torch.Tensor]]:
        return [
            (f"{label(s)} ({kind})", maps[k])
            for kind, maps in self.maps().items()
            for k, s in enumerate(self.shortcuts)
        ]

    def _title(self) -> str:
        return (
            f"Attribution over shortcuts (IG from all off; n_steps={self.settings['n_steps']}): log p {self.score:.3f} "
            f"vs {self.baseline_score:.3f} with all off"
        )

    def plotly(self) -> go.Figure:
        panels = self._panels()
        names = [label(s) for s in self.shortcuts]
        fig = plotly_grid(len(panels), [t for t, _ in panels], top_rows=1, top_titles=("attribution per shortcut",))
        totals = to_numpy(self.totals)
        fig.add_trace(
            go.Bar(
                x=names, y=totals, marker_color=["#d62728" if t > 0 else "#1f77b4" for t in totals], showlegend=False
            ),
            row=1,
            col=1,
        )
        fig.update_xaxes(type="category", row=1, col=1)
        zmin, zmax = value_range([m for _, m in panels], signed=True)
        for k, (title, heat) in enumerate(panels):
            row, col = panel_position(k, len(panels), top_rows=1)
            add_overlay(fig, row, col, self.image, heat, title, zmin, zmax, signed=True, showscale=k == 0)
        fig.update_layout(title=self._title())
        return fig

    def matplotlib(self):
        panels = self._panels()
        fig, axes = matplotlib_grid(len(panels), extra_rows=1)
        totals = to_numpy(self.totals)
        axes[0].bar(
            [label(s) for s in self.shortcuts], totals, color=["tab:red" if t > 0 else "tab:blue" for t in totals]
        )
        axes[0].axhline(0, color="black", linewidth=0.8)
        axes[0].set_ylabel("attribution to log p(answer)")
        axes[0].set_title(textwrap.fill(self._title(), 75), fontsize=9)
        vmin, vmax = value_range([m for _, m in panels], signed=True)
        for ax, (title, heat) in zip(axes[1:], panels):
            artist = draw_overlay(ax, self.image, heat, title, vmin, vmax, signed=True)
        fig.colorbar(artist, ax=axes[1:], shrink=0.8)
        return fig


def image_baseline(example: Example, baseline) -> torch.Tensor:
    """The baseline image in normalised pixel space, shaped like ``example.pixel_values`` (1, N, 3, S, S)."""
    pixels = example.pixel_values
    if isinstance(baseline, torch.Tensor):
        if baseline.shape not in (pixels.shape, pixels.shape[1:]):
            raise ValueError(
                f"A baseline tensor must be shaped like the pixel values {tuple(pixels.shape)}; got {tuple(baseline.shape)}."
            )
        return baseline.reshape(pixels.shape).to(pixels.device, pixels.dtype)
    if baseline == "mean":
        return torch.zeros_like(pixels)
    if baseline == "black":
        processor = example.processor.image_processor
        mean = torch.tensor(processor.image_mean, dtype=pixels.dtype, device=pixels.device)
        std = torch.tensor(processor.image_std, dtype=pixels.dtype, device=pixels.device)
        return ((0 - mean) / std)[:, None, None].expand(pixels.shape).clone()
    raise ValueError(
        f"Unknown baseline {baseline!r}; use one of {', '.join(BASELINES)} or a tensor shaped like the pixel values."
    )


def _pixel_maps(example: Example, per_pixel: torch.Tensor) -> dict[str, torch.Tensor]:
    """(N, S, S) per view -> {"low-res": (S, S)} (+ "high-res": (g*S, g*S), the crops stitched)."""
    maps = {LOW_RES: per_pixel[0]}
    if per_pixel.shape[0] > 1:
        maps[HIGH_RES] = example.grid.stitch(per_pixel[1:])
    return maps


def _score_of_pixels(model, example: Example):
    """pixel_values (k, N, 3, S, S) -> (k,) summed teacher-forced answer log-probability."""
    return lambda pixel_values: answer_logprobs(model, example, pixel_values=pixel_values).sum(-1)


def _check_steps(n_steps: int, method: str) -> None:
    if not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"n_steps must be a positive integer; got {n_steps!r}.")
    if method not in METHODS:
        raise ValueError(f"Unknown integration method {method!r}; use one of {', '.join(METHODS)}.")


def _integrate(score_fn, inputs: tuple, baselines: tuple, n_steps: int, method: str, internal_batch_size):
    """captum IG of ``score_fn(*inputs)`` from ``baselines``: (attributions per input, delta, score, baseline score)."""
    attributions, delta = IntegratedGradients(score_fn).attribute(
        inputs,
        baselines=baselines,
        n_steps=n_steps,
        method=method,
        internal_batch_size=internal_batch_size,
        return_convergence_delta=True,
    )
    with torch.no_grad():
        score, base_score = score_fn(*(torch.cat([x, b]) for x, b in zip(inputs, baselines))).tolist()
    return attributions, float(delta), score, base_score


def _check_gradients(model, method: str) -> None:
    """A ValueError when ``model`` has int8 layers (``sparsecut.quantization``), which have no gradient."""
    if has_int8_layers(model):
        raise ValueError(f"{method} needs gradients through the LLM, and this model's LLM runs in int8 (loaded with "
                         "dtype int8), which has none. Use occlusion (forward passes only), or load the model in "
                         "float32 or bfloat16 (app: --dtype float32).")


def integrated_gradients(
    model,
    example: Example,
    n_steps: int = 32,
    baseline="mean",
    method: str = "gausslegendre",
    internal_batch_size: int | None = None,
) -> ImageAttribution:
    """Pixel attribution of log p(answer) by integrated gradients; ``internal_batch_size`` bounds memory."""
    check_model(model)
    _check_gradients(model, "integrated gradients")
    _check_steps(n_steps, method)
    score_fn = _score_of_pixels(model, example)
    base = image_baseline(example, baseline)
    (attributions,), delta, score, base_score = _integrate(
        score_fn, (example.pixel_values,), (base,), n_steps, method, internal_batch_size
    )
    attributions = attributions[0].detach().float().cpu()  # (N, 3, S, S)
    return ImageAttribution(
        method="integrated gradients",
        attributions=attributions,
        maps=_pixel_maps(example, attributions.sum(1)),
        score=score,
        baseline_score=base_score,
        delta=delta,
        settings={
            "n_steps": n_steps,
            "method": method,
            "baseline": baseline if isinstance(baseline, str) else "tensor",
        },
        image=example.image,
    )


def occlusion(
    model,
    example: Example,
    window: int | None = None,
    stride: int | None = None,
    baseline="mean",
    perturbations_per_eval: int = 4,
) -> ImageAttribution:
    """Pixel attribution of log p(answer) by occluding ``window``-pixel squares (default: one ViT patch) of each view."""
    check_model(model)
    size = example.pixel_values.shape[-1]
    window = model.config.vision_config.patch_size if window is None else window
    stride = window if stride is None else stride
    if not 1 <= window <= size:
        raise ValueError(f"The occlusion window must be 1..{size} pixels (the view size); got {window}.")
    if not 1 <= stride <= size:
        raise ValueError(f"The occlusion stride must be 1..{size} pixels; got {stride}.")
    score_fn = _score_of_pixels(model, example)
    base = image_baseline(example, baseline)
    with torch.no_grad():
        attributions = Occlusion(score_fn).attribute(
            example.pixel_values,
            sliding_window_shapes=(1, 3, window, window),
            strides=(1, 3, stride, stride),
            baselines=base,
            perturbations_per_eval=perturbations_per_eval,
        )
        score, base_score = score_fn(torch.cat([example.pixel_values, base])).tolist()
    attributions = attributions[0].float().cpu()  # (N, 3, S, S): each channel carries the window's drop
    return ImageAttribution(
        method="occlusion",
        attributions=attributions,
        maps=_pixel_maps(example, attributions.mean(1)),
        score=score,
        baseline_score=base_score,
        delta=None,
        settings={"window": window, "stride": stride, "baseline": baseline if isinstance(baseline, str) else "tensor"},
        image=example.image,
    )


class _FeedAdapterOutputs(ContextHooks):
    """Replace each listed shortcut's adapter output with a given tensor (k, T_img, D_t), for calls in this context."""

    def __init__(self, model, values: dict[Shortcut, torch.Tensor]):
        super().__init__()
        self.model = base_model(model)
        self.values = values

    def _attach(self) -> None:
        for shortcut in self.values:
            self._forward_hook(self.model.adapters[adapter_key(shortcut)], self._feeder(shortcut))

    def _feeder(self, shortcut):
        def feed(module, args, output):
            z, weights = output
            return self.values[shortcut].reshape(z.shape).to(z.dtype), weights

        return feed


def shortcut_attribution(
    model, example: Example, n_steps: int = 32, method: str = "gausslegendre", internal_batch_size: int | None = None
) -> ShortcutAttribution:
    """Integrated gradients over the adapter outputs of the example's shortcuts, from all off (Z = 0)."""
    check_model(model)
    _check_gradients(model, "shortcut attribution")
    _check_steps(n_steps, method)
    shortcuts = list(example.shortcuts)
    if not shortcuts:
        raise ValueError(
            "No shortcut is switched on in this example (prepare(..., shortcuts=[])); nothing to attribute."
        )
    with torch.no_grad():
        features, _ = model.model.get_shortcut_features(example.pixel_values, shortcuts, example.high_res)
    outputs = tuple(features[s] for s in shortcuts)  # (1, T_img, D_t) each

    def score_fn(*zs):
        k = zs[0].shape[0]
        with _FeedAdapterOutputs(model, dict(zip(shortcuts, zs))):
            return answer_logprobs(model, example, pixel_values=example.pixel_values.expand(k, -1, -1, -1, -1)).sum(-1)

    baselines = tuple(torch.zeros_like(z) for z in outputs)
    attributions, delta, score, base_score = _integrate(score_fn, outputs, baselines, n_steps, method, internal_batch_size)
    return ShortcutAttribution(
        shortcuts=shortcuts,
        per_token=torch.stack([a[0].sum(-1) for a in attributions]).detach().float().cpu(),  # (S, T_img)
        score=score,
        baseline_score=base_score,
        delta=delta,
        settings={"n_steps": n_steps, "method": method},
        grid=example.grid,
        image=example.image,
    )
