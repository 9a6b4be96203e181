"""The per-shortcut adapter (paper eq. 2): cross-attention from low-res to high-res tokens, then LLaVA's MLP.

    Y_i = X_low + attn(LN(X_low), LN(X_kv))      query: low-res tokens; key/value: high-res tokens
    Z_i = gate * MLP(Y_i)                         MLP = LLaVA-1.5's mlp2x_gelu projector
    (with ``adapter_output_rms`` r: Z_i = gate * w * RMSNorm(MLP(Y_i)), the per-channel weight w starting at r)

With ``adapter_attention_scope="local"`` each low-res token attends only to the high-res tokens of its own image
region (``local_region_index``), optionally with a learned per-head bias for each place in the region
(``adapter_region_bias``: head h starts preferring place h mod g^2, so the heads copy the region's tokens in order). The attention's output projection starts at zero, so an untrained adapter is exactly LLaVA's projector
(and an adapter seeded from a LLaVA checkpoint reproduces it); the optional per-channel ``gate`` starts at
zero for the extra shortcuts (config ``zero_init_extra_shortcuts``). With ``high_res_fusion="stack"`` (not the
paper's) Y_i also carries each low-res token's g x g high-res tokens along its channels (``stack_regions``), so the
MLP reads (1 + g^2) D_v channels and no glyph is mixed away; the context still holds M_v tokens.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN


class ZeroInitLinear(nn.Linear):
    """A linear layer that ``SparseCutPreTrainedModel._init_weights`` starts at zero."""


class OutputRMSNorm(nn.RMSNorm):
    """RMS normalisation of an adapter's output, its per-channel weight starting at ``start`` (config
    ``adapter_output_rms``; ``SparseCutPreTrainedModel._init_weights`` sets it)."""

    def __init__(self, dim: int, start: float):
        super().__init__(dim, eps=1e-6)
        self.start = start


@functools.lru_cache(maxsize=16)  # one small table per geometry and device, shared by every adapter and call
def local_region_index(side: int, grid: int, with_low: bool, device=None) -> torch.Tensor:
    """(M, K) long (read-only: cached): for low-res token m and key k, k's place in m's region (0..g^2 - 1, row-major; g^2 for m itself
    among the low-res keys), or -1 where m may not attend to k.

    M = side^2 low-res tokens (row-major); the keys are the g^2 crops' tokens (crops row-major, each side^2 tokens
    row-major), preceded by the M low-res tokens themselves when ``with_low``. The high-res tokens tile a
    (g * side)^2 grid of the whole image, of which low-res token (r, c) covers the g x g block of rows r*g..,
    columns c*g.."""
    rows = torch.arange(grid * side, device=device)
    crop_row, local_row = rows // side, rows % side  # a whole-image row of high-res tokens: its crop row, its row there
    crop = crop_row[:, None] * grid + crop_row[None, :]  # (R, C) -> crop index, row-major
    token = local_row[:, None] * side + local_row[None, :]  # (R, C) -> token index in its crop
    key = (crop * side * side + token).flatten()  # key index of each whole-image high-res position (R, C), row-major
    owner = ((rows // grid)[:, None] * side + (rows // grid)[None, :]).flatten()  # the low-res token covering (R, C)
    place = ((rows % grid)[:, None] * grid + (rows % grid)[None, :]).flatten()  # (R, C)'s place in that block
    index = torch.full((side * side, grid * grid * side * side), -1, dtype=torch.long, device=device)
    index[owner, key] = place
    if with_low:
        own = torch.full((side * side, side * side), -1, dtype=torch.long, device=device)
        own.fill_diagonal_(grid * grid)
        index = torch.cat([own, index], dim=1)
    return index


def stack_regions(high: torch.Tensor, side: int, grid: int) -> torch.Tensor:
    """high (B, g^2 * side^2, D): the g^2 crops' tokens (crops row-major, each side^2 tokens row-major) -> (B, side^2,
    g^2 * D): for each low-res token (row-major), the g x g high-res tokens of its image region side by side along
    the channels, in place order (row-major, as ``local_region_index`` numbers the places)."""
    B, _, D = high.shape
    whole = high.view(B, grid, grid, side, side, D).permute(0, 1, 3, 2, 4, 5)  # (B, crop row, row, crop col, col, D)
    blocks = whole.reshape(B, side, grid, side, grid, D).permute(0, 1, 3, 2, 4, 5)  # (B, r, c, place row, place col, D)
    return blocks.reshape(B, side * side, grid * grid * D)


class AdapterAttention(nn.Module):
    """Pre-norm multi-head attention from ``query_tokens`` to ``kv_tokens`` (SDPA), with a residual."""

    def __init__(self, dim: int, num_heads: int, eps: float = 1e-5, region_places: int = 0,
                 region_prior: float | None = None):
        """``region_prior`` b (with ``region_places`` P = g^2 + 1): a learned bias (H, P) on the scores of each place
        of a local region (``local_region_index``), starting at b for place h mod g^2 of head h and 0 elsewhere."""
        super().__init__()
        self.num_heads = num_heads
        self.region_prior = region_prior
        self.region_bias = None
        if region_prior is not None:
            self.region_bias = nn.Parameter(torch.empty(num_heads, region_places))
            self.reset_region_bias()
        self.head_dim = dim // num_heads
        self.norm_q = nn.LayerNorm(dim, eps=eps)
        self.norm_kv = nn.LayerNorm(dim, eps=eps)
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.o_proj = ZeroInitLinear(dim, dim)  # starts at 0: the block starts as the identity

    def reset_region_bias(self) -> None:
        """The bias's starting value: head h prefers place h mod g^2 of the region by ``region_prior``."""
        with torch.no_grad():
            self.region_bias.zero_()
            places = self.region_bias.shape[1] - 1  # g^2 high-res places, then the query's own low-res token
            self.region_bias[torch.arange(self.num_heads), torch.arange(self.num_heads) % places] = self.region_prior

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)

    def forward(
        self, query_tokens: torch.Tensor, kv_tokens: torch.Tensor, output_attentions: bool = False,
        region: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """query_tokens (B, M, D), kv_tokens (B, K, D), optional ``region`` (M, K) long (``local_region_index``: -1
        where a query may not attend) -> (B, M, D), and attention weights (B, H, M, K) if asked."""
        B, M, D = query_tokens.shape
        kv = self.norm_kv(kv_tokens)
        q = self._heads(self.q_proj(self.norm_q(query_tokens)))
        k, v = self._heads(self.k_proj(kv)), self._heads(self.v_proj(kv))
        mask = None
        if region is not None and self.region_bias is None:
            mask = region >= 0  # (M, K) bool
        elif region is not None:  # additive: the place's bias where allowed, -inf elsewhere, (1, H, M, K)
            bias = self.region_bias[:, region.clamp(min=0)].masked_fill(region < 0, float("-inf"))
            mask = bias[None].to(q.dtype)
        weights = None
        if output_attentions:  # SDPA does not return weights; compute them explicitly only when asked
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.head_dim)  # (B, H, M, K)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
            weights = torch.softmax(scores, dim=-1)
            out = weights @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, M, hd)
        out = out.transpose(1, 2).reshape(B, M, D)
        return query_tokens + self.o_proj(out), weights


