"""Each benchmark reader on a small fixture in the official format, written here; scores from chosen predictions."""

import base64
import csv
import io
import json
import os

import pytest
from PIL import Image

from sparsecut.evaluation import prompts
from sparsecut.evaluation.answers import evalai_normalise
from sparsecut.evaluation.benchmarks import BENCHMARKS, BenchmarkDataError

SHORT = "\nAnswer the question using a single word or phrase."
CHOICE = "\nAnswer with the option's letter from the given choices directly."


def image(path, colour=(200, 30, 30), fmt=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (16, 16), colour).save(path, format=fmt)


def png_bytes(colour):
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def dump(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle)


def dump_lines(path, records):
    with open(path, "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in records)


def read(name, root, split=None, **options):
    bench = BENCHMARKS[name]
    return bench.read(str(root), split or bench.default_split, options)


# ---- VQAv2 ---------------------------------------------------------------------------------------------------------

def write_vqav2(root):
    questions = [{"image_id": 42, "question": "What color is the bus?", "question_id": 420},
                 {"image_id": 42, "question": "How many buses?", "question_id": 421}]
    dump(root / "v2_OpenEnded_mscoco_val2014_questions.json",
         {"task_type": "Open-Ended", "data_type": "mscoco", "data_subtype": "val2014", "questions": questions})
    def answers(*words):
        return [{"answer": w, "answer_confidence": "yes", "answer_id": i + 1} for i, w in enumerate(words)]
    annotations = [
        {"question_id": 420, "image_id": 42, "question_type": "what color", "answer_type": "other",
         "multiple_choice_answer": "red", "answers": answers(*["red"] * 2, *["dark red"] * 8)},
        {"question_id": 421, "image_id": 42, "question_type": "how many", "answer_type": "number",
         "multiple_choice_answer": "2", "answers": answers(*["2"] * 10)},
    ]
    dump(root / "v2_mscoco_val2014_annotations.json", {"data_subtype": "val2014", "annotations": annotations})
    image(str(root / "val2014" / "COCO_val2014_000000000042.jpg"), fmt="JPEG")


def test_vqav2_val_reader_and_official_score(tmp_path):
    write_vqav2(tmp_path)
    samples = read("vqav2", tmp_path)
    assert [s.id for s in samples] == ["420", "421"]
    assert samples[0].question == "What color is the bus?" + SHORT
    assert samples[0].image == str(tmp_path / "val2014" / "COCO_val2014_000000000042.jpg")
    assert samples[1].target == {"answers": ["2"] * 10, "answer_type": "number"}
    metrics = BENCHMARKS["vqav2"].score(samples, ["Red", "two"], {})
    # "Red" matches 2 of 10 after normalisation (0.6); "two" against ten identical "2" is compared exactly (0)
    assert metrics["accuracy"] == pytest.approx(30.0)
    assert metrics["per_answer_type"] == pytest.approx({"number": 0.0, "other": 60.0})
    assert BENCHMARKS["vqav2"].score(samples, ["Red", "two"], {"vqa_processor": "evalai"})["accuracy"] == pytest.approx(80.0)


def test_vqav2_errors_name_the_problem(tmp_path):
    with pytest.raises(BenchmarkDataError, match="v2_OpenEnded_mscoco_val2014_questions.json does not exist"):
        read("vqav2", tmp_path)
    write_vqav2(tmp_path)
    data = json.loads((tmp_path / "v2_mscoco_val2014_annotations.json").read_text())
    data["annotations"] = data["annotations"][:1]
    dump(tmp_path / "v2_mscoco_val2014_annotations.json", data)
    with pytest.raises(BenchmarkDataError, match="1 questions have no annotation .*different splits"):
        read("vqav2", tmp_path)
    os.remove(tmp_path / "val2014" / "COCO_val2014_000000000042.jpg")
    write_vqav2(tmp_path)
    os.remove(tmp_path / "val2014" / "COCO_val2014_000000000042.jpg")
    with pytest.raises(BenchmarkDataError, match="1 of 1 image files are missing"):
        read("vqav2", tmp_path)


def test_vqav2_test_dev_submission_covers_all_test2015_questions(tmp_path):
    dump(tmp_path / "v2_OpenEnded_mscoco_test-dev2015_questions.json",
         {"data_subtype": "test-dev2015", "questions": [{"image_id": 7, "question": "Is it red?", "question_id": 70}]})
    dump(tmp_path / "v2_OpenEnded_mscoco_test2015_questions.json",
         {"data_subtype": "test2015", "questions": [{"image_id": 7, "question": "Is it red?", "question_id": 70},
                                                    {"image_id": 8, "question": "Why?", "question_id": 80}]})
    image(str(tmp_path / "test2015" / "COCO_test2015_000000000007.jpg"), fmt="JPEG")
    bench = BENCHMARKS["vqav2"]
    samples = read("vqav2", tmp_path, "test-dev")
    assert samples[0].image.endswith("test2015/COCO_test2015_000000000007.jpg") and samples[0].target == {}
    assert bench.score(samples, ["Yes!"], {}) == {}
    (path,) = bench.submit(samples, ["Yes!"], str(tmp_path), "test-dev", str(tmp_path))
    assert json.loads(open(path).read()) == [{"question_id": 70, "answer": "yes"}, {"question_id": 80, "answer": ""}]


def test_vqav2_llava_test_dev_jsonl(tmp_path):
    dump_lines(tmp_path / "llava_vqav2_mscoco_test-dev2015.jsonl",
               [{"question_id": 70, "image": "COCO_test2015_000000000007.jpg", "text": "Is it red?" + SHORT,
                 "category": "default"}])
    image(str(tmp_path / "test2015" / "COCO_test2015_000000000007.jpg"), fmt="JPEG")
    (sample,) = read("vqav2", tmp_path, "llava-test-dev")
    assert sample.id == "70" and sample.question == "Is it red?" + SHORT  # LLaVA's text is used as it is


# ---- GQA, VizWiz, TextVQA ------------------------------------------------------------------------------------------

def test_gqa_testdev_balanced(tmp_path):
    dump(tmp_path / "testdev_balanced_questions.json", {
        "201307251": {"imageId": "n161313", "question": "Is it a bus?", "answer": "no", "fullAnswer": "No.",
                      "types": {"structural": "verify", "semantic": "obj", "detailed": "existThat"}},
        "20757936": {"imageId": "n161313", "question": "Which side?", "answer": "left",
                     "types": {"structural": "query"}}})
    image(str(tmp_path / "images" / "n161313.jpg"), fmt="JPEG")
    samples = read("gqa", tmp_path)
    assert [s.id for s in samples] == ["201307251", "20757936"] and samples[0].question == "Is it a bus?" + SHORT
    metrics = BENCHMARKS["gqa"].score(samples, ["No.", "right"], {})
    assert metrics["accuracy"] == 50.0 and metrics["per_type"] == {"query": 0.0, "verify": 100.0}
    dump(tmp_path / "testdev_balanced_questions.json", [{"question": "?"}])
    with pytest.raises(BenchmarkDataError, match="should map question ids"):
        read("gqa", tmp_path)


def test_vizwiz_val_prompt_score_and_test_submission(tmp_path):
    answers = [{"answer": "unanswerable", "answer_confidence": "yes"}] * 4 + [{"answer": "soup", "answer_confidence": "maybe"}] * 6
    dump(tmp_path / "val.json", [{"image": "VizWiz_val_00000000.jpg", "question": "What is this?", "answers": answers,
                                  "answer_type": "unanswerable", "answerable": 0}])
    dump(tmp_path / "test.json", [{"image": "VizWiz_test_00000000.jpg", "question": "What is this?"}])
    image(str(tmp_path / "val" / "VizWiz_val_00000000.jpg"), fmt="JPEG")
    image(str(tmp_path / "test" / "VizWiz_test_00000000.jpg"), fmt="JPEG")
    (sample,) = read("vizwiz", tmp_path)
    assert sample.id == "VizWiz_val_00000000.jpg"
    assert sample.question == ("What is this?\nWhen the provided information is insufficient, respond with "
                               "'Unanswerable'.\nAnswer the question using a single word or phrase.")
    metrics = BENCHMARKS["vizwiz"].score([sample], ["Unanswerable"], {})
    assert metrics["accuracy"] == 100.0 and metrics["per_answer_type"] == {"unanswerable": 100.0}
    (test,) = read("vizwiz", tmp_path, "test")
    (path,) = BENCHMARKS["vizwiz"].submit([test], ["Soup."], str(tmp_path), "test", str(tmp_path))
    assert json.loads(open(path).read()) == [{"image": "VizWiz_test_00000000.jpg", "answer": "soup"}]


def test_textvqa_val_with_and_without_ocr(tmp_path):
    dump(tmp_path / "TextVQA_0.5.1_val.json", {"dataset_type": "val", "data": [
        {"question": "what brand is this?", "image_id": "003a8ae2ef43b901", "question_id": 34602,
         "answers": ["dakota"] * 3 + ["dakota digital"] * 7, "set_name": "val"}]})
    image(str(tmp_path / "train_images" / "003a8ae2ef43b901.jpg"), fmt="JPEG")
    (sample,) = read("textvqa", tmp_path)
    assert sample.question == "what brand is this?" + SHORT
    assert BENCHMARKS["textvqa"].score([sample], ["Dakota."], {})["accuracy"] == pytest.approx(90.0)  # evalai default
    with pytest.raises(BenchmarkDataError, match="TextVQA_Rosetta_OCR_v0.2_val.json does not exist"):
        read("textvqa", tmp_path, ocr=True)
    dump(tmp_path / "TextVQA_Rosetta_OCR_v0.2_val.json",
         {"data": [{"image_id": "003a8ae2ef43b901", "ocr_tokens": ["DAKOTA", "DIGITAL"]}]})
    (sample,) = read("textvqa", tmp_path, ocr=True)
    assert sample.question == "what brand is this?\nReference OCR token: DAKOTA, DIGITAL" + SHORT


# ---- POPE ----------------------------------------------------------------------------------------------------------

def write_pope(root, per_setting=4):
    names = ["COCO_val2014_000000310196.jpg", "COCO_val2014_000000210789.jpg"]
    for i, name in enumerate(names):
        image(str(root / "val2014" / name), (40 * i, 90, 200), fmt="JPEG")
    for setting in ("random", "popular", "adversarial"):
        dump_lines(root / f"coco_pope_{setting}.json", [
            {"question_id": q + 1, "image": names[q % 2], "text": f"Is there a {setting[:3]}{q} in the image?",
             "label": "yes" if q % 2 == 0 else "no"} for q in range(per_setting)])


def test_pope_reads_three_settings_with_their_own_ids(tmp_path):
    write_pope(tmp_path)
    samples = read("pope", tmp_path)
    assert len(samples) == 12 and samples[0].id == "random/1" and samples[-1].id == "adversarial/4"
    assert samples[0].question == "Is there a ran0 in the image?" + SHORT
    assert [s.id for s in read("pope", tmp_path, "popular")] == [f"popular/{i}" for i in range(1, 5)]
    predictions = ["Yes", "No", "Yes", "No"] + ["yes"] * 4 + ["No"] * 4
    metrics = BENCHMARKS["pope"].score(samples, predictions, {})
    assert metrics["random"]["f1"] == 100.0 and metrics["popular"]["f1"] == pytest.approx(200 / 3)
    assert metrics["adversarial"]["f1"] == 0.0 and metrics["popular"]["yes_ratio"] == 100.0
    assert metrics["average"]["f1"] == pytest.approx((100 + 200 / 3 + 0) / 3)
    assert BENCHMARKS["pope"].cells(metrics, "all")["pope/avg"] == "55.6"


def test_pope_rejects_unknown_labels(tmp_path):
    write_pope(tmp_path)
    dump_lines(tmp_path / "coco_pope_random.json", [{"question_id": 1, "image": "x.jpg", "text": "?", "label": "maybe"}])
    with pytest.raises(BenchmarkDataError, match="label 'maybe'"):
        read("pope", tmp_path)


# ---- ScienceQA-IMG, SEED-Bench ----------------------------------------------------------------------------------------

def test_scienceqa_reads_the_problems_with_an_image(tmp_path):
    dump(tmp_path / "problems.json", {
        "4": {"question": "Which is a mammal?", "choices": ["shark", "whale", "trout"], "answer": 1,
              "hint": "Look at the picture.", "image": "image.png", "split": "test"},
        "5": {"question": "Which word comes first?", "choices": ["apple", "zoo"], "answer": 0, "hint": "",
              "image": None, "split": "test"},
        "6": {"question": "Which is hot?", "choices": ["ice", "fire"], "answer": 1, "hint": "", "image": "image.png",
              "split": "test"}})
    dump(tmp_path / "pid_splits.json", {"test": ["4", "5", "6"], "val": []})
    image(str(tmp_path / "images" / "test" / "4" / "image.png"))
    image(str(tmp_path / "images" / "test" / "6" / "image.png"))
    samples = read("scienceqa", tmp_path)
    assert [s.id for s in samples] == ["4", "6"]  # problem 5 has no image: not in ScienceQA-IMG
    assert samples[0].question == "Context: Look at the picture.\nWhich is a mammal?\nA. shark\nB. whale\nC. trout" + CHOICE
    assert samples[1].question == "Which is hot?\nA. ice\nB. fire" + CHOICE
    assert samples[0].target["answer"] == "B"
    assert BENCHMARKS["scienceqa"].score(samples, ["B", "A"], {})["accuracy"] == 50.0
    with pytest.raises(BenchmarkDataError, match="no split 'minitest'"):
        read("scienceqa", tmp_path, "minitest")


def test_seedbench_image_subset_and_dimensions(tmp_path):
    question = {"answer": "A", "choice_a": "One", "choice_b": "Two", "choice_c": "Three", "choice_d": "Four",
                "data_id": "1454426_2591111986", "data_type": "image", "question": "How many towels?",
                "question_id": "101669", "question_type_id": 5}
    video = dict(question, data_type="video", question_id="200000", data_id="v.mp4", question_type_id=10)
    dump(tmp_path / "SEED-Bench.json", {"questions": [question, video],
                                        "question_type": {"Instances Counting": 5, "Action Recognition": 10}})
    image(str(tmp_path / "SEED-Bench-image" / "1454426_2591111986"), fmt="JPEG")
    (sample,) = read("seedbench", tmp_path)
    assert sample.question == "How many towels?\nA. One\nB. Two\nC. Three\nD. Four" + CHOICE
    metrics = BENCHMARKS["seedbench"].score([sample], ["A"], {})
    assert metrics == {"accuracy": 100.0, "per_dimension": {"Instances Counting": 100.0}}


# ---- MMBench -------------------------------------------------------------------------------------------------------

MMB_COLUMNS = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image", "source", "l2-category",
               "comment", "split"]


