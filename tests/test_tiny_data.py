"""The synthetic benchmark: deterministic, and every answer follows from the scene's specification."""

import hashlib
import json
import re

import numpy as np
import pytest

from conftest import make_processor, sparsecut_config
from training.data import LlavaDataset, read_records
from sparsecut.evaluation.synthetic.dataset import scene_for, write_split
from sparsecut.evaluation.synthetic.font import CHARACTERS, draw_text, text_size
from sparsecut.evaluation.synthetic.questions import (DRILLS, FAMILIES, LETTERS, ORDINALS, ask, ask_turns, caption,
                                                      existence)
from sparsecut.evaluation.synthetic.scenes import COLOURS, SHAPES, WORDS, position_name, render, sample_scene

CHOICE_KINDS = {"How many": "number", "What color": "colour", "What shape": "shape"}  # a choice's base -> options' kind
OPTION_POOLS = {"number": [str(n) for n in range(6)], "colour": list(COLOURS), "shape": list(SHAPES)}


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
                kind = next(k for start, k in CHOICE_KINDS.items() if lines[0].startswith(start))
                assert set(options.values()) <= set(OPTION_POOLS[kind]), qa  # distractors of the answer's kind
                assert qa.subtype.split("-")[0] == ("count" if kind == "number" else "attribute"), qa
            else:
                assert qa.answer == _expected(scene, qa.question), qa
    for needed in [("existence", t) for t in ("positive", "random", "popular", "adversarial")] + [
        ("unanswerable", t) for t in ("no-text", "illegible", "absent-object")
    ] + [("reading", "digits"), ("reading", "word"), ("position", "where"), ("attribute", "colour")] + [
        ("choice", t) for t in ("attribute-colour", "attribute-shape", "count-shape", "count-colour", "count-all")
    ]:
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
    assert image.size == (96, 96) and image.mode == "RGB"
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


