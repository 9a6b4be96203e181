"""The per-shortcut adapter (paper eq. 2): cross-attention from low-res to high-res tokens, then LLaVA's MLP.

    Y_i = X_low + attn(LN(X_low), LN(X_kv))      query: low-res tokens; key/value: high-res tokens
    Z_i = gate * MLP(Y_i)                         MLP = LLaVA-1.5's mlp2x_gelu projector

The attention's output projection starts at zero, so an untrained adapter is exactly LLaVA's projector
(and an adapter seeded from a LLaVA checkpoint reproduces it); the optional per-channel ``gate`` starts at
zero for the extra shortcuts (config ``zero_init_extra_shortcuts``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN


class ZeroInitLinear(nn.Linear):
    """A linear layer that ``SparseCutPreTrainedModel._init_weights`` starts at zero."""


class AdapterAttention(nn.Module):
    """Pre-norm multi-head attention from ``query_tokens`` to ``kv_tokens`` (SDPA), with a residual."""

    def __init__(self, dim: int, num_heads: int, eps: float = 1e-5):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.norm_q = nn.LayerNorm(dim, eps=eps)
        self.norm_kv = nn.LayerNorm(dim, eps=eps)
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.o_proj = ZeroInitLinear(dim, dim)  # starts at 0: the block starts as the identity

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)

    def forward(
        self, query_tokens: torch.Tensor, kv_tokens: torch.Tensor, output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """query_tokens (B, M, D), kv_tokens (B, K, D) -> (B, M, D), and attention weights (B, H, M, K) if asked."""
        B, M, D = query_tokens.shape
        kv = self.norm_kv(kv_tokens)
        q = self._heads(self.q_proj(self.norm_q(query_tokens)))
        k, v = self._heads(self.k_proj(kv)), self._heads(self.v_proj(kv))
        weights = None
        if output_attentions:  # SDPA does not return weights; compute them explicitly only when asked
            weights = torch.softmax((q @ k.transpose(-1, -2)) / math.sqrt(self.head_dim), dim=-1)  # (B, H, M, K)
            out = weights @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v)  # (B, H, M, hd)
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
        self.attention = AdapterAttention(v_dim, config.adapter_num_heads, eps) if config.adapter_attention else None
        self.mlp = AdapterMLP(v_dim, t_dim, config.adapter_mlp, config.adapter_bias, config.adapter_hidden_act)
        self.gate = nn.Parameter(torch.zeros(t_dim)) if gated else None

    def forward(
        self, low: torch.Tensor, high: torch.Tensor | None = None, output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """low (B, M, Dv) low-res tokens; high (B, K, Dv) tokens of all crops or None.
        Returns Z (B, M, Dt) and the attention weights (B, H, M, K') when asked (None without attention)."""
        weights = None
        if self.attention is not None:
            if high is None:
                kv = low  # no high-res: the same block attends over the low-res tokens
            elif self.kv_source == "low+high":
                kv = torch.cat([low, high], dim=1)  # (B, M + K, Dv)
            else:
                kv = high
            low, weights = self.attention(low, kv, output_attentions)
        z = self.mlp(low)
        if self.gate is not None:
            z = z * self.gate
        return z, weights
