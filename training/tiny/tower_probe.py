"""python -m training.tiny.tower_probe: does the tower see what the questions ask? Linear probes on its tapped layers.

Before any VLM run, each tapped ViT layer's tokens are read out by a linear classifier (logistic regression,
trained on 80% of the scenes, scored on the other 20%):

- low-res view (half the image, 16-px patches): for every object, the token of the patch holding its centre -> its colour,
  shape and size, and the row and the column of its grid cell (what "where is ...?" asks); for every grid cell, the token of the patch holding the cell's centre -> empty or not (presence);
- high-res crops (full resolution, 16-px patches): for every legible glyph, the token of the patch holding it ->
  which character (one head per 8-px slot of the patch, since a patch holds 2 x 2 glyph slots);
- the same glyphs read from the low-res view, where by design they are a blur (chance: 1 / characters seen);
- the text spelled: for every token of a crop holding a legible glyph, the text's k-th character, for each k whose
  glyph lies in that crop (one head per text position): what a fused token must carry for the LLM to read the text
  in order, wherever it starts (``dense.py --spell`` trains a tower for it).

The two character tasks are also scored over the digits and over the letters on their own (``glyph_high_res,
digits``, ...): a number is read only if each of its digits is.

    python -m training.tiny.tower_probe --tower runs/tiny/backbones/vision --scenes 2000 --json tower.json
    python -m training.tiny.tower_probe --tower runs/tower-cells --layout cells-96   # a tower of 48-px views
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch
import torch.nn.functional as F
from transformers import CLIPVisionModel

from sparsecut.benchmarking import write_json
from sparsecut.vision import vision_hidden_states

from sparsecut.evaluation.synthetic.dataset import scene_for
from .dense import glyph_places, object_places, scene_views, token_at
from sparsecut.evaluation.synthetic.scenes import COLOURS, DEFAULT_LAYOUT, GRID, LAYOUTS, SHAPES, SIZES, Layout, layout_named

TASKS = ("colour", "shape", "size", "row", "column", "presence", "glyph_high_res", "glyph_low_res", "spelled")
PER_PLACE = ("glyph_high_res", "spelled")  # labels place * 256 + char code: one read-out per glyph slot / text position
KINDS = ("digits", "letters")  # PER_PLACE tasks are also scored over the digits and over the letters on their own


def scene_tokens(tower: CLIPVisionModel, seed: int, scenes: int, layers: list[int], batch: int = 64,
                 layout: Layout = DEFAULT_LAYOUT):
    """For ``scenes`` scenes of split ``seed`` in ``layout``: {layer: low-res tokens (S, P, D)}, {layer: crop tokens
    (S, 4, P, D)}, and the scenes themselves."""
    low, crops, drawn = {k: [] for k in layers}, {k: [] for k in layers}, []
    for start in range(0, scenes, batch):
        views = []
        for index in range(start, min(scenes, start + batch)):
            drawn.append(scene_for(seed, index, layout=layout)[0])
            views.append(scene_views(seed, index, layout))  # (5, 3, V, V): low-res view, then the crops
        with torch.no_grad():
            hidden = vision_hidden_states(tower, torch.tensor(np.concatenate(views)), layers, drop_cls=True)
        for layer, tokens in hidden.items():
            tokens = tokens.reshape(-1, 5, *tokens.shape[1:])  # (scenes, 1 + 4 crops, P, D)
            low[layer].append(tokens[:, 0])
            crops[layer].append(tokens[:, 1:])
    return {k: torch.cat(v) for k, v in low.items()}, {k: torch.cat(v) for k, v in crops.items()}, drawn


def probe_examples(scenes, patch: int) -> dict[str, list[tuple[int, int, int, int]]]:
    """task -> (scene, view (0 low-res, 1..4 crop), token, label) examples; glyph labels are slot * 256 + char code
    (low-res: the char code alone), spelled labels text position * 256 + char code. The places are those the dense
    objective (``dense.py``) labels."""
    examples = {task: [] for task in TASKS}
    for s, scene in enumerate(scenes):
        for shape, view, token in object_places(scene, patch):
            if view == 0:
                examples["colour"].append((s, 0, token, list(COLOURS).index(shape.colour)))
                examples["shape"].append((s, 0, token, SHAPES.index(shape.shape)))
                examples["size"].append((s, 0, token, list(SIZES).index(shape.size)))
                examples["row"].append((s, 0, token, shape.cell[0]))
                examples["column"].append((s, 0, token, shape.cell[1]))
        taken, cell, view = {shape.cell for shape in scene.shapes}, scene.layout.cell, scene.layout.view
        for row in range(GRID):
            for column in range(GRID):
                centre = ((column + 0.5) * cell / 2, (row + 0.5) * cell / 2)
                examples["presence"].append((s, 0, token_at(*centre, patch, view), int((row, column) in taken)))
        glyphs = glyph_places(scene, patch)
        for char, crop, token, slot, low_token in glyphs:
            if char:
                examples["glyph_high_res"].append((s, crop, token, slot * 256 + ord(char)))
                examples["glyph_low_res"].append((s, 0, low_token, ord(char)))
        for crop, token in dict.fromkeys((crop, token) for char, crop, token, *_ in glyphs if char):
            examples["spelled"] += [(s, crop, token, k * 256 + ord(char))
                                    for k, (char, in_crop, *_) in enumerate(glyphs) if in_crop == crop]
    return examples


def linear_probe(train_x, train_y, test_x, test_y, steps: int = 100, seed: int = 0, l2: float = 1e-3,
                 per_example: bool = False):
    """Held-out accuracy of a logistic-regression read-out (standardised features, L2, full-batch L-BFGS); with
    ``per_example`` the (N_test,) bool tensor of which test examples it gets right instead."""
    classes = torch.unique(torch.cat([train_y, test_y]))
    index = {int(c): k for k, c in enumerate(classes)}
    ty = torch.tensor([index[int(y)] for y in train_y])
    vy = torch.tensor([index[int(y)] for y in test_y])
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    tx, vx = (train_x - mean) / std, (test_x - mean) / std
    torch.manual_seed(seed)
    head = torch.nn.Linear(tx.shape[1], len(classes))
    optimizer = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(head(tx), ty) + l2 * head.weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        right = head(vx).argmax(1) == vy
    return right if per_example else float(right.float().mean())


def _slot_hits(train_x, train_y, test_x, test_y) -> tuple[torch.Tensor, torch.Tensor]:
    """Character identity with one read-out per place (a patch's glyph slot, or a text position; label place * 256 +
    char code): (N_test,) bool right, and (N_test,) bool scored (False where no training example shares the place)."""
    right, scored = torch.zeros(len(test_y), dtype=torch.bool), torch.zeros(len(test_y), dtype=torch.bool)
    for slot in torch.unique(torch.cat([train_y, test_y]) // 256).tolist():
        tr, te = train_y // 256 == slot, test_y // 256 == slot
        if te.sum() == 0 or tr.sum() == 0:
            continue
        right[te] = linear_probe(train_x[tr], train_y[tr] % 256, test_x[te], test_y[te] % 256, per_example=True)
        scored |= te
    return right, scored


def tower_probe(tower: CLIPVisionModel, layers: list[int], seed: int = 7_000, scenes: int = 2000,
                layout: Layout = DEFAULT_LAYOUT) -> dict:
    """{layer: {task: held-out accuracy}}, with the example counts and each task's chance level, on scenes drawn in
    ``layout`` (whose low-res view must be the tower's input size)."""
    if tower.config.image_size != layout.view:
        raise ValueError(f"the tower takes {tower.config.image_size}-px views but layout {layout.name} cuts "
                         f"{layout.view}-px ones; pass the layout the tower was trained on.")
    patch = tower.config.patch_size
    low, crops, drawn = scene_tokens(tower, seed, scenes, layers, layout=layout)
    examples = probe_examples(drawn, patch)
    split = int(0.8 * scenes)
    results, counts, chance = {}, {}, {}
    for layer in layers:
        results[layer] = {}
        for task, rows in examples.items():
            s, view, where, label = (torch.tensor(column) for column in zip(*rows))
            features = torch.where((view == 0)[:, None], low[layer][s, where],
                                   crops[layer][s, (view - 1).clamp(min=0), where])
            train, test = s < split, s >= split
            counts[task] = len(rows)
            chance[task] = float(torch.bincount(label[test] % 256).max()) / int(test.sum())  # the majority class
            if task not in PER_PLACE:
                results[layer][task] = linear_probe(features[train], label[train], features[test], label[test])
                continue
            right, scored = _slot_hits(features[train], label[train], features[test], label[test])
            results[layer][task] = float(right[scored].float().mean())
            digit = torch.tensor([chr(code).isdigit() for code in (label[test] % 256).tolist()], dtype=torch.bool)
            for kind, of_kind in zip(KINDS, (digit, ~digit)):
                if (scored & of_kind).any():
                    results[layer][f"{task}, {kind}"] = float(right[scored & of_kind].float().mean())
    return {"accuracy": results, "examples": counts, "majority_baseline": chance, "scenes": scenes, "seed": seed,
            "layout": layout.name}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.tiny.tower_probe", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tower", required=True, help="a CLIPVisionModel folder (e.g. runs/tiny/backbones/vision)")
    parser.add_argument("--layers", default=None, help="comma-separated ViT layers (default: every layer)")
    parser.add_argument("--scenes", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=7_000, help="scene split (not one the tower was trained on)")
    parser.add_argument("--layout", default=DEFAULT_LAYOUT.name, choices=list(LAYOUTS), help="the scenes' geometry: the "
                        "one the tower was trained on")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    tower = CLIPVisionModel.from_pretrained(args.tower).eval()
    layers = ([int(x) for x in args.layers.split(",")] if args.layers
              else list(range(1, tower.config.num_hidden_layers + 1)))
    try:
        result = tower_probe(tower, layers, args.seed, args.scenes, layout_named(args.layout))
    except ValueError as err:
        parser.error(str(err))
    print(f"{'layer':>5} " + " ".join(f"{t:>14}" for t in TASKS))
    for layer, scores in result["accuracy"].items():
        print(f"{layer:>5} " + " ".join(f"{100 * scores[t]:>13.1f}%" for t in TASKS))
    print(f"{'base':>5} " + " ".join(f"{100 * result['majority_baseline'][t]:>13.1f}%" for t in TASKS) + "  (majority class)")
    split = [f"{t}, {kind}" for t in PER_PLACE for kind in KINDS]
    print(f"{'layer':>5} " + " ".join(f"{t:>24}" for t in split))
    for layer, scores in result["accuracy"].items():
        print(f"{layer:>5} " + " ".join(f"{100 * scores[t]:>23.1f}%" if t in scores else f"{'-':>24}" for t in split))
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
