"""python -m training.tiny.tower_probe: the read-out positions hold what their labels say, and the probe separates
a tower that sees from one that does not."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPVisionConfig, CLIPVisionModel

from training.tiny.tower import VIEW
from sparsecut.evaluation.synthetic.dataset import image_for, scene_for
from sparsecut.evaluation.synthetic.scenes import COLOURS, TEXT_ADVANCE, TEXT_COLOUR, layout_named
from training.tiny.tower_probe import KINDS, PER_PLACE, TASKS, _slot_hits, linear_probe, probe_examples, tower_probe

PATCH = 16


def test_each_example_points_at_the_pixels_it_labels():
    seed, scenes = 3, [scene_for(3, i)[0] for i in range(30)]
    examples = probe_examples(scenes, PATCH)
    assert examples["glyph_high_res"] and len(examples["presence"]) == 9 * 30
    per_row = VIEW // PATCH
    for s, view, where, label in examples["colour"]:
        low = np.asarray(image_for(scenes[s], seed, s).resize((VIEW, VIEW), Image.NEAREST))
        shape = next(x for x in scenes[s].shapes if list(COLOURS).index(x.colour) == label
                     and (int(x.center[1] / 2 // PATCH) * per_row + int(x.center[0] / 2 // PATCH)) == where)
        assert tuple(low[shape.center[1] // 2, shape.center[0] // 2]) == COLOURS[shape.colour]
    for task, axis in (("row", 0), ("column", 1)):  # each object's cell, read at the same token as its colour
        assert [(s, w) for s, _, w, _ in examples[task]] == [(s, w) for s, _, w, _ in examples["colour"]]
        for (s, _, where, label), shape in zip(examples[task], (x for scene in scenes for x in scene.shapes)):
            assert label == shape.cell[axis] and label == int(shape.center[1 - axis] // scenes[s].layout.cell)
    for s, view, where, label in examples["glyph_high_res"]:
        image = np.asarray(image_for(scenes[s], seed, s))
        r, c = divmod(view - 1, 2)
        crop = image[r * VIEW : (r + 1) * VIEW, c * VIEW : (c + 1) * VIEW]
        slot = label // 256
        y = (where // per_row) * PATCH + (slot // 2) * TEXT_ADVANCE
        x = (where % per_row) * PATCH + (slot % 2) * TEXT_ADVANCE
        ink = (crop[y : y + TEXT_ADVANCE, x : x + TEXT_ADVANCE] == TEXT_COLOUR).all(-1)
        assert ink.any() and chr(label % 256) in scenes[s].text.text


def test_linear_probe_reads_a_planted_feature_and_not_noise():
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (400,), generator=gen)
    noise = torch.randn(400, 16, generator=gen)
    planted = noise.clone()
    planted[:, 3] += 6.0 * labels  # one direction carries the label (classes 6 sd apart)
    assert linear_probe(planted[:300], labels[:300], planted[300:], labels[300:]) > 0.95
    assert linear_probe(noise[:300], labels[:300], noise[300:], labels[300:]) < 0.45


def test_tower_probe_reports_every_task_per_layer():
    torch.manual_seed(0)
    tower = CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=4, image_size=VIEW, patch_size=PATCH)).eval()
    result = tower_probe(tower, [1, 2], seed=5, scenes=40)
    assert set(result["accuracy"]) == {1, 2}
    split = {f"{task}, {kind}" for task in PER_PLACE for kind in KINDS}
    assert all(set(TASKS) <= set(scores) <= set(TASKS) | split for scores in result["accuracy"].values())
    assert all(0.0 <= v <= 1.0 for scores in result["accuracy"].values() for v in scores.values())
    assert result["examples"]["presence"] == 9 * 40 and set(result["majority_baseline"]) == set(TASKS)


def test_character_scores_split_into_digits_and_letters():
    """A read-out that knows the letters and not the digits: letters 100%, digits at chance, the whole in between."""
    gen = torch.Generator().manual_seed(0)
    codes = torch.tensor([ord(c) for c in "0123456789ABCD"])
    labels = codes[torch.randint(0, len(codes), (1200,), generator=gen)]  # place 0, char code
    features = torch.randn(1200, 16, generator=gen)
    letter = labels >= ord("A")
    features[letter, labels[letter] - ord("A")] += 6.0  # only the letters are planted, each in a direction of its own
    right, scored = _slot_hits(features[:900], labels[:900], features[900:], labels[900:])
    digit = labels[900:] < ord("A")
    assert scored.all() and right[~digit].float().mean() > 0.95 and right[digit].float().mean() < 0.45


def test_dense_labels_mark_objects_and_glyphs_where_the_probe_reads_them():
    from training.tiny.dense import CHARS, IGNORE, view_labels

    for index in range(30):
        scene = scene_for(3, index, layout=layout_named("thirds-128"))[0]  # 4 x 4 patches of its 64-px view
        labels = view_labels(scene, PATCH)
        assert labels["colour"].shape == (5, 16) and labels["glyph"].shape == (5, 16, 4)
        assert labels["row"][3, 6] == 1 and labels["column"][3, 6] == 2 and labels["row"][0, 15] == 3  # 4 x 4 patches
        assert (labels["colour"][0] > 0).sum() <= len(scene.shapes)  # objects sharing a centre patch: the last wins
        assert (labels["glyph"][0] == IGNORE).all() and (labels["text"][1:] == IGNORE).all()
        examples = probe_examples([scene], PATCH)
        for _, view, token, label in examples["glyph_high_res"]:
            assert CHARS[labels["glyph"][view, token, label // 256] - 1] == chr(label % 256)
        legible = scene.text is not None and scene.text.legible
        assert (labels["glyph"][1:] > 0).sum() == (len(scene.text.text) if legible else 0)


def test_spelled_labels_give_every_glyph_token_its_whole_text_as_far_as_its_crop_shows_it():
    from training.tiny.dense import CHARS, IGNORE, SPELLED, view_labels

    cells, straddling = layout_named("cells-96"), 0
    for index in range(80):
        scene = scene_for(3, index, layout=cells)[0]
        labels = view_labels(scene, PATCH)
        spelled, glyph = labels["spelled"], labels["glyph"]
        assert spelled.shape == (5, 9, SPELLED) and (spelled[0] == IGNORE).all()  # the low-res view never reads
        holds = (glyph[1:] > 0).any(-1)  # crop tokens holding a legible glyph
        assert ((spelled[1:] != 0).any(-1) == holds).all()  # only those are labelled; the rest say "none"
        for crop, token in zip(*holds.nonzero()):
            row = spelled[1 + crop, token]
            text = scene.text.text
            assert (row[len(text):] == 0).all()  # "ended" past the text
            known = [k for k in range(len(text)) if row[k] != IGNORE]
            assert all(CHARS[row[k] - 1] == text[k] for k in known)  # the k-th character, wherever the token is
            (x, y), view = scene.text.origin, cells.view  # glyph k is 8 px right of glyph k - 1; crops row-major
            assert known == [k for k in range(len(text)) if (y // view) * 2 + (x + 8 * k) // view == crop]
            straddling += len(known) < len(text)
        for _, view, token, label in probe_examples([scene], PATCH)["spelled"]:  # the probe reads what was labelled
            assert spelled[view, token, label // 256] == 1 + CHARS.index(chr(label % 256))
    assert straddling > 0  # some texts cross a crop's edge (the middle column's cells do)


def test_dense_pretraining_fits_its_labels():
    from transformers import CLIPVisionConfig

    from training.tiny.dense import pretrain_dense

    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              image_size=VIEW, patch_size=PATCH)
    tower, losses = pretrain_dense(5, 4, 40, config, batch_size=4, lr=3e-3, progress=False)
    assert isinstance(tower, CLIPVisionModel) and len(losses) == 40
    assert losses[-1] < 0.5 * losses[0]


def test_the_cells_layout_puts_each_object_inside_its_cells_patch_of_the_low_res_view():
    from training.tiny.dense import object_places
    from sparsecut.evaluation.synthetic.scenes import LAYOUTS

    cells = LAYOUTS["cells-96"]
    assert (cells.image_size, cells.view, cells.cell) == (96, 48, 32.0)
    for index in range(60):
        scene = scene_for(3, index, layout=cells)[0]
        assert image_for(scene, 3, index).size == (96, 96)
        for shape, view, token in object_places(scene, PATCH):
            if view == 0:  # the low-res patch holding the centre is the object's cell, and holds all of the object
                assert token == shape.cell[0] * 3 + shape.cell[1]
                half = cells.half_width(shape.size)
                x0, y0 = shape.cell[1] * 32, shape.cell[0] * 32
                assert x0 <= shape.center[0] - half and shape.center[0] + half < x0 + 32
                assert y0 <= shape.center[1] - half and shape.center[1] + half < y0 + 32
        if scene.text is not None:  # every glyph inside the text's cell, and inside one 48-px crop
            x, y = scene.text.origin
            assert scene.text.cell == (y // 32, x // 32) and (x + 8 * scene.text.length - 1) // 32 == x // 32


def test_a_tower_and_a_layout_that_disagree_on_the_view_size_are_refused():
    from training.tiny.dense import pretrain_dense
    from sparsecut.evaluation.synthetic.scenes import LAYOUTS

    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                              image_size=VIEW, patch_size=PATCH)
    tower = CLIPVisionModel(config).eval()
    with pytest.raises(ValueError, match="48-px views but layout thirds-128 cuts 64-px"):
        tower_probe(tower, [1], seed=5, scenes=4, layout=LAYOUTS["thirds-128"])
    with pytest.raises(ValueError, match="48-px views but layout thirds-128"):
        pretrain_dense(5, 2, 1, config, layout=LAYOUTS["thirds-128"], progress=False)


def test_dense_pretraining_and_the_tower_probe_run_on_the_cells_layout():
    from training.tiny.tower import tower_config
    from training.tiny.dense import pretrain_dense, view_labels
    from sparsecut.evaluation.synthetic.scenes import LAYOUTS

    cells = LAYOUTS["cells-96"]
    labels = view_labels(scene_for(3, 0, layout=cells)[0], PATCH)
    assert labels["colour"].shape == (5, 9) and labels["glyph"].shape == (5, 9, 4)
    assert labels["row"].tolist() == [[0, 0, 0, 1, 1, 1, 2, 2, 2]] * 5 and labels["column"][0].tolist() == [0, 1, 2] * 3
    config = tower_config(hidden=32, layers=2, heads=4, view=cells.view)
    tower, losses = pretrain_dense(5, 4, 30, config, batch_size=4, lr=3e-3, progress=False, layout=cells)
    assert losses[-1] < 0.5 * losses[0]
    spelling, spelling_losses = pretrain_dense(5, 4, 30, config, batch_size=4, lr=3e-3, progress=False, layout=cells,
                                               spell=True)
    assert spelling_losses[0] > losses[0] and spelling_losses[-1] < 0.5 * spelling_losses[0]  # one more head, fitted
    result = tower_probe(tower.eval(), [2], seed=5, scenes=30, layout=cells)
    assert result["layout"] == "cells-96" and result["examples"]["presence"] == 9 * 30
