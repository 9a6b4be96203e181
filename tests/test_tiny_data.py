"""The synthetic benchmark: deterministic, and every answer follows from the scene's specification."""

import hashlib
import json
import re

import numpy as np
import pytest

from conftest import make_processor, sparsecut_config
from training.data import LlavaDataset, read_records
from training.tiny.dataset import scene_for, write_split
from training.tiny.family import corpus
from training.tiny.font import CHARACTERS, draw_text, text_size
from training.tiny.questions import FAMILIES, LETTERS, ask, caption, existence
from training.tiny.scenes import COLOURS, SHAPES, WORDS, position_name, render, sample_scene


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_seed_same_bytes_and_questions(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b):
        write_split(str(root), "train", seed=5, num_images=6, kind="instruct")
        write_split(str(root), "test", seed=6, num_images=6, kind="eval")
    for name in ("train.json", "test.jsonl"):
        assert (a / name).read_text() == (b / name).read_text()
    for image in sorted((a / "images" / "train").iterdir()):
        assert _digest(image) == _digest(b / "images" / "train" / image.name)
    write_split(str(tmp_path / "c"), "train", seed=7, num_images=6, kind="instruct")
    assert (tmp_path / "c" / "train.json").read_text() != (a / "train.json").read_text()


def _expected(scene, question: str) -> str:
    """An independent reading of each question template against the scene."""
    q = question.split("\n")[0]
    names = {f"{s.colour} {s.shape}": s for s in scene.shapes}
    if m := re.fullmatch(r"What color is the (\w+)\?", q):
        found = [s for s in scene.shapes if s.shape == m[1]]
        return found[0].colour if len(found) == 1 else "unanswerable"
    if m := re.fullmatch(r"What shape is the (\w+) object\?", q):
        return [s.shape for s in scene.shapes if s.colour == m[1]][0]
    if m := re.fullmatch(r"Is the (\w+ \w+) small or large\?", q):
        return names[m[1]].size
    singular = {"circles": "circle", "squares": "square", "triangles": "triangle", "crosses": "cross"}
    if q == "How many shapes are there?":
        return str(len(scene.shapes))
    if m := re.fullmatch(r"How many (circles|squares|triangles|crosses) are there\?", q):
        return str(sum(s.shape == singular[m[1]] for s in scene.shapes))
    if m := re.fullmatch(r"How many (\w+) objects are there\?", q):
        return str(sum(s.colour == m[1] for s in scene.shapes))
    if m := re.fullmatch(r"Where is the (\w+ \w+)\?", q):
        return position_name(names[m[1]].cell)
    if m := re.fullmatch(r"Is the (\w+ \w+) to the left of the (\w+ \w+)\?", q):
        return "yes" if names[m[1]].center[0] < names[m[2]].center[0] else "no"
    if m := re.fullmatch(r"Is the (\w+ \w+) above the (\w+ \w+)\?", q):
        return "yes" if names[m[1]].center[1] < names[m[2]].center[1] else "no"
    if m := re.fullmatch(r"Is there a (\w+ \w+) in the image\?", q):
        return "yes" if m[1] in names else "no"
    if q == "What is written in the image?":
        return scene.text.text if scene.text is not None and scene.text.legible else "unanswerable"
    raise AssertionError(f"unknown question {question!r}")


def test_every_answer_checks_against_its_scene():
    seen = set()
    for index in range(300):
        scene, rng = scene_for(11, index)
        for family in FAMILIES:
            qa = ask(scene, family, rng)
            if qa is None:
                continue
            seen.add((qa.family, qa.subtype))
            if family == "choice":
                lines = qa.question.split("\n")
                options = {line[0]: line[3:] for line in lines[1:5]}
                assert list(options) == list(LETTERS)
                assert options[qa.answer] == _expected(scene, lines[0])
                assert len(set(options.values())) == 4
            else:
                assert qa.answer == _expected(scene, qa.question), qa
    for needed in [("existence", t) for t in ("positive", "random", "popular", "adversarial")] + [
        ("unanswerable", t) for t in ("no-text", "illegible", "absent-object")
    ] + [("reading", "digits"), ("reading", "word"), ("position", "where"), ("attribute", "colour")]:
        assert needed in seen, needed


