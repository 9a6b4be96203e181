"""Where visual tokens sit on the image: per-token values -> maps on the patch grid.

One view (the low-res view or one high-res crop) has ``cls + side * side`` tokens, patches row by row; the
high-res crops tile the image ``g x g``, row by row (``sparsecut.processing``), so their patch maps stitch into one
``(g * side, g * side)`` map of the whole image. In the LLM context an image has the low-res view's tokens, or
every view's tokens in concat mode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

LOW_RES = "low-res"
HIGH_RES = "high-res"


@dataclass(frozen=True)
class TokenGrid:
    side: int  # patches per row (and column) of one view
    cls: int  # leading non-patch tokens per view: 1 for CLIP with vision_feature_select_strategy="full", else 0
    crops: int  # g: the high-res crops tile the image g x g (1 when there are none)
    views: int  # views whose tokens are in the LLM context: 1, or 1 + g*g in concat mode

    @classmethod
    def from_config(cls, config, high_res: bool) -> "TokenGrid":
        """The layout for a ``SparseCutConfig`` with high-res views on or off."""
        vision = config.vision_config
        lead = int(config.vision_feature_select_strategy == "full" and vision.model_type.startswith("clip"))
        side = math.isqrt(config.image_seq_length - lead)
        if side * side + lead != config.image_seq_length:
            raise ValueError(f"{config.image_seq_length} tokens per view do not form a square patch grid.")
        crops = config.high_res_grid if high_res else 1
        concat = high_res and config.high_res_fusion == "concat"  # reading tokens (if any) are not views' tokens
        return cls(side=side, cls=lead, crops=crops, views=config.num_views if concat else 1)

    @property
    def tokens_per_view(self) -> int:
        return self.cls + self.side * self.side

    def view_maps(self, values: torch.Tensor) -> torch.Tensor:
        """(..., V * tokens_per_view) -> (..., V, side, side), the CLS token (if any) dropped."""
        per_view = values.reshape(*values.shape[:-1], -1, self.tokens_per_view)[..., self.cls :]
        return per_view.reshape(*per_view.shape[:-1], self.side, self.side)

    def stitch(self, crops: torch.Tensor) -> torch.Tensor:
        """(..., g*g, h, w) crop maps, row by row -> (..., g*h, g*w) map of the whole image."""
        g, (h, w) = self.crops, crops.shape[-2:]
        tiles = crops.reshape(*crops.shape[:-3], g, g, h, w).transpose(-3, -2)  # (..., g, h, g, w)
        return tiles.reshape(*crops.shape[:-3], g * h, g * w)

    def context_maps(self, values: torch.Tensor) -> dict[str, torch.Tensor]:
        """Values at the image's context tokens (..., views * tokens_per_view) -> {"low-res": (..., side, side)},
        plus {"high-res": (..., g*side, g*side)} when the crops' tokens are in the context (concat mode)."""
        maps = self.view_maps(values)
        out = {LOW_RES: maps[..., 0, :, :]}
        if self.views > 1:
            out[HIGH_RES] = self.stitch(maps[..., 1:, :, :])
        return out

    def patch_index(self, patch) -> int:
        """A low-res patch given as ``(row, col)`` or a flat index -> its flat index ``row * side + col``."""
        if isinstance(patch, int) and not isinstance(patch, bool):
            if not 0 <= patch < self.side**2:
                raise ValueError(
                    f"Patch index {patch} is out of range: the low-res view has {self.side}x{self.side} = {self.side**2} "
                    f"patches, indices 0..{self.side**2 - 1} (or give (row, col))."
                )
            return patch
        try:
            row, col = (int(x) for x in patch)
        except (TypeError, ValueError):
            raise ValueError(f"A patch is (row, col) or a flat index; got {patch!r}.") from None
        if not (0 <= row < self.side and 0 <= col < self.side):
            raise ValueError(
                f"Patch ({row}, {col}) is outside the {self.side}x{self.side} low-res patch grid; rows and columns run "
                f"0..{self.side - 1}."
            )
        return row * self.side + col
