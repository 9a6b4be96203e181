"""The reader aligned to the LLM (``training.tiny.reader``): reading token k fitted to the LLM's embedding of the
text's k-th character, saved beside its tower and loaded by ``with_reading_tower``."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from conftest import TOKENIZER, make_model, make_processor
from sparsecut.convert import with_reading_tower
from sparsecut.evaluation.synthetic.dataset import image_for, scene_for
from sparsecut.reading import READER_WEIGHTS
from training.tiny.family import LAYOUT, READING_TEXT_PROBABILITY
from training.tiny.reader import (READER_RECORD, align_reader, character_ids, crop_tokens, reader_targets,
                                  save_reader)

K = 3


def _tower_model(seed: int = 0, reading_tokens: int = K):
    """A tiny member whose reading tokens look through a tower of their own (a perturbed copy of its tower)."""
    model = make_model(seed, reading_tokens=reading_tokens)
    tower = copy.deepcopy(model.model.vision_tower)
    with torch.no_grad():
        for param in tower.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=torch.Generator().manual_seed(7)))
    return with_reading_tower(model, tower)


def test_the_targets_are_the_characters_embeddings_then_zero_and_a_split_character_is_refused():
    embeddings = torch.randn(10, 4)
    ids = {"6": 3, "3": 5, "O": 7}
    targets = reader_targets(["63", "", "O"], embeddings, ids, K)
    assert targets.shape == (3, K, 4)
    assert torch.equal(targets[0, 0], embeddings[3]) and torch.equal(targets[0, 1], embeddings[5])
    assert torch.equal(targets[2, 0], embeddings[7])
    assert not targets[0, 2].any() and not targets[1].any() and not targets[2, 1:].any()
    with pytest.raises(ValueError, match="more characters than the model's 3 reading tokens"):
        reader_targets(["OWLS"], embeddings, {c: 1 for c in "OWLS"}, K)
    assert character_ids(TOKENIZER, ["6", "O"]) == {"6": TOKENIZER.convert_tokens_to_ids("6"),
                                                    "O": TOKENIZER.convert_tokens_to_ids("O")}
    with pytest.raises(ValueError, match="writes 'OW' as 2 tokens"):
        character_ids(TOKENIZER, ["OW"])


def test_the_crop_tokens_are_what_the_model_reads(tmp_path):
    model = _tower_model()
    processor = make_processor(model.config)
    tokens, texts = crop_tokens(model, processor, seed=5, scenes=3, batch=2)
    scenes = [scene_for(5, i, layout=LAYOUT, text_probability=READING_TEXT_PROBABILITY)[0] for i in range(3)]
    assert texts == [s.text.text if s.text is not None and s.text.legible else "" for s in scenes]
    batch = processor(images=[image_for(scenes[2], 5, 2)], text=[processor.prompt("What is written?")])
    with torch.no_grad():
        _, read, _ = model.model.get_visual_features(batch["pixel_values"])  # (1, K, Dt): the model's own path
        assert torch.allclose(read[0], model.model.reading_adapter(tokens[2:3])[0], atol=1e-5)


def test_an_aligned_reader_learns_saves_beside_its_tower_and_loads_into_a_fresh_model(tmp_path):
    model = _tower_model()
    processor = make_processor(model.config)
    tower_before = {n: p.clone() for n, p in model.model.reading_adapter.vision_tower.named_parameters()}
    fitted = align_reader(model, processor, seed=5, scenes=24, steps=40, batch=8, lr=3e-3, test_seed=6,
                          test_scenes=8, progress=False)
    losses = fitted["losses"]
    assert len(losses) == 40 and sum(losses[-5:]) < sum(losses[:5])
    assert fitted["after"]["texts_n"] == 8 and 0 <= fitted["after"]["slots"] <= 100
    for name, param in model.model.reading_adapter.vision_tower.named_parameters():
        assert torch.equal(param, tower_before[name])  # the tower is frozen
    tower_dir = tmp_path / "tower"
    model.model.reading_adapter.vision_tower.save_pretrained(tower_dir)
    save_reader(model, str(tower_dir), str(tmp_path / "reader"), {"steps": 40})
    assert json.loads((tmp_path / "reader" / READER_RECORD).read_text()) == {"steps": 40}
    assert (tmp_path / "reader" / READER_WEIGHTS).is_file() and (tmp_path / "reader" / "config.json").is_file()
    fresh = with_reading_tower(make_model(1, reading_tokens=K), str(tmp_path / "reader"))
    trained, loaded = model.model.reading_adapter.state_dict(), fresh.model.reading_adapter.state_dict()
    assert trained.keys() == loaded.keys()
    assert all(torch.equal(trained[n], loaded[n]) for n in trained)
    plain = with_reading_tower(make_model(1, reading_tokens=K), str(tower_dir))  # a bare tower: a fresh adapter
    assert not torch.equal(plain.model.reading_adapter.queries, trained["queries"])
    with pytest.raises(ValueError, match="is a reader for another model: .*queries"):
        with_reading_tower(make_model(1, reading_tokens=2), str(tmp_path / "reader"))


def test_a_reader_needs_a_reading_tower():
    model = make_model(0, reading_tokens=K)
    with pytest.raises(ValueError, match="aligned on a reading tower"):
        align_reader(model, make_processor(model.config), seed=5, scenes=2, steps=1)


def test_a_reading_stage_on_a_reader_records_it_and_the_card_names_its_command(tmp_path):
    from training.tiny.dense import main as train_tower
    from training.tiny.family import reading_tower_record
    from training.tiny.ship import _reading_stage

    tower = tmp_path / "tower"
    assert train_tower(["--output", str(tower), "--layout", "cells-96", "--scenes", "8", "--steps", "2", "--seed", "5",
                        "--spell"]) == 0
    assert "reader" not in reading_tower_record(str(tower))  # a bare tower
    made = {"member": "sparsecut-tiny", "scenes": 24, "steps": 40, "seed": 5, "seconds": 90.0, "final_loss": 0.0173,
            "after": {"texts": 99.4, "numbers": 98.2, "words": 100.0}}
    save_reader(_tower_model(), str(tower), str(tmp_path / "reader"), made)
    record = reading_tower_record(str(tmp_path / "reader"))
    assert record["steps"] == 2 and record["spell"]  # the tower's own record, copied with it
    reader = record["reader"]
    assert (reader["member"], reader["steps"], reader["held_out"]["numbers"]) == ("sparsecut-tiny", 40, 98.2)
    assert len(reader["sha256"]) == 64
    budget = {"reading_steps": 300, "reading_images": 3000, "reading_look_ups": 2, "adapter_lr": 1e-3, "reading_lr": 1.5e-3}
    words = _reading_stage({"reading_tower": record, "budget": budget})
    assert words.startswith("a reading stage of 300 steps (3000 scenes, each reading question followed by 2 look-up "
                            "turns; the reading adapter aligned to the LLM's character embeddings first at lr 0.001")
    assert ("the adapter by `python -m training.tiny.reader --member sparsecut-tiny --scenes 24 --steps 40 --seed 5` "
            "(1.5 min, final loss 0.0173, held-out texts 99.4% (numbers 98.2, words 100.0)") in words
    assert "--scenes 8 --steps 2 --seed 5 --spell`" in words