def write_mmbench(path, rows):
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t")
        writer.writerow(MMB_COLUMNS)
        for row in rows:
            writer.writerow([row.get(c, "") for c in MMB_COLUMNS])


def mmb_row(index, answer="B", image_data=None, **extra):
    data = image_data or base64.b64encode(png_bytes((10 * index, 80, 80))).decode()
    return {"index": index, "question": "What is shown?", "hint": "nan", "A": "a cat", "B": "a dog", "C": "a cow",
            "D": "nan", "answer": answer, "category": "object", "image": data, **extra}


def test_mmbench_makes_circular_rotations(tmp_path):
    write_mmbench(tmp_path / "MMBench_DEV_EN.tsv", [mmb_row(0, hint="A farm.\tscene"), mmb_row(1, "A", image_data="0")])
    samples = read("mmbench", tmp_path)
    assert [s.id for s in samples] == ["0", "1000000", "2000000", "1", "1000001", "2000001"]
    assert samples[0].question == "A farm.\tscene\nWhat is shown?\nA. a cat\nB. a dog\nC. a cow" + CHOICE  # quoted tab
    assert samples[1].question == "A farm.\tscene\nWhat is shown?\nA. a dog\nB. a cow\nC. a cat" + CHOICE
    assert samples[4].question == "What is shown?\nA. a dog\nB. a cow\nC. a cat" + CHOICE  # "nan" hint: none
    assert [s.target["answer"] for s in samples[:3]] == ["B", "A", "C"]  # "a dog" moves up one letter per round
    assert samples[3].image == samples[0].image and samples[0].image.startswith(b"\x89PNG")  # row 1 points to row 0
    predictions = ["B", "A", "C", "A", "A", "B"]  # question 0 right every round, question 1 wrong in round 1 (C)
    metrics = BENCHMARKS["mmbench"].score(samples, predictions, {})
    assert metrics["circular_accuracy"] == 50.0 and metrics["single_pass_accuracy"] == 100.0
    assert BENCHMARKS["mmbench"].cells(metrics, "MMBench_DEV_EN") == {"mmbench/en": "50.0"}
    assert len(read("mmbench", tmp_path, circular=False)) == 2


