"""Reading tokens (config ``reading_tokens``; not the paper's): K more visual tokens per image, read from the crops.

    R_k = q_k + attn_k(LN(q_k), LN(X_high))     one learned query q_k (D_v) and one attention block per token k
    T_k = MLP(R_k)                               (B, K, D_t), at the K placeholders after the M_v fused tokens

The paper fuses the crops into the M_v low-res tokens (eq. 2), so a text's characters share the one token of the
region they lie in. A 135M LLM, given perfect inputs, copies characters that arrive one per position within a few
hundred steps but does not learn to spell several out of one token in that budget (README "Step (m)"); reading
tokens give each character place a position of its own at K tokens of context, where concatenating the crops
(Fig. 3a) costs g^2 * M_v. Each query has its own attention block, so token k can look for, and pull out, the k-th
character (a tower whose glyph tokens spell their whole text, ``training.tiny.dense --spell``, makes that a linear
read-out). The attention output projections start at zero, so an untrained reading token is MLP(q_k): constant.

With ``config.reading_tower`` the adapter owns a vision tower of its own (``vision_tower``, the model's
``vision_config``) and reads the crops through it; the shortcuts keep the model's tower. A tower that spells does not
keep the look-ups of the questions about objects at this scale, and one that keeps them does not spell (README
"Step (n)"): each path then gets the tower it needs, at the cost of one more tower pass over the crops.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoModel

from .adapter import AdapterAttention, AdapterMLP

READER_WEIGHTS = "reading_adapter.safetensors"  # beside a reading tower: a trained adapter for it (``training.tiny.reader``)


class ReadingAdapter(nn.Module):
    """``forward(high (B, K_high, D_v))``: the crops' tokens of each image -> its reading tokens (B, K, D_t); with
    ``config.reading_tower`` those tokens come from ``vision_tower`` (``sparsecut.model`` runs it over the crops)."""

    def __init__(self, config, vision_tower: nn.Module | None = None):
        """``vision_tower``: the reading tower already loaded (with ``config.reading_tower``; default: built from
        ``config.vision_config``, its weights to be loaded)."""
        super().__init__()
        if vision_tower is not None and not config.reading_tower:
            raise ValueError("a reading vision tower was given, but config.reading_tower is False.")
        self.vision_tower = None
        if config.reading_tower:
            self.vision_tower = vision_tower if vision_tower is not None else AutoModel.from_config(config.vision_config)
        v_dim, t_dim = config.vision_config.hidden_size, config.text_config.hidden_size
        eps = getattr(config.vision_config, "layer_norm_eps", 1e-5)
        self.queries = nn.Parameter(torch.empty(config.reading_tokens, v_dim))  # SparseCutPreTrainedModel inits it
        self.attentions = nn.ModuleList(
            AdapterAttention(v_dim, config.adapter_num_heads, eps) for _ in range(config.reading_tokens)
        )
        self.mlp = AdapterMLP(v_dim, t_dim, config.adapter_mlp, config.adapter_bias, config.adapter_hidden_act)

    def forward(self, high: torch.Tensor) -> torch.Tensor:
        queries = high.new_zeros(high.shape[0], *self.queries.shape) + self.queries.to(high.dtype)  # (B, K, Dv): no leaf view
        read = [attention(queries[:, k : k + 1], high)[0] for k, attention in enumerate(self.attentions)]  # (B, 1, Dv) each
        return self.mlp(torch.cat(read, dim=1))  # (B, K, Dt)
