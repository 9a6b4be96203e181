"""python -m training.tiny.fusion_probe: does a member's high-res fusion carry the text into its visual tokens?

``tower_probe`` shows the glyphs are legible in the crops' tokens; a member reads only if its adapters bring them into
the M_v low-res tokens the LLM sees. For every scene with legible text this reads the k-th character of the text
(k = 0, 1, 2) by a linear classifier (``tower_probe.linear_probe``: 80% of the scenes to fit, 20% to score) from the
token of the text's grid cell (each 32-px cell is one 16-px patch of the 48-px low-res view in ``cells-96``):

- ``low``: the tower's low-res token of that layer, before any fusion (what a low-res member starts from);
- ``fused``: the same token after the shortcut's cross-attention over the crops' tokens (eq. 2's Y_i);
- ``injected``: the shortcut's output Z_i there (the MLP and the gate applied): what is added to the LLM's stream;
- ``all tokens``: Z_i of all M_v tokens side by side (whatever cell the text went to).

It also reports where the text cell's query looks: the share of its attention (mean over heads) that lands on the
crops' tokens holding a glyph of the text, against the share those tokens would get from uniform attention, and how
much the attention adds there (``|Y_i - X_low| / |X_low|``: 0 is a fusion that is switched off).

    python -m training.tiny.fusion_probe --member sparsecut-tiny --scenes 3000 --json fusion.json
    python -m training.tiny.fusion_probe --member runs/family/models/sparsecut-tiny    # a trained folder
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from sparsecut.benchmarking import write_json
from sparsecut.evaluation.synthetic.dataset import scene_for
from sparsecut.evaluation.synthetic.scenes import DEFAULT_LAYOUT, GRID, LAYOUTS, TEXT_ADVANCE, layout_named
from sparsecut.model import SparseCutForConditionalGeneration, adapter_key
from sparsecut.vision import vision_hidden_states

from .dense import glyph_places, scene_views
from .tower_probe import linear_probe

FEATURES = ("low", "fused", "injected", "all tokens")
POSITIONS = 3  # characters of the longest text (a 3-letter word; numbers have 2)


def text_cell_token(scene, per_row: int) -> int:
    """The low-res token of the text's grid cell (row-major); requires one cell per low-res patch."""
    if per_row != GRID:
        raise ValueError(f"the low-res view has {per_row} x {per_row} patches, not one per cell of the {GRID} x {GRID} "
                         "grid; the probe needs the cells-96 layout (one 16-px patch per 32-px cell).")
    row, column = scene.text.cell
    return row * GRID + column


@torch.no_grad()
def fused_tokens(model: SparseCutForConditionalGeneration, seed: int, indices: list[int], layout, batch: int = 32):
    """For the scenes ``indices`` of split ``seed``: {adapter: {"low", "fused": (S, M_v, D_v), "injected": (S, M_v,
    D_t), "attention": (S, M_v, K)}} (attention averaged over heads; K = crops x M_v)."""
    inner = model.model
    shortcuts = inner.resolve_shortcuts()
    out = {adapter_key(s): {k: [] for k in ("low", "fused", "injected", "attention")} for s in shortcuts}
    for start in range(0, len(indices), batch):
        views = torch.tensor(np.stack([scene_views(seed, i, layout) for i in indices[start:start + batch]]))
        images, n = views.shape[:2]
        hidden = vision_hidden_states(inner.vision_tower, views.flatten(0, 1), {i for i, _ in shortcuts}, drop_cls=True)
        for shortcut in shortcuts:
            key, adapter = adapter_key(shortcut), inner.adapters[adapter_key(shortcut)]
            tokens = hidden[shortcut[0]].reshape(images, n, *hidden[shortcut[0]].shape[1:])
            low, high = tokens[:, 0], tokens[:, 1:].flatten(1, 2)
            fused, weights = adapter.fuse(low, high, output_attentions=True)
            z = adapter.project(fused)
            for name, value in (("low", low), ("fused", fused), ("injected", z), ("attention", weights.mean(1))):
                out[key][name].append(value.float())
    return {key: {name: torch.cat(parts) for name, parts in values.items()} for key, values in out.items()}