def test_mmbench_hint_chinese_prompt_and_given_rotations(tmp_path):
    rows = [mmb_row(3, hint="看图。"), mmb_row(1_000_003, "A", image_data="3", A="a dog", B="a cow", C="a cat")]
    write_mmbench(tmp_path / "MMBench_DEV_CN.tsv", rows)
    samples = read("mmbench", tmp_path, "MMBench_DEV_CN")
    assert [s.id for s in samples] == ["3", "1000003"]  # the file's own rotations, not made again
    assert samples[0].question == "看图。\nWhat is shown?\nA. a cat\nB. a dog\nC. a cow\n请直接回答选项字母。"
    metrics = BENCHMARKS["mmbench"].score(samples, ["B", "B"], {})
    assert metrics["circular_accuracy"] == 0.0 and metrics["lang"] == "cn"


def test_mmbench_test_split_is_written_for_submission(tmp_path):
    row = mmb_row(5)
    del row["answer"]
    write_mmbench(tmp_path / "MMBench_TEST_EN.tsv", [row])
    samples = read("mmbench", tmp_path, "MMBench_TEST_EN")
    assert BENCHMARKS["mmbench"].score(samples, ["A"] * 3, {}) == {}
    (path,) = BENCHMARKS["mmbench"].submit(samples, ["A", "B", "C"], str(tmp_path), "MMBench_TEST_EN", str(tmp_path))
    with open(path, encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    assert [(r["index"], r["A"], r["prediction"]) for r in rows] == [("5", "a cat", "A"), ("1000005", "a dog", "B"),
                                                                      ("2000005", "a cow", "C")]


def test_mmbench_errors(tmp_path):
    write_mmbench(tmp_path / "MMBench_DEV_EN.tsv", [mmb_row(0, answer="D")])
    with pytest.raises(BenchmarkDataError, match="answer 'D' but options ABC"):
        read("mmbench", tmp_path)
    write_mmbench(tmp_path / "MMBench_DEV_EN.tsv", [mmb_row(0, image_data="not base64!" * 10)])
    with pytest.raises(BenchmarkDataError, match="not valid base64"):
        read("mmbench", tmp_path)
    (tmp_path / "MMBench_DEV_EN.tsv").write_text("index,question\n0,hi\n")
    with pytest.raises(BenchmarkDataError, match="tab-separated"):
        read("mmbench", tmp_path)


# ---- the synthetic benchmark -------------------------------------------------------------------------------------------

def test_synthetic_benchmark_reads_the_tiny_eval_split(tmp_path):
    from sparsecut.evaluation.synthetic.dataset import write_split
    from sparsecut.evaluation.synthetic.questions import FAMILIES

    from sparsecut.evaluation.benchmarks import synthetic

    assert synthetic.FAMILIES == FAMILIES  # the scorer's family order is the generator's
    write_split(str(tmp_path), "test", seed=3, num_images=2, kind="eval")
    samples = read("synthetic", tmp_path)
    records = synthetic.read_eval(str(tmp_path / "test.jsonl"))
    assert [s.id for s in samples] == [r["id"] for r in records] and samples[0].question == records[0]["question"]
    assert all(os.path.isfile(s.image) for s in samples)
    perfect = BENCHMARKS["synthetic"].score(samples, [r["answer"] for r in records], {})
    assert perfect["overall"] == 1.0 and perfect["count"] == len(records)


def test_prompt_builders_match_llava_15():
    assert prompts.short_answer("Q?") == "Q?" + SHORT
    assert prompts.lettered("Q?", {"A": "x"}, prefix="Hint\n") == "Hint\nQ?\nA. x" + CHOICE
    assert evalai_normalise(prompts.UNANSWERABLE).startswith("when provided information")
