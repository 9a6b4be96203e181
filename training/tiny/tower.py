"""The tiny family's vision tower: a CLIP-style ViT on the layout's low-res view, and its preprocessing.

It is pretrained from scratch on the synthetic scenes with dense per-patch labels (``dense.py``), as the paper starts
from a pretrained CLIP ViT.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from transformers import CLIPImageProcessor, CLIPVisionConfig

from sparsecut.evaluation.synthetic.scenes import DEFAULT_LAYOUT

VIEW = DEFAULT_LAYOUT.view  # the tower's input size: the default layout's low-res view
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def tower_config(hidden: int = 128, layers: int = 8, heads: int = 4, patch: int = 16, view: int = VIEW) -> CLIPVisionConfig:
    """The family's vision tower: a CLIP ViT on ``view``-px views (the layout's low-res view)."""
    return CLIPVisionConfig(hidden_size=hidden, intermediate_size=hidden * 4, num_hidden_layers=layers,
                            num_attention_heads=heads, image_size=view, patch_size=patch)


def tower_image_processor(view: int = VIEW) -> CLIPImageProcessor:
    """The tower's preprocessing (``view``-px views, the family's normalisation), saved beside it."""
    return CLIPImageProcessor(size={"shortest_edge": view}, crop_size={"height": view, "width": view},
                              image_mean=list(MEAN), image_std=list(STD))


def normalised_pixels(image: Image.Image) -> np.ndarray:
    """(3, H, W) float32: ``image`` normalised as the tower's image processor does (no resizing)."""
    array = np.asarray(image, dtype=np.float32) / 255.0
    return ((array - MEAN) / STD).transpose(2, 0, 1)