def glyph_token_mask(scene, per_row: int) -> torch.Tensor:
    """(crops x P,) bool: the crops' tokens holding a glyph of the scene's text."""
    mask = torch.zeros(4 * per_row * per_row, dtype=torch.bool)
    for _, crop, token, _, _ in glyph_places(scene, scene.layout.view // per_row):
        mask[(crop - 1) * per_row * per_row + token] = True
    return mask


def fusion_probe(model: SparseCutForConditionalGeneration, layout, seed: int = 7_000, scenes: int = 3000) -> dict:
    """{adapter: {"accuracy": {feature: [acc of char 0, 1, 2]}, "attention_on_glyphs", "uniform_share"}} plus counts."""
    if not model.config.high_res or model.config.high_res_fusion != "cross-attention":
        raise ValueError("the member has no cross-attention fusion of high-res views (config.high_res / "
                         "high_res_fusion); probe a high-res member such as sparsecut-tiny.")
    vision = model.config.vision_config
    per_row = vision.image_size // vision.patch_size
    drawn = [(i, scene_for(seed, i, layout=layout)[0]) for i in range(scenes)]
    legible = [(i, s) for i, s in drawn if s.text is not None and s.text.legible]
    if len(legible) < 50:
        raise ValueError(f"only {len(legible)} of {scenes} scenes hold legible text; pass more --scenes.")
    cells = torch.tensor([text_cell_token(s, per_row) for _, s in legible])
    tokens = fused_tokens(model, seed, [i for i, _ in legible], layout)
    split = int(0.8 * len(legible))
    rows = torch.arange(len(legible))
    glyphs = torch.stack([glyph_token_mask(s, per_row) for _, s in legible])  # (S, K)
    results = {}
    for key, values in tokens.items():
        features = {"low": values["low"][rows, cells], "fused": values["fused"][rows, cells],
                    "injected": values["injected"][rows, cells], "all tokens": values["injected"].flatten(1)}
        accuracy = {}
        for name, x in features.items():
            accuracy[name] = []
            for k in range(POSITIONS):
                has = torch.tensor([len(s.text.text) > k for _, s in legible])
                label = torch.tensor([ord(s.text.text[k]) if len(s.text.text) > k else 0 for _, s in legible])
                train, test = has & (rows < split), has & (rows >= split)
                accuracy[name].append(linear_probe(x[train], label[train], x[test], label[test]))
        attention = values["attention"][rows, cells]  # (S, K): the text cell's query over the crops' tokens
        results[key] = {"accuracy": accuracy,
                        "attention_on_glyphs": float((attention * glyphs).sum(1).mean()),
                        "uniform_share": float(glyphs.float().mean(1).mean()),
                        "fusion_ratio": float(((features["fused"] - features["low"]).norm(dim=-1)
                                               / features["low"].norm(dim=-1)).mean()),
                        "injected_norm": float(values["injected"][rows, cells].norm(dim=-1).mean())}
    return {"adapters": results, "texts": len(legible), "scenes": scenes, "seed": seed, "layout": layout.name,
            "glyph_advance": TEXT_ADVANCE}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.tiny.fusion_probe", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--member", default="sparsecut-tiny", help="a shipped member's name or a trained model folder")
    parser.add_argument("--scenes", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=7_000, help="scene split (not one the member was trained on)")
    parser.add_argument("--layout", default=DEFAULT_LAYOUT.name, choices=list(LAYOUTS),
                        help="the scenes' geometry: the one the member was trained on")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    model = SparseCutForConditionalGeneration.from_pretrained(args.member).eval()
    layout = layout_named(args.layout)
    try:
        result = fusion_probe(model, layout, args.seed, args.scenes)
    except ValueError as err:
        parser.error(str(err))
    print(f"{result['texts']} legible texts; character k of the text read from each shortcut's tokens (held-out accuracy)")
    print(f"{'adapter':>8} " + " ".join(f"{f + ' k=' + str(k):>16}" for f in FEATURES for k in range(POSITIONS))
          + f" {'attn on glyphs':>15} {'uniform':>8} {'|Y-X|/|X|':>10}")
    for key, r in result["adapters"].items():
        print(f"{key:>8} " + " ".join(f"{100 * r['accuracy'][f][k]:>15.1f}%" for f in FEATURES for k in range(POSITIONS))
              + f" {r['attention_on_glyphs']:>15.3f} {r['uniform_share']:>8.3f} {r['fusion_ratio']:>10.3f}")
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
