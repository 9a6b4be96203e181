"""Every named pattern against hand-written expectations (paper Table 3 / Fig. 2, §4.1 defaults)."""

import pytest

from sparsecut.patterns import PATTERN_NAMES, describe, format_pattern, make_pattern, parse_pattern_string, summarize

VIT = [23, 20, 17, 14, 11, 8, 5, 2]  # every 3rd of 24, penultimate deepest
UNIFORM = {
    32: [1, 5, 9, 13, 17, 21, 25, 29],  # every 4th
    36: [1, 5, 10, 14, 19, 23, 28, 32],  # floor(4.5 k) + 1
    40: [1, 6, 11, 16, 21, 26, 31, 36],  # every 5th
}
DENSE_UNIFORM = {
    32: [1, 2, 3, 5, 6, 7, 9, 10, 11, 13, 14, 15, 17, 18, 19, 21, 22, 23, 25, 26, 27, 29, 30, 31],
    36: [1, 2, 4, 5, 7, 8, 10, 11, 13, 14, 16, 17, 19, 20, 22, 23, 25, 26, 28, 29, 31, 32, 34, 35],
    40: [1, 2, 4, 6, 7, 9, 11, 12, 14, 16, 17, 19, 21, 22, 24, 26, 27, 29, 31, 32, 34, 36, 37, 39],
}
DENSE_VIT = list(range(24, 0, -1))  # every ViT layer, deepest first


def expected(llm_layers):
    top = list(range(llm_layers - 7, llm_layers + 1))
    return {
        "llava": [(23, 1)],
        "sparse-uniform": list(zip(VIT, UNIFORM[llm_layers])),
        "sparse-bottom": list(zip(VIT, [1, 2, 3, 4, 5, 6, 7, 8])),
        "sparse-top": list(zip(VIT, top)),
        "sparse-reverse-uniform": list(zip(VIT[::-1], UNIFORM[llm_layers])),
        "dense-uniform": list(zip(DENSE_VIT, DENSE_UNIFORM[llm_layers])),
        "dense-bottom": list(zip(DENSE_VIT, range(1, 25))),
        "deepstack": [(23, 1), (5, 2), (11, 3), (17, 4)],
    }


@pytest.mark.parametrize("llm_layers", [32, 36, 40])
@pytest.mark.parametrize("name", PATTERN_NAMES)
def test_named_patterns(name, llm_layers):
    assert make_pattern(name, 24, llm_layers) == sorted(expected(llm_layers)[name])


def test_paper_examples():
    assert make_pattern("sparse-uniform", 24, 32)[-3:] == [(17, 9), (20, 5), (23, 1)]
    assert make_pattern("23:1,20:5,17:9", 24, 32) == [(17, 9), (20, 5), (23, 1)]
    assert make_pattern(" 23 : 1 , 20:5 ,", 24, 32) == [(20, 5), (23, 1)]


def test_num_shortcuts_and_small_models():
    assert make_pattern("sparse-uniform", 24, 32, num_shortcuts=4) == sorted([(23, 1), (17, 9), (11, 17), (5, 25)])
    assert make_pattern("sparse-uniform", 24, 36, num_shortcuts=6) == sorted(
        [(23, 1), (19, 7), (15, 13), (11, 19), (7, 25), (3, 31)]
    )
    # a 6-layer ViT and 8-layer LLM: default count is capped at L_v - 1
    assert make_pattern("sparse-uniform", 6, 8) == sorted([(5, 1), (4, 2), (3, 4), (2, 5), (1, 7)])
    assert make_pattern("deepstack", 24, 32, num_shortcuts=2) == [(11, 2), (23, 1)]


@pytest.mark.parametrize(
    "args, message",
    [
        (("nonsense", 24, 32), "expected one of llava"),
        (("23-1", 24, 32), "explicit list such as"),
        (("", 24, 32), "Unknown shortcut pattern"),
        (("25:1", 24, 32), "ViT layer 25 is out of range"),
        (("0:1", 24, 32), "ViT layer 0 is out of range"),
        (("23:33", 24, 32), "LLM layer 33 is out of range"),
        (("23:1,23:1", 24, 32), "appears twice"),
        (("sparse-uniform", 24, 32, 24), "between 1 and 23"),
        (("dense-uniform", 24, 32, 8), "every ViT layer"),
        (("llava", 24, 32, 2), "exactly one shortcut"),
        (("sparse-top", 24, 6, 8), "only 6"),
        (("23:1", 24, 32, 3), "named patterns only"),
    ],
)
def test_invalid_patterns_say_what_is_allowed(args, message):
    with pytest.raises(ValueError, match=message):
        make_pattern(*args)


def test_describe_states_order_distribution_density():
    text = describe(make_pattern("sparse-uniform", 24, 32), 24, 32)
    assert "U-shape" in text and "uniformly" in text and "8/24 = 0.33 (sparse)" in text
    assert "aligned-depth" in describe(make_pattern("sparse-reverse-uniform", 24, 32), 24, 32)
    assert "top layers" in describe(make_pattern("sparse-top", 24, 32), 24, 32)
    assert "bottom layers" in describe(make_pattern("sparse-bottom", 24, 32), 24, 32)
    assert "(dense)" in describe(make_pattern("dense-uniform", 24, 32), 24, 32)
    assert summarize(make_pattern("llava", 24, 32), 24, 32).order == "single"
    assert summarize([(23, 1), (20, 9), (17, 5)], 24, 32).order == "mixed"


def test_format_round_trips():
    for name in PATTERN_NAMES:
        pairs = make_pattern(name, 24, 32)
        assert sorted(parse_pattern_string(format_pattern(pairs))) == pairs


def test_descriptions_use_the_right_article_before_a_layer_count():
    from sparsecut.patterns import describe

    assert "between an 8-layer ViT and a 30-layer LLM" in describe([(7, 1)], 8, 30)
    assert "between a 24-layer ViT and an 18-layer LLM" in describe([(23, 1)], 24, 18)