def test_pope_negatives_follow_their_definitions():
    for index in range(200):
        scene, rng = scene_for(3, index)
        present = {(s.colour, s.shape) for s in scene.shapes}
        for subtype in ("popular", "adversarial"):
            qa = existence(scene, rng, subtype)
            if qa is None:
                continue
            colour, shape = re.fullmatch(r"Is there a (\w+) (\w+) in the image\?", qa.question.split("\n")[0]).groups()
            assert (colour, shape) not in present and qa.answer == "no"
            assert shape in {s for _, s in present}
            if subtype == "adversarial":
                assert colour in {c for c, _ in present}


def test_scenes_and_captions():
    scene = sample_scene(np.random.default_rng(1))
    assert 1 <= len(scene.shapes) <= 5
    assert len({s.cell for s in scene.shapes}) == len(scene.shapes)
    assert len({(s.colour, s.shape) for s in scene.shapes}) == len(scene.shapes)
    text = caption(scene)
    for s in scene.shapes:
        assert f"{s.size} {s.colour} {s.shape}" in text
    image = render(scene)
    assert image.size == (128, 128) and image.mode == "RGB"
    assert set(WORDS) and all(set(w) <= set(CHARACTERS) for w in WORDS) and set(COLOURS) and set(SHAPES)


def test_font_draws_known_glyphs_only():
    canvas = np.zeros((10, 20, 3), dtype=np.uint8)
    draw_text(canvas, "17", 1, 1, (255, 255, 255))
    assert canvas[1:8, 1:6].any() and text_size("17") == (11, 7)
    with pytest.raises(ValueError, match="No glyph"):
        draw_text(canvas, "q", 0, 0, (1, 1, 1))


def test_training_cli_reads_the_splits_unchanged(tmp_path):
    pretrain = write_split(str(tmp_path), "pretrain", seed=1, num_images=5, kind="pretrain")
    instruct = write_split(str(tmp_path), "instruct", seed=2, num_images=5, kind="instruct")
    processor = make_processor(sparsecut_config())
    for path, template in ((pretrain, "plain"), (instruct, "vicuna_v1")):
        dataset = LlavaDataset(read_records(path), processor, str(tmp_path / "images"), template, 4096, True, strict=True)
        report = dataset.validate(decode_images=True)
        assert len(report.kept) == 5 and not report.skipped
        assert dataset[0]["pixel_values"].shape == (1, 5, 3, 16, 16)
    records = json.loads((tmp_path / "instruct.json").read_text())
    assert all(r["conversations"][0]["value"].startswith("<image>\n") for r in records)
    assert all(len(r["conversations"]) == 6 for r in records)


def test_tiny_tokenizer_round_trips_and_supervises_replies(tmp_path):
    from transformers import AutoTokenizer

    from conftest import image_processor
    from sparsecut import SparseCutProcessor
    from training.data import IGNORE_INDEX, encode
    from training.tiny.tokenizer import build_tokenizer

    tokenizer = build_tokenizer(corpus(1, 100), vocab_size=400)
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded("What is 46?")["input_ids"] == tokenizer("What is 46?")["input_ids"]
    assert loaded.tokenize("46") == ["▁", "4", "6"]  # digits one by one
    assert loaded.decode(loaded("There is a small red circle.")["input_ids"], skip_special_tokens=True) == "There is a small red circle."
    processor = SparseCutProcessor(image_processor(), loaded, image_size=16, image_seq_length=16)
    assert processor.template == "tokenizer"
    record = {"image": "x.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat is written in the image?"}, {"from": "gpt", "value": "46"},
        {"from": "human", "value": "What color is the circle?"}, {"from": "gpt", "value": "red"}]}
    encoded = encode(record, processor, "tokenizer", 1000, high_res=True)
    supervised = [loaded.decode([i]) for i, label in zip(encoded.input_ids, encoded.labels) if label != IGNORE_INDEX]
    assert "".join(supervised).replace(" ", "") == "46</s>red</s>"
    prompt = loaded(processor.prompt("What is written in the image?"))["input_ids"]  # the chat template's own words too
    assert loaded.unk_token_id not in prompt and loaded.tokenize(" ASSISTANT:") == ["▁ASSISTANT", ":"]


