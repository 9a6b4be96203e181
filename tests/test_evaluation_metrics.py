"""sparsecut.evaluation.metrics against hand-computed values of the official scripts' rules."""

import random

import pytest

from sparsecut.evaluation.answers import CONTRACTIONS, evalai_normalise, normalise_words, strip_punctuation
from sparsecut.evaluation.choices import extract_choice
from sparsecut.evaluation.metrics import (choice_accuracy, circular_accuracy, gqa_accuracy, pope_answer, pope_metrics,
                                          vqa_accuracy)


def humans(*groups):
    """humans(("yes", 3), ("no", 7)) -> ten answers."""
    return [answer for answer, count in groups for _ in range(count)]


@pytest.mark.parametrize("k, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (7, 1.0), (10, 1.0)])
def test_partial_agreement_is_the_leave_one_out_mean_of_min_1_matches_over_3(k, expected):
    # k matching humans: each of the k sees k-1 others, each of the 10-k sees k: (k*min(1,(k-1)/3) + (10-k)*min(1,k/3))/10
    answers = humans(("cat", k), ("dog", 10 - k)) if k < 10 else humans(("cat", 10))
    assert vqa_accuracy("cat", answers) == pytest.approx(expected, abs=1e-12)


def test_all_ten_identical_answers_are_compared_exactly_without_normalisation():
    ten = humans(("yes", 10))
    assert vqa_accuracy("yes", ten) == 1.0
    assert vqa_accuracy("  yes\n", ten) == 1.0  # only newline/tab/outer whitespace cleaning applies
    assert vqa_accuracy("Yes", ten) == 0.0
    assert vqa_accuracy("yes.", ten) == 0.0
    assert vqa_accuracy("cat", humans(("the cat", 10))) == 0.0
    assert vqa_accuracy("1000", humans(("1,000", 10))) == 0.0


def test_differing_answers_normalise_both_sides():
    answers = humans(("yes", 9), ("no", 1))
    assert vqa_accuracy("Yes.", answers) == 1.0  # lower-cased, period stripped
    assert vqa_accuracy("yes!", answers) == 1.0  # "!" becomes a space, then split away
    assert vqa_accuracy("No", answers) == pytest.approx(0.3)


def test_punctuation_is_deleted_next_to_spaces_and_spaced_out_elsewhere():
    assert strip_punctuation("red/blue") == "red blue"
    assert strip_punctuation("red, blue") == "red blue"  # ", " touches a space: deleted
    assert strip_punctuation("(hi) there") == " hi there"  # "(" touches no space: a space; ") " is deleted
    assert strip_punctuation("don't") == "don't" and strip_punctuation("10:30") == "10:30"  # not in the list
    assert vqa_accuracy("red blue", humans(("red/blue", 3), ("purple", 7))) == pytest.approx(0.9)
    assert vqa_accuracy("red-blue", humans(("red blue", 3), ("purple", 7))) == pytest.approx(0.9)


def test_digits_with_commas_and_periods():
    assert strip_punctuation("1,000") == "1000"  # digit-comma-digit: every mark deleted
    assert strip_punctuation("1,000 red/blue") == "1000 redblue"  # ... including the slash
    assert strip_punctuation("3.5") == "3.5" and strip_punctuation("5.") == "5" and strip_punctuation("a.b") == "ab"
    assert strip_punctuation("." * 40) == "." * 8  # the official script's count=re.UNICODE removes at most 32
    assert vqa_accuracy("1,000", humans(("1000", 3), ("10", 7))) == pytest.approx(0.9)
    assert vqa_accuracy("3.5.", humans(("3.5", 3), ("4", 7))) == pytest.approx(0.9)
    assert vqa_accuracy("35", humans(("3.5", 3), ("4", 7))) == 0.0


def test_number_words_articles_and_contractions():
    assert normalise_words("The Two dogs") == "2 dogs"
    assert vqa_accuracy("two", humans(("2", 2), ("two", 2), ("3", 6))) == 1.0  # four humans say 2
    assert vqa_accuracy("none", humans(("0", 3), ("1", 7))) == pytest.approx(0.9)  # none -> 0 (GT-Vision-Lab/VQA#7)
    assert vqa_accuracy("eleven", humans(("11", 3), ("1", 7))) == 0.0  # only zero..ten are mapped
    assert vqa_accuracy("a cat", humans(("the cat", 3), ("dog", 7))) == pytest.approx(0.9)
    assert vqa_accuracy("dont", humans(("don't", 3), ("no", 7))) == pytest.approx(0.9)
    assert vqa_accuracy("Im", humans(("I'm", 3), ("x", 7))) == 0.0  # lower-cased before lookup: "Im" key never hits
    assert CONTRACTIONS["somebody'd"] == "somebodyd" and len(CONTRACTIONS) == 120


def test_evalai_processor_normalises_every_answer():
    ten = humans(("yes", 10))
    assert vqa_accuracy("Yes.", ten, processor="evalai") == 1.0  # vs 0.0 with the official rule
    assert evalai_normalise("What's 1,000?") == "what 's 1000"
    assert evalai_normalise("A") == ""  # the article is dropped (haotian-liu/LLaVA#618)
    assert vqa_accuracy("A", humans(("a", 10)), processor="evalai") == 1.0
    assert vqa_accuracy("A", humans(("a", 10))) == 0.0
    assert vqa_accuracy("cat", humans(("Cat", 1), ("dog", 9)), processor="evalai") == pytest.approx(0.3)


def test_vqa_accuracy_rejects_bad_input():
    with pytest.raises(ValueError, match="processor"):
        vqa_accuracy("yes", ["yes"], processor="lenient")
    with pytest.raises(ValueError, match="non-empty"):
        vqa_accuracy("yes", [])
    with pytest.raises(ValueError, match="non-empty"):
        vqa_accuracy("yes", "yes")


def test_gqa_exact_match_after_llava_conversion():
    assert gqa_accuracy(["Yes.", "left ", "Left side"], ["yes", "left", "left"]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="pair up"):
        gqa_accuracy(["yes"], ["yes", "no"])


def test_pope_metrics_as_llava_eval_pope():
    predictions = ["Yes", "No, there is not.", "yes. No way", "There is no dog", "I do not think so", "Yes, there is"]
    labels = ["yes", "no", "no", "yes", "no", "yes"]
    m = pope_metrics(predictions, labels)
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (2, 1, 2, 1)
    assert m["accuracy"] == pytest.approx(4 / 6) and m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3) and m["f1"] == pytest.approx(2 / 3)
    assert m["yes_ratio"] == pytest.approx(0.5)  # of the predictions, not the labels