class AdapterMLP(nn.Module):
    """LLaVA-1.5's projector: ``linear_2(act(linear_1(x)))`` (mlp2x_gelu), or a single ``linear_1``."""

    def __init__(self, in_dim: int, out_dim: int, kind: str, bias: bool, act: str):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, out_dim, bias=bias)
        if kind == "mlp2x_gelu":
            self.act = ACT2FN[act]
            self.linear_2 = nn.Linear(out_dim, out_dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear_1(x)
        if hasattr(self, "linear_2"):
            x = self.linear_2(self.act(x))
        return x


class ShortcutAdapter(nn.Module):
    """One shortcut's adapter: fuse low/high-res ViT tokens of one layer and map them to the LLM width."""

    def __init__(self, config, gated: bool):
        super().__init__()
        v_dim, t_dim = config.vision_config.hidden_size, config.text_config.hidden_size
        eps = getattr(config.vision_config, "layer_norm_eps", 1e-5)
        self.kv_source = config.adapter_kv_source
        self.local = config.adapter_attention_scope == "local"
        self.grid = config.high_res_grid
        self.stack = config.high_res_fusion == "stack"
        self.attention = None
        if config.adapter_attention:
            self.attention = AdapterAttention(v_dim, config.adapter_num_heads, eps, config.high_res_grid**2 + 1,
                                              config.adapter_region_bias)
        fused_dim = v_dim * (1 + self.grid**2) if self.stack else v_dim  # Y's width
        self.mlp = AdapterMLP(fused_dim, t_dim, config.adapter_mlp, config.adapter_bias, config.adapter_hidden_act)
        self.output_norm = None
        if config.adapter_output_rms is not None:
            self.output_norm = OutputRMSNorm(t_dim, config.adapter_output_rms)
        self.gate = nn.Parameter(torch.zeros(t_dim)) if gated else None

    def fuse(
        self, low: torch.Tensor, high: torch.Tensor | None = None, output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Eq. 2's Y: low (B, M, Dv) low-res tokens, high (B, K, Dv) tokens of all crops or None -> Y (B, M, Dv), and
        the attention weights (B, H, M, K') when asked (None without attention: Y is ``low``). With the ``stack``
        fusion Y is (B, M, (1 + g^2) Dv): eq. 2's, then each token's region of ``high`` (``stack_regions``; zeros
        when called without crops)."""
        fused, weights = self._attend(low, high, output_attentions)
        if not self.stack:
            return fused, weights
        side = math.isqrt(low.shape[1])
        stacked = (stack_regions(high, side, self.grid) if high is not None
                   else low.new_zeros(*low.shape[:2], self.grid**2 * low.shape[2]))
        return torch.cat([fused, stacked], dim=-1), weights

    def _attend(
        self, low: torch.Tensor, high: torch.Tensor | None, output_attentions: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Eq. 2's cross-attention (low itself without an attention block): (B, M, Dv), weights or None."""
        if self.attention is None:
            return low, None
        region = None
        if high is None:
            kv = low  # no high-res: the same block attends over the low-res tokens (globally, whatever the scope)
        else:
            kv = torch.cat([low, high], dim=1) if self.kv_source == "low+high" else high  # (B, [M +] K, Dv)
            if self.local:
                region = local_region_index(math.isqrt(low.shape[1]), self.grid, self.kv_source == "low+high", low.device)
        return self.attention(low, kv, output_attentions, region)

    def forward(
        self, low: torch.Tensor, high: torch.Tensor | None = None, output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """low (B, M, Dv) low-res tokens; high (B, K, Dv) tokens of all crops or None.
        Returns Z (B, M, Dt) and the attention weights (B, H, M, K') when asked (None without attention)."""
        fused, weights = self.fuse(low, high, output_attentions)
        return self.project(fused), weights

    def project(self, fused: torch.Tensor) -> torch.Tensor:
        """Y (B, M, Dv; (1 + g^2) Dv when stacked) -> Z (B, M, Dt): the MLP, the output normalisation (if any), then the gate (if any)."""
        z = self.mlp(fused)
        if self.output_norm is not None:
            z = self.output_norm(z)
        return z * self.gate if self.gate is not None else z