def test_tiny_lm_pretraining_learns_and_is_deterministic():
    from training.tiny.lm import lm_config, pretrain_lm
    from training.tiny.tokenizer import build_tokenizer

    texts = corpus(2, 60)
    tokenizer = build_tokenizer(texts, vocab_size=300)
    config = lm_config(tokenizer, hidden=32, layers=2, heads=2)
    model, losses = pretrain_lm(tokenizer, texts, steps=60, batch_size=8, block=64, lr=1e-2, config=config, progress=False)
    assert sum(losses[-5:]) / 5 < 0.6 * losses[0]
    again, losses_again = pretrain_lm(tokenizer, texts, steps=60, batch_size=8, block=64, lr=1e-2, config=config, progress=False)
    assert losses == losses_again
    assert model.config.vocab_size == len(tokenizer) and model.config.tie_word_embeddings


def test_scores_per_family_f1_and_unanswerable_recall():
    from training.tiny.evaluate import score

    records = [
        {"family": "existence", "answer": "yes"}, {"family": "existence", "answer": "no"},
        {"family": "existence", "answer": "yes"}, {"family": "reading", "answer": "CAT"},
        {"family": "unanswerable", "answer": "unanswerable"}, {"family": "count", "answer": "2"},
    ]
    predictions = ["Yes", "yes", "no", "cat.", "Unanswerable", "3"]
    result = score(records, predictions)
    assert result["families"] == {"count": 0.0, "existence": 1 / 3, "reading": 1.0, "unanswerable": 1.0}
    assert result["overall"] == 3 / 6 and result["count"] == 6
    assert abs(result["existence_f1"] - 0.5) < 1e-9  # precision 1/2, recall 1/2
    assert result["unanswerable_recall"] == 1.0


def test_tiny_clip_pretraining_runs_and_crops_are_described():
    from training.tiny.clip import clip_config, crop_caption, pairs, pretrain_clip
    from training.tiny.tokenizer import build_tokenizer

    tokenizer = build_tokenizer(corpus(4, 40), vocab_size=200)
    scene, _ = scene_for(4, 0)
    described = " ".join(crop_caption(scene, q) for q in range(4))
    assert all(f"{s.size} {s.name}" in described for s in scene.shapes)  # every shape lies in exactly one quadrant
    (low, text, negative), (crop, _, _) = pairs(4, 0)
    assert low.shape == crop.shape == (3, 64, 64) and text == caption(scene)
    assert negative != text and len(negative.split()) == len(text.split())  # one word (or number) changed
    config = clip_config(tokenizer, hidden=32, layers=2, heads=2)
    tower, losses = pretrain_clip(tokenizer, seed=4, num_scenes=40, steps=30, batch_size=16, lr=3e-3, config=config, progress=False)
    assert sum(losses[-5:]) / 5 < losses[0]
    assert type(tower).__name__ == "CLIPVisionModel" and tower.config.image_size == 64


def test_hard_negatives_change_exactly_one_thing():
    from training.tiny.clip import perturb

    for index in range(200):
        scene, rng = scene_for(5, index)
        other = perturb(scene, rng)
        pairs_before = {(s.colour, s.shape) for s in scene.shapes}
        pairs_after = {(s.colour, s.shape) for s in other.shapes}
        assert len(pairs_after) == len(scene.shapes)  # still distinct pairings
        assert [s.cell for s in other.shapes] == [s.cell for s in scene.shapes]
        changed_shapes = len(pairs_before - pairs_after)
        changed_text = scene.text != other.text
        assert changed_shapes + changed_text == 1, (scene, other)


def test_existence_questions_are_balanced_like_pope():
    questions = [existence(scene, rng) for scene, rng in (scene_for(8, i) for i in range(400))]
    answers = [qa.answer for qa in questions if qa is not None]  # None: no negative of the drawn kind exists
    assert len(answers) > 300
    assert 0.4 < answers.count("yes") / len(answers) < 0.6