def test_pope_answer_quirks_and_degenerate_cases():
    assert pope_answer("No.") == "no" and pope_answer("not really") == "no"
    assert pope_answer("NO") == "yes" and pope_answer("Not sure") == "yes"  # only "No", "no", "not" are read as no
    assert pope_answer("Yes. There is no cat.") == "yes"  # first sentence only
    none_yes = pope_metrics(["no", "no"], ["yes", "no"])
    assert none_yes["precision"] == 0.0 and none_yes["f1"] == 0.0 and none_yes["accuracy"] == 0.5
    with pytest.raises(ValueError, match="'yes' or 'no'"):
        pope_metrics(["yes"], ["Yes"])


@pytest.mark.parametrize("prediction, expected", [
    ("B", "B"), ("(C)", "C"), ("B.", "B"), ("B. blue", "B"), ("C) green", "C"), ("The answer is D.", "D"),
    ("I think it is C", "C"), ("A cat is on the mat", "B"),  # "A" as an article; "cat" names option B
    ("blue", "C"), ("red and blue", None), ("E", None), ("", None),
])
def test_answer_letter_extraction(prediction, expected):
    options = {"A": "red", "B": "cat", "C": "blue", "D": "green"}
    assert extract_choice(prediction, options) == expected


def test_choice_and_circular_accuracy():
    options = [{"A": "x", "B": "y"}] * 3
    assert choice_accuracy(["A", "B.", "y"], ["A", "A", "B"], options) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="not one of the option letters"):
        choice_accuracy(["A"], ["C"], options[:1])
    assert circular_accuracy({1: [True, True, True, True], 2: [True, False], 3: [True]}) == pytest.approx(2 / 3)


def test_bootstrap_interval_covers_the_mean_and_resamples_whole_groups():
    from sparsecut.evaluation.metrics import bootstrap_interval

    correct = [True] * 60 + [False] * 40
    low, high = bootstrap_interval(correct, seed=1)
    assert low < 0.6 < high and 0.08 < high - low < 0.3  # binomial: +-1.96 * sqrt(.24 / 100) = +-0.096
    assert bootstrap_interval(correct, seed=1) == (low, high)  # deterministic for a seed
    # ten groups of ten identical answers: only ten independent draws, so a wider interval than 100 single items
    grouped = bootstrap_interval(correct, groups=[i // 10 for i in range(100)], seed=1)
    assert grouped[1] - grouped[0] > 1.5 * (high - low)
    shuffled = list(range(100))
    random.Random(0).shuffle(shuffled)
    assert bootstrap_interval([correct[i] for i in shuffled], groups=[i // 10 for i in shuffled], seed=1) == grouped
    assert bootstrap_interval([True] * 5) == (1.0, 1.0)
    with pytest.raises(ValueError, match="group keys"):
        bootstrap_interval(correct, groups=[0] * 99)
    with pytest.raises(ValueError, match="at least one"):
        bootstrap_interval([])
