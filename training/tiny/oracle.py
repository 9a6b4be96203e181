"""A perfect vision encoder for the synthetic scenes: the probe's control for "is it the vision or the LLM?".

Instead of a vision tower's features, each scene becomes one clean vector per grid cell, read from its
specification: colour, shape and size one-hot, and whether the cell holds legible text or a scribble (empty cells
are zeros); optionally also the cell's row and column one-hot, as a ViT's position embedding puts where a patch is
into its token, and the text's characters: a reader that cannot misread, either at the text's cell (one one-hot per
character position, ``text="cell"``: one token holds the whole text, as a fused low-res token would) or as tokens of
their own after the cells (``text="tokens"``: the k-th character's one-hot alone in block k of token CELLS + k, as
when the crops' tokens are in the context). ``OracleVLM`` puts those vectors, through a trainable two-layer
projector (LLaVA-1.5's), at the image placeholder positions of a causal LM, exactly where SparseCut's llava mode puts
its projected tower features. What
such a model cannot learn in a budget, no vision tower would let the same LLM learn in that budget.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.modeling_outputs import CausalLMOutputWithPast

from sparsecut.evaluation.synthetic.scenes import COLOURS, GRID, SHAPES, SIZES, Scene

from .dense import CHARS

FEATURES = len(COLOURS) + len(SHAPES) + len(SIZES) + 2  # + legible text, scribble
POSITION_FEATURES = 2 * GRID  # row one-hot, column one-hot
TEXT_POSITIONS = 3  # characters of the longest text (a 3-letter word)
TEXT_FEATURES = TEXT_POSITIONS * len(CHARS)  # per character position, which character
CELLS = GRID * GRID
TEXT_PLACES = ("cell", "tokens")  # where the oracle's text characters go


def oracle_features(scene: Scene, positions: bool = False, text: str | None = None) -> torch.Tensor:
    """(CELLS, FEATURES): one row per grid cell in row-major order (top-left first), one-hot, zeros where empty;
    ``positions``: POSITION_FEATURES more columns, every cell also carrying its row and column one-hot; ``text``
    (one of TEXT_PLACES): TEXT_FEATURES more (after those), the legible text's k-th character one-hot in block k, at
    the text's cell (``cell``) or in row CELLS + k of TEXT_POSITIONS more rows (``tokens``: (CELLS + TEXT_POSITIONS,
    ...), a row per character place, zeros past the text's end)."""
    if text is not None and text not in TEXT_PLACES:
        raise ValueError(f"text must be one of {', '.join(TEXT_PLACES)} (or None); got {text!r}.")
    extra = POSITION_FEATURES if positions else 0
    rows = CELLS + (TEXT_POSITIONS if text == "tokens" else 0)
    features = torch.zeros(rows, FEATURES + extra + (TEXT_FEATURES if text else 0))
    for shape in scene.shapes:
        row = shape.cell[0] * GRID + shape.cell[1]
        features[row, list(COLOURS).index(shape.colour)] = 1.0
        features[row, len(COLOURS) + SHAPES.index(shape.shape)] = 1.0
        features[row, len(COLOURS) + len(SHAPES) + list(SIZES).index(shape.size)] = 1.0
    if scene.text is not None:
        row = scene.text.cell[0] * GRID + scene.text.cell[1]
        features[row, FEATURES - 2 if scene.text.legible else FEATURES - 1] = 1.0
    if text and scene.text is not None and scene.text.legible:
        row = scene.text.cell[0] * GRID + scene.text.cell[1]
        for k, char in enumerate(scene.text.text):
            features[row if text == "cell" else CELLS + k, FEATURES + extra + k * len(CHARS) + CHARS.index(char)] = 1.0
    if positions:
        for cell in range(CELLS):
            features[cell, FEATURES + cell // GRID] = 1.0
            features[cell, FEATURES + GRID + cell % GRID] = 1.0
    return features


class OracleVLM(nn.Module):
    """A causal LM reading oracle features at its image placeholders.

    ``forward(input_ids (B, T), attention_mask (B, T), pixel_values (B, R, features), labels (B, T),
    logits_to_keep (B, T) bool)``: the
    placeholders of row b (exactly ``tokens_per_image`` of them, as the SparseCut processor writes) receive the
    R projected rows of image b (its cells, then any character tokens), then zeros for any placeholder beyond R.
    Returns logits and the LM loss."""

    def __init__(self, language_model: nn.Module, image_token_id: int, tokens_per_image: int, features: int = FEATURES):
        super().__init__()
        if tokens_per_image < CELLS:
            raise ValueError(f"the oracle needs at least {CELLS} image tokens (one per cell); the model has {tokens_per_image}.")
        hidden = language_model.config.hidden_size
        self.language_model = language_model
        self.projector = nn.Sequential(nn.Linear(features, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.image_token_id = image_token_id
        self.tokens_per_image = tokens_per_image

    def forward(self, input_ids, attention_mask=None, pixel_values=None, labels=None, logits_to_keep=None) -> CausalLMOutputWithPast:
        embeds = self.language_model.get_input_embeddings()(input_ids)  # (B, T, D)
        mask = input_ids == self.image_token_id
        if pixel_values is not None:
            cells = self.projector(pixel_values.to(embeds.dtype))  # (B, R, D)
            if cells.shape[1] > self.tokens_per_image:
                raise ValueError(f"{cells.shape[1]} oracle rows per image for {self.tokens_per_image} image tokens.")
            padding = cells.new_zeros(cells.shape[0], self.tokens_per_image - cells.shape[1], cells.shape[-1])
            visual = torch.cat([cells, padding], 1).reshape(-1, cells.shape[-1])
            if int(mask.sum()) != visual.shape[0]:
                raise ValueError(f"{int(mask.sum())} image placeholders for {len(cells)} image(s) x {self.tokens_per_image} tokens.")
            embeds = embeds.masked_scatter(mask[..., None], visual.to(embeds.dtype))  # bf16 under autocast
        if logits_to_keep is not None:  # a (B, T) mask, as SparseCut takes it: logits (N, V) at those positions only
            hidden = self.language_model.model(inputs_embeds=embeds, attention_mask=attention_mask).last_hidden_state
            return CausalLMOutputWithPast(logits=self.language_model.lm_head(hidden[logits_to_keep]))
        return self.language_model(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels)