def test_the_familys_splits_use_its_layout_and_six_question_conversations(tmp_path):
    from PIL import Image

    from training.tiny.family import LAYOUT

    path = write_split(str(tmp_path), "instruct", seed=2, num_images=20, kind="instruct", turns=6, layout=LAYOUT)
    records = json.loads(open(path).read())
    turns = [len(r["conversations"]) // 2 for r in records]  # six of the seven families, where the scene allows
    assert max(turns) == 6 and sum(t == 6 for t in turns) >= 18 and min(turns) >= 4
    assert Image.open(tmp_path / "images" / records[0]["image"]).size == (96, 96)
    questions = [turn["value"] for r in records for turn in r["conversations"][::2]]
    assert any("written" in q for q in questions) and any("How many" in q for q in questions)


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
    assert result["unanswerable_recall"] == 1.0 and result["unanswerable_precision"] == 1.0
    low, high = result["overall_interval"]
    assert 0 <= low < 0.5 < high <= 1


def test_existence_f1_per_kind_of_negative_and_unanswerable_precision():
    from training.tiny.evaluate import results_table, score

    def existence(answer, subtype):
        return {"family": "existence", "answer": answer, "subtype": subtype}

    # six positives, dealt in turn to the random / popular / adversarial splits; one negative of each kind
    records = [existence("yes", "positive")] * 6 + [existence("no", k) for k in ("random", "popular", "adversarial")]
    records += [{"family": "reading", "answer": "CAT"}, {"family": "unanswerable", "answer": "unanswerable"}]
    predictions = ["yes", "no", "yes", "yes", "yes", "yes"] + ["no", "yes", "yes"] + ["unanswerable", "unanswerable"]
    result = score(records, predictions)
    # random: positives 1 and 4 (yes, yes) + a rejected negative: P 1, R 1; popular: positives 2 and 5 (no, yes) + a
    # false yes: P 1/2, R 1/2; adversarial: positives 3 and 6 (yes, yes) + a false yes: P 2/3, R 1
    assert result["existence_f1_by_negatives"] == pytest.approx({"random": 1.0, "popular": 0.5, "adversarial": 0.8})
    assert result["unanswerable_recall"] == 1.0 and result["unanswerable_precision"] == 0.5  # one of two was right
    row = results_table({"m": result}).splitlines()[2]
    assert "| 1.000 / 0.500 / 0.800 |" in row and "| 1.000 / 0.500 |" in row
    old = {k: v for k, v in result.items() if k not in ("existence_f1_by_negatives", "unanswerable_precision")}
    assert "| - / - / - |" in results_table({"m": old})  # a table scored before the columns existed
    assert result["subtypes"] == {"existence": {  # records without a subtype (reading, unanswerable here): none
        "adversarial": {"accuracy": 0.0, "n": 1}, "popular": {"accuracy": 0.0, "n": 1},
        "positive": {"accuracy": 5 / 6, "n": 6}, "random": {"accuracy": 1.0, "n": 1}}}


def test_existence_questions_are_balanced_like_pope():
    questions = [existence(scene, rng) for scene, rng in (scene_for(8, i) for i in range(400))]
    answers = [qa.answer for qa in questions if qa is not None]  # None: no negative of the drawn kind exists
    assert len(answers) > 300
    assert 0.4 < answers.count("yes") / len(answers) < 0.6


def test_anchored_layout_moves_only_the_text_to_its_cells_corner():
    from sparsecut.evaluation.synthetic.scenes import layout_named

    free, anchored = layout_named("cells-96"), layout_named("cells-96-anchored")
    moved = 0
    for index in range(60):
        (a, rng_a), (b, rng_b) = scene_for(11, index, layout=free), scene_for(11, index, layout=anchored)
        assert a.shapes == b.shapes and a.background == b.background
        assert rng_a.random() == rng_b.random()  # the questions asked next are drawn alike
        assert (a.text is None) == (b.text is None)
        if b.text is not None:
            assert (b.text.text, b.text.cell, b.text.length) == (a.text.text, a.text.cell, a.text.length)
            assert b.text.origin == (32 * b.text.cell[1], 32 * b.text.cell[0])  # the cell's top-left corner
            moved += a.text.origin != b.text.origin
    assert moved > 5  # the free layout does place texts elsewhere in their cells


def test_the_spelling_drill_asks_one_character_of_a_legible_text_by_its_place_and_is_never_scored():
    asked = set()
    for index in range(200):
        scene, rng = scene_for(11, index, text_probability=1.0)
        qa = ask(scene, "spelling", rng)
        if scene.text.text == "":  # a scribble: nothing to spell
            assert qa is None
            continue
        place = ORDINALS.index(qa.question.split()[3])
        assert qa.answer == scene.text.text[place] and qa.family == "spelling" and qa.subtype == ORDINALS[place]
        asked.add((place, scene.text.text.isdigit()))
    assert asked == {(0, True), (1, True), (0, False), (1, False), (2, False)}  # numbers have two characters
    assert not set(DRILLS) & set(FAMILIES)  # the benchmark's eval split asks FAMILIES only


def test_the_relation_drill_asks_left_of_or_above_about_two_objects_and_is_never_scored():
    asked = set()
    for index in range(200):
        scene, rng = scene_for(11, index)
        qa = ask(scene, "relation", rng)
        if len(scene.shapes) < 2:
            assert qa is None
            continue
        assert qa.family == "position" and qa.subtype in ("left-of", "above")
        assert qa.answer == _expected(scene, qa.question)
        asked.add((qa.subtype, qa.answer))
    assert asked == {("left-of", "yes"), ("left-of", "no"), ("above", "yes"), ("above", "no")}
    assert "relation" in DRILLS and "relation" not in FAMILIES


def test_the_tally_drill_asks_counts_openly_or_with_four_lettered_numbers_and_is_never_scored():
    asked = set()
    for index in range(200):
        scene, rng = scene_for(12, index)
        qa = ask(scene, "tally", rng)
        lines = qa.question.split("\n")
        expected = _expected(scene, lines[0])
        assert lines[0].startswith("How many ") and qa.subtype.removeprefix("count-") in ("shape", "colour", "all")
        if qa.family == "choice":  # the count's answer among three other numbers, as a letter
            options = [line[3:] for line in lines[1:5]]
            assert [line[:3] for line in lines[1:5]] == [f"{letter}. " for letter in LETTERS]
            assert len(set(options)) == 4 and set(options) <= {str(n) for n in range(6)}
            assert options[LETTERS.index(qa.answer)] == expected
        else:
            assert qa.family == "count" and qa.answer == expected and len(lines) == 2
        asked.add(qa.family)
    assert asked == {"count", "choice"}
    assert "tally" in DRILLS and "tally" not in FAMILIES


def test_the_count_drills_draw_balanced_answers_while_the_scored_family_keeps_its_draw():
    """Counting a shape or colour: the family's questions answer 0 or 1 most of the time; the drills' (``balanced``)
    never answer 0, answer each count a scene has above zero equally often, and stay right."""
    from sparsecut.evaluation.synthetic.questions import count
    family, drilled, both_possible = [], [], 0
    for index in range(400):
        scene, _ = scene_for(14, index)
        for balanced, answers in ((False, family), (True, drilled)):
            qa = count(scene, np.random.default_rng(index), balanced=balanced)
            assert qa.family == "count" and qa.answer == _expected(scene, qa.question)
            if qa.subtype != "all":
                answers.append(qa.answer)
    assert np.mean([a in ("0", "1") for a in family]) > 0.75
    assert "0" not in drilled and np.mean([a in ("2", "3", "4") for a in drilled]) > 0.3
    kinds = [[s.shape for s in scene_for(14, i)[0].shapes] for i in range(400)]
    two_squares = next(i for i, shapes in enumerate(kinds)
                       if shapes.count("square") == 2 and len(shapes) > 2
                       and all(shapes.count(s) < 2 for s in shapes if s != "square"))
    scene, _ = scene_for(14, two_squares)
    asked = [count(scene, np.random.default_rng(seed), balanced=True) for seed in range(300)]
    by_shape = [qa.answer for qa in asked if qa.subtype == "shape"]
    assert set(by_shape) == {"1", "2"} and 0.35 < by_shape.count("2") / len(by_shape) < 0.65
    assert ask(scene, "count", np.random.default_rng(3)) == count(scene, np.random.default_rng(3))  # the family's draw
    assert ask(scene, "tally", np.random.default_rng(4), balanced_counts=True) == ask(
        scene, "tally", np.random.default_rng(4), balanced_counts=True)  # deterministic for its generator


def test_balanced_counts_change_only_the_count_drills_turns_and_need_one(tmp_path):
    drills = ("relation", "tally", "recount")
    plain, balanced = (json.loads(open(write_split(str(tmp_path / name), "train", seed=8, num_images=40,
                                                   kind="instruct", turns=6, drills=drills,
                                                   balanced_counts=on)).read()) for name, on in (("a", False), ("b", True)))
    opened_zeros = {False: 0, True: 0}  # open counts of a shape or colour answered 0
    for a, b in zip(plain, balanced):
        assert b["conversations"][:-6] == a["conversations"][:-6]  # the regular turns and the relation drill's
        for on, record in ((False, a), (True, b)):
            tally, opened = record["conversations"][-6], record["conversations"][-4]  # recount: opened, lettered
            assert tally["value"].startswith("How many ") and opened["value"].startswith("How many ")
            if "shapes are there" not in opened["value"]:
                opened_zeros[on] += record["conversations"][-3]["value"] == "0"
    assert opened_zeros[True] == 0 < opened_zeros[False]
    with pytest.raises(ValueError, match="balanced_counts draws the answers of the count drills"):
        write_split(str(tmp_path / "c"), "train", seed=8, num_images=2, kind="instruct", drills=("relation",),
                    balanced_counts=True)


def test_drills_first_asks_the_same_turns_with_the_drills_first_and_needs_a_drill(tmp_path):
    drills = ("relation", "tally", "recount")
    last, first = (json.loads(open(write_split(str(tmp_path / name), "train", seed=8, num_images=30, kind="instruct",
                                               turns=6, drills=drills, balanced_counts=True,
                                               drills_first=on)).read()) for name, on in (("a", False), ("b", True)))

    def turns(record):  # (question without the image placeholder, answer) pairs
        values = [turn["value"].removeprefix("<image>\n") for turn in record["conversations"]]
        return list(zip(values[::2], values[1::2]))

    full = 0
    for a, b in zip(last, first):
        # the families' turns (up to 6) come first without drills_first, then the drills': relation 1 (where the scene
        # has two objects), tally 1, recount 2; with it the same draws, the drills' turns first
        split = [n for n in range(1, 7) if turns(b) == turns(a)[n:] + turns(a)[:n] and 3 <= len(turns(a)) - n <= 4]
        assert len(split) == 1
        drilled = turns(a)[split[0]:]
        full += len(drilled) == 4
        for record in (a, b):
            humans = [turn["value"] for turn in record["conversations"][::2]]
            assert humans[0].startswith("<image>\n") and not any("<image>" in value for value in humans[1:])
        assert drilled[-2][0].split("\n")[0] == drilled[-1][0].split("\n")[0]  # recount: opened, then lettered
    assert full > 20
    with pytest.raises(ValueError, match="drills_first puts the drill turns first"):
        write_split(str(tmp_path / "c"), "train", seed=8, num_images=2, kind="instruct", drills_first=True)


def test_the_recount_drill_asks_a_count_openly_then_the_same_count_with_four_lettered_numbers():
    for index in range(100):
        scene, rng = scene_for(13, index)
        opened, lettered = ask_turns(scene, "recount", rng)
        lines = lettered.question.split("\n")
        assert opened.family == "count" and opened.answer == _expected(scene, opened.question)
        assert lines[0] == opened.question.split("\n")[0] and lettered.family == "choice"  # the same question, lettered
        options = [line[3:] for line in lines[1:5]]
        assert len(set(options)) == 4 and set(options) <= set(OPTION_POOLS["number"])
        assert options[LETTERS.index(lettered.answer)] == opened.answer
    assert "recount" in DRILLS and "recount" not in FAMILIES
    with pytest.raises(ValueError, match="use ask_turns"):
        ask(scene, "recount", rng)
    assert [qa.question for qa in ask_turns(scene, "count", np.random.default_rng(1))] == [
        ask(scene, "count", np.random.default_rng(1)).question]  # one turn of any other family


def test_drills_add_turns_after_the_same_conversation_and_only_to_instruct_splits(tmp_path):
    plain = json.loads(open(write_split(str(tmp_path / "a"), "train", seed=5, num_images=12, kind="instruct",
                                        turns=6)).read())
    drilled = json.loads(open(write_split(str(tmp_path / "b"), "train", seed=5, num_images=12, kind="instruct",
                                          turns=6, drills=("relation", "relation", "tally", "recount"))).read())
    for a, b in zip(plain, drilled):
        n = len(a["conversations"])
        assert b["conversations"][:n] == a["conversations"]  # the regular turns are untouched
        extra = b["conversations"][n:]
        assert len(extra) in (6, 10) and all(not turn["value"].startswith("<image>") for turn in extra)
        for question in extra[:-6:2]:  # the relation drill's turns, in the order given (none with one object)
            assert re.match(r"Is the \w+ \w+ (to the left of|above) the \w+ \w+\?", question["value"])
        assert extra[-6]["value"].startswith("How many ")  # the tally drill's turn
        assert extra[-2]["value"].split("\n")[0] == extra[-4]["value"].split("\n")[0]  # the recount drill's two, last:
        assert extra[-3]["value"].isdigit() and extra[-1]["value"] in LETTERS              # open, then lettered
    assert sum(len(b["conversations"]) > len(a["conversations"]) for a, b in zip(plain, drilled)) >= 6
    for kind, drills in [("eval", ("relation",)), ("instruct", ("where",))]:
        with pytest.raises(ValueError, match="drills are training-only families of instruct splits"):
            write_split(str(tmp_path / "c"), "x", seed=5, num_images=1, kind=kind, drills=drills)


def test_a_reading_split_asks_what_is_written_then_its_look_up_turns_and_only_reading_splits_take_them(tmp_path):
    plain = json.loads(open(write_split(str(tmp_path / "a"), "read", seed=5, num_images=16, kind="reading",
                                        text_probability=0.8)).read())
    looked = json.loads(open(write_split(str(tmp_path / "b"), "read", seed=5, num_images=16, kind="reading",
                                         text_probability=0.8, look_up_turns=2)).read())
    for index, (a, b) in enumerate(zip(plain, looked)):
        scene, _ = scene_for(5, index, text_probability=0.8)
        first = a["conversations"][0]["value"]
        assert len(a["conversations"]) == 2 and b["conversations"][:2] == a["conversations"]  # the same first turn
        assert first.startswith("<image>\n") and (a["conversations"][1]["value"] == scene.text.text
                                                   if scene.text is not None and scene.text.legible
                                                   else a["conversations"][1]["value"] == "unanswerable")
        questions, answers = [turn["value"] for turn in b["conversations"][::2]], [t["value"] for t in b["conversations"][1::2]]
        assert len(questions) == 3 and len(set(questions)) == 3  # two look-ups, no question asked twice
        assert all(not q.startswith("<image>") and ("What is written" not in q or answer == "unanswerable")
                   for q, answer in zip(questions[1:], answers[1:]))  # no reading question among the look-ups
    for kind, turns in [("instruct", 1), ("reading", -1)]:
        with pytest.raises(ValueError, match="look_up_turns"):
            write_split(str(tmp_path / "c"), "x", seed=5, num_images=1, kind=kind, look_up_turns=turns)
