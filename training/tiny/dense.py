"""Dense pretraining of the tiny tower from the scene specification: every patch token learns what lies under it.

The contrastive objective (``clip.py``) teaches a tower to tell whole captions apart; the questions need more: the
colour, shape and size of the object at a place, whether a place is empty, and which glyph is written where. Here
each token of each view gets those as labels read from the scene, through linear heads on every layer from
``first_layer`` on (deep supervision, so the shallow taps of a shortcut pattern see too):

- low-res view (half the image: 64 px in the ``thirds-128`` layout, 48 in ``cells-96``): per 16-px patch, the object whose centre lies in it (colour, shape, size; "none" if none)
  and whether the patch holds text (none / legible / scribble);
- each full-resolution crop (a half-image tile): the same object labels, and per 8-px glyph slot of the
  patch (2 x 2 slots) which character is written there ("none" if no glyph);
- optionally (``spell``), each crop token holding a glyph of a legible text: the whole text, one character per text
  position (and "ended" past its end), as far as that crop shows it. Glyph slots say *where* a character is; which
  slot holds the first one depends on where the text starts, and a query that mixes two tokens superposes their
  slots. Spelled labels say *which* character comes k-th, the same in every token of the text, so a mix of them still
  spells it: the form the oracle probe's text cell has (``--oracle-text``), which SmolLM2 learns to read;
- every token of every view: the row and the column of its patch in that view. A real CLIP token carries its
  place (its position embedding survives to the last layer); the labels above never ask for it, and a tower trained
  on them alone forgets it (row / column read out at 33-48% from its layers, chance 34%), which leaves "where is
  ...?" and the order of a word's letters across patches to the LLM's token index alone.
Glyph labels exist only for the crops: at half resolution a 5 x 7 glyph is a 3 x 4 blur, which is the point of the
high-res views.

    python -m training.tiny.dense --output runs/tower-dense --scenes 2000 --steps 400   # then: tower_probe, probe --vision
    python -m training.tiny.dense --output runs/tower-cells --layout cells-96 --scenes 3000 --steps 1600
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel

from .tower import normalised_pixels, tower_config, tower_image_processor
from sparsecut.evaluation.synthetic.dataset import image_for, scene_for
from sparsecut.evaluation.synthetic.font import _GLYPHS
from .loop import fit
from sparsecut.evaluation.synthetic.scenes import (COLOURS, DEFAULT_LAYOUT, LAYOUTS, SHAPES, SIZES, TEXT_ADVANCE, WORDS,
                                                   Layout, Scene, Shape, layout_named)

CHARS = sorted(_GLYPHS)  # every character the font draws
IGNORE = -100
SLOTS = 4  # 8-px glyph slots per 16-px patch
DENSE_BATCH, DENSE_LR = 32, 1e-3  # scenes per step, learning rate
DENSE_RECORD = "pretraining.json"  # written beside the tower by ``main``: its arguments, losses and seconds
SPELLED = max(map(len, WORDS))  # text positions a spelled label covers: the longest text (words; numbers have 2 digits)


def token_at(x: float, y: float, patch: int, view: int) -> int:
    """Index of the patch holding pixel (x, y) of a ``view``-px view, row-major."""
    return int(y // patch) * (view // patch) + int(x // patch)


def object_places(scene: Scene, patch: int) -> list[tuple[Shape, int, int]]:
    """(object, view, token) for every object, twice: the low-res view (view 0) and the crop (1..4, row-major) holding
    its centre, each at the patch holding its centre."""
    places, view = [], scene.layout.view
    for shape in scene.shapes:
        x, y = shape.center
        places.append((shape, 0, token_at(x / 2, y / 2, patch, view)))
        places.append((shape, 1 + int(y // view) * 2 + int(x // view), token_at(x % view, y % view, patch, view)))
    return places


def glyph_places(scene: Scene, patch: int) -> list[tuple[str, int, int, int, int]]:
    """(character, crop, token, slot, low-res token) for every glyph of the scene's text ("" for a scribble's): the
    crop and patch holding it at full resolution, its 8-px slot in that patch (row-major of 2 x 2), and the low-res
    view's patch holding it."""
    if scene.text is None:
        return []
    x0, y0 = scene.text.origin
    places, view = [], scene.layout.view
    for k in range(scene.text.length):
        x, y = x0 + k * TEXT_ADVANCE, y0
        cx, cy = x % view, y % view
        slot = int(cy % patch // TEXT_ADVANCE) * 2 + int(cx % patch // TEXT_ADVANCE)
        char = scene.text.text[k] if scene.text.legible else ""
        places.append((char, 1 + int(y // view) * 2 + int(x // view), token_at(cx, cy, patch, view), slot,
                       token_at(x / 2, y / 2, patch, view)))
    return places


def view_labels(scene: Scene, patch: int) -> dict[str, np.ndarray]:
    """Per-token labels of the scene's 5 views (low-res, then the crops row by row), each (5, P) or (5, P, SLOTS):
    ``colour``/``shape``/``size`` (class + 1, 0 = no object centred in the patch), ``text`` (low-res only: 0 none,
    1 legible, 2 scribble; IGNORE in crops), ``glyph`` (crops only: 1 + index in ``CHARS``, 0 none; IGNORE low-res),
    ``row``/``column`` (the patch's place in its view, the same for every scene), ``spelled`` (crops only, (5, P,
    SPELLED)): for a token holding a glyph of a legible text, 1 + the index in ``CHARS`` of the text's k-th character
    where that glyph is in the token's crop (IGNORE where it is in another crop: a crop cannot see it), 0 past the
    text's end; 0 for every other token."""
    per_row = scene.layout.view // patch
    tokens = per_row**2
    labels = {name: np.zeros((5, tokens), dtype=np.int64) for name in ("colour", "shape", "size", "text")}
    labels["row"] = np.tile(np.arange(tokens) // per_row, (5, 1))
    labels["column"] = np.tile(np.arange(tokens) % per_row, (5, 1))
    labels["glyph"] = np.zeros((5, tokens, SLOTS), dtype=np.int64)
    labels["text"][1:] = IGNORE
    labels["glyph"][0] = IGNORE
    labels["spelled"] = np.zeros((5, tokens, SPELLED), dtype=np.int64)
    labels["spelled"][0] = IGNORE
    for shape, view, token in object_places(scene, patch):
        labels["colour"][view, token] = 1 + list(COLOURS).index(shape.colour)
        labels["shape"][view, token] = 1 + SHAPES.index(shape.shape)
        labels["size"][view, token] = 1 + list(SIZES).index(shape.size)
    glyphs = glyph_places(scene, patch)
    for char, crop, token, slot, low_token in glyphs:
        labels["text"][0, low_token] = 1 if char else 2
        if char:
            labels["glyph"][crop, token, slot] = 1 + CHARS.index(char)
            labels["spelled"][crop, token, :len(glyphs)] = [1 + CHARS.index(c) if in_crop == crop else IGNORE
                                                            for c, in_crop, *_ in glyphs]
    return labels


def scene_views(seed: int, index: int, layout: Layout = DEFAULT_LAYOUT) -> np.ndarray:
    """(5, 3, V, V) normalised pixels (V the layout's view): the low-res view and the four full-resolution crops, as
    the processor cuts them."""
    image, view = image_for(scene_for(seed, index, layout=layout)[0], seed, index), layout.view
    views = [image.resize((view, view), Image.BICUBIC)]
    views += [image.crop((c * view, r * view, (c + 1) * view, (r + 1) * view)) for r in range(2) for c in range(2)]
    return np.stack([normalised_pixels(v) for v in views])


class DenseHeads(nn.Module):
    """Linear read-outs per supervised layer: object colour/shape/size (+ none), text kind, the patch's row and
    column among ``per_row``, glyph per slot, and with ``spell`` the text's character per text position."""

    TOKEN_LABELS = ("colour", "shape", "size", "text", "row", "column")  # one class per token

    def __init__(self, hidden: int, layers: list[int], per_row: int, spell: bool = False):
        super().__init__()
        sizes = {"colour": len(COLOURS) + 1, "shape": len(SHAPES) + 1, "size": len(SIZES) + 1, "text": 3,
                 "row": per_row, "column": per_row, "glyph": SLOTS * (len(CHARS) + 1)}
        self.multi = {"glyph": SLOTS, **({"spelled": SPELLED} if spell else {})}  # several classes per token
        if spell:
            sizes["spelled"] = SPELLED * (len(CHARS) + 1)
        self.layers = layers
        self.heads = nn.ModuleDict({str(layer): nn.ModuleDict({k: nn.Linear(hidden, n) for k, n in sizes.items()})
                                    for layer in layers})

    def loss(self, hidden: dict[int, torch.Tensor], labels: dict[str, torch.Tensor]) -> torch.Tensor:
        """hidden {layer: (V, P, D)}, labels as ``view_labels`` stacked over scenes and flattened to views."""
        total = 0.0
        for layer in self.layers:
            heads = self.heads[str(layer)]
            tokens = hidden[layer]
            for name in self.TOKEN_LABELS:
                total = total + F.cross_entropy(heads[name](tokens).flatten(0, 1), labels[name].flatten(), ignore_index=IGNORE)
            for name, places in self.multi.items():
                logits = heads[name](tokens).unflatten(-1, (places, len(CHARS) + 1))  # (V, P, places, C)
                total = total + F.cross_entropy(logits.flatten(0, 2), labels[name].flatten(), ignore_index=IGNORE)
        return total / len(self.layers)


def pretrain_dense(seed: int, num_scenes: int, steps: int, config: CLIPVisionConfig, batch_size: int = DENSE_BATCH,
                   lr: float = DENSE_LR, first_layer: int = 1, progress: bool = True,
                   layout: Layout = DEFAULT_LAYOUT, spell: bool = False) -> tuple[CLIPVisionModel, list[float]]:
    """A CLIP-style vision tower trained with the dense labels of ``num_scenes`` scenes of split ``seed`` drawn in
    ``layout`` (whose view must be the tower's input size); ``spell`` adds the spelled-text labels."""
    if config.image_size != layout.view:
        raise ValueError(f"the tower takes {config.image_size}-px views but layout {layout.name} cuts {layout.view}-px ones.")
    from sparsecut.vision import vision_hidden_states

    torch.manual_seed(seed)
    tower = CLIPVisionModel(config)
    layers = list(range(first_layer, config.num_hidden_layers + 1))
    heads = DenseHeads(config.hidden_size, layers, layout.view // config.patch_size, spell)
    pixels = torch.tensor(np.stack([scene_views(seed, i, layout) for i in range(num_scenes)]), dtype=torch.float16)  # (S, 5, 3, V, V)
    per_scene = [view_labels(scene_for(seed, i, layout=layout)[0], config.patch_size) for i in range(num_scenes)]
    labels = {k: torch.tensor(np.stack([p[k] for p in per_scene])) for k in per_scene[0]}
    both = nn.ModuleDict({"tower": tower, "heads": heads})

    def step_loss(generator):
        rows = torch.randperm(num_scenes, generator=generator)[:batch_size]
        hidden = vision_hidden_states(tower, pixels[rows].flatten(0, 1).float(), layers, drop_cls=True)
        return heads.loss(hidden, {k: v[rows].flatten(0, 1) for k, v in labels.items()})

    losses = fit(both, step_loss, steps, lr, seed, weight_decay=0.05, betas=(0.9, 0.98), warmup_ratio=0.05,
                 desc="tiny tower (dense)", progress=progress)
    return tower, losses


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.tiny.dense", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True, help="folder for the tower (CLIPVisionModel + image processor)")
    parser.add_argument("--scenes", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=DENSE_BATCH, help="scenes per step (5 views each)")
    parser.add_argument("--lr", type=float, default=DENSE_LR)
    parser.add_argument("--seed", type=int, default=3003, help="the scene split it trains on")
    parser.add_argument("--spell", action="store_true", help="also label each glyph token with its text spelled by "
                        "position (what a fused token must carry for the LLM to read)")
    parser.add_argument("--layout", default=DEFAULT_LAYOUT.name, choices=list(LAYOUTS), help="the scenes' geometry "
                        "(sparsecut/evaluation/synthetic/scenes.py); the tower's input size is its low-res view")
    args = parser.parse_args(argv)
    started = time.time()
    layout = layout_named(args.layout)
    config = tower_config(view=layout.view)  # the family's tower shape
    tower, losses = pretrain_dense(args.seed, args.scenes, args.steps, config, args.batch, args.lr, layout=layout,
                                   spell=args.spell)
    tower.save_pretrained(args.output)
    tower_image_processor(layout.view).save_pretrained(args.output)
    with open(os.path.join(args.output, DENSE_RECORD), "w", encoding="utf-8") as handle:
        json.dump({"losses": losses, "seconds": time.time() - started, **vars(args)}, handle)
    print(f"Done in {time.time() - started:.0f}s, final loss {losses[-1]:.3f}: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
