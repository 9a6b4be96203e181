"""app.engine without Gradio: answers equal the model's own generate, stats, compare, every view for every pattern."""

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from conftest import one_torch_thread
from test_app_checkpoints import MEMBERS, export_tiny_family

from analysis.flops import forward_flops
from app.engine import Engine, prefill_flops
from app.examples import CASES, DEFAULT_DIR, load_examples, write_examples
from app.request_checks import MAX_NEW_TOKENS, Decoding, RequestError
from app.streaming import stream_generate
from sparsecut.config import pattern_config
from sparsecut.evaluation.generation import answer as library_answer

QUESTION = "What is written in the image?"


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    root = tmp_path_factory.mktemp("app-engine")
    with one_torch_thread(), pytest.MonkeyPatch.context() as patch:
        patch.setenv("SPARSECUT_ASSETS", str(root / "assets"))
        patch.setenv("SPARSECUT_CACHE", str(root / "cache"))
        export_tiny_family(str(root / "assets"))
        yield Engine.embedded(max_image_mb=1)


@pytest.fixture(scope="module")
def image():
    return os.path.join(DEFAULT_DIR, "small-text-digits.png")


def reference(engine, name, image, question, shortcuts=None, high_res=None, max_new_tokens=6):
    """The model's own generate on the processor's inputs: (text, new tokens, input_ids)."""
    loaded = engine.load(name)
    processor, model = loaded.processor, loaded.model
    use_high = model.config.high_res if high_res is None else high_res
    batch = processor(images=[Image.open(image)], text=[processor.prompt(question)], high_res=use_high)
    out = model.generate(**batch, shortcuts=shortcuts, high_res=use_high, max_new_tokens=max_new_tokens,
                         do_sample=False, pad_token_id=processor.tokenizer.pad_token_id)
    new = out[0, batch["input_ids"].shape[1]:]
    return processor.tokenizer.decode(new, skip_special_tokens=True).strip(), new.numel(), batch["input_ids"]


@pytest.mark.parametrize("name, shortcuts, high_res", [
    ("sparsecut-tiny", None, None),
    ("sparsecut-tiny", "5:1,1:6", False),
    ("sparsecut-tiny", "3:3", True),
    ("sparsecut-tiny-dense-bottom", "6:1,4:3,1:6", False),
    ("sparsecut-tiny-sparse-top", None, False),
    ("llava-tiny", None, None),
])
def test_answers_equal_the_models_own_generate(engine, image, name, shortcuts, high_res):
    updates = list(engine.answer(image, QUESTION, name, shortcuts, high_res, Decoding(max_new_tokens=6)))
    final = updates[-1]
    text, new_tokens, input_ids = reference(engine, name, image, QUESTION, shortcuts, high_res)
    assert final.done and not any(u.done for u in updates[:-1])
    assert final.text == text and final.new_tokens == new_tokens
    assert final.context_tokens == input_ids.shape[1]
    assert final.visual_tokens == int((input_ids == engine.load(name).model.config.image_token_id).sum())
    assert final.ablation == (shortcuts is not None)
    assert all(u.latency_s <= final.latency_s for u in updates) and final.first_text_s <= final.latency_s


def test_the_default_request_equals_the_evaluation_librarys_answer(engine, image):
    loaded = engine.load("sparsecut-tiny")
    expected = library_answer(loaded.model, loaded.processor, [image], [QUESTION], max_new_tokens=8)
    assert list(engine.answer(image, QUESTION, decoding=Decoding(max_new_tokens=8)))[-1].text == expected[0]


def test_compare_streams_both_answers_each_with_its_own_settings(engine, image):
    decoding = Decoding(max_new_tokens=6)
    pairs = list(engine.compare(image, QUESTION, "sparsecut-tiny", "5:1", False, decoding))
    ours, theirs = pairs[-1]
    assert ours.done and theirs.done and ours.model == "sparsecut-tiny" and theirs.model == "llava-tiny"
    assert ours.text == reference(engine, "sparsecut-tiny", image, QUESTION, "5:1", False)[0]
    assert theirs.text == reference(engine, "llava-tiny", image, QUESTION)[0]
    assert (ours.shortcuts, ours.ablation, theirs.shortcuts, theirs.ablation) == ("5:1", True, "5:1", False)
    assert all(a is None or a.model in ("sparsecut-tiny", "llava-tiny") for pair in pairs for a in pair)


def test_visual_context_and_flops_follow_the_request(engine, image):
    def final(**kwargs):
        return list(engine.answer(image, QUESTION, decoding=Decoding(max_new_tokens=2), **kwargs))[-1]

    high, low, subset = final(), final(high_res=False), final(shortcuts="5:1", high_res=True)
    config = engine.load("sparsecut-tiny").model.config
    assert high.visual_tokens == low.visual_tokens == config.image_seq_length  # fused: the context does not grow
    expected = forward_flops(pattern_config(config, shortcuts=[[5, 1]], high_res=True), "sparsecut",
                             subset.context_tokens - config.image_seq_length)
    assert subset.prefill_flops == expected["total"] - expected["lm_head"] + expected["lm_head"] // expected["context_length"]
    assert high.prefill_flops > low.prefill_flops and high.prefill_flops > subset.prefill_flops
    baseline = engine.load("llava-tiny").model.config
    assert prefill_flops(baseline, baseline.shortcut_pairs, False, 100) < low.prefill_flops
    assert high.stats()["prefill"].endswith("FLOPs") and "text" not in high.stats()


@pytest.mark.parametrize("name", list(MEMBERS)[:-1])
def test_every_view_returns_data_for_every_pattern(engine, image, name):
    config = engine.load(name).model.config
    shortcuts = len(config.shortcut_pairs)
    for view, options, rows in [
        ("contributions", {}, shortcuts),
        ("cross_attention", {"head": 1, "patch": (0, 1)}, shortcuts),
        ("llm_attention", {"layer": 2}, config.text_config.num_hidden_layers),
        ("attributions", {"steps": 2}, 2 if config.high_res else 1),  # one row per view (low-res, high-res)
        ("ablation", {}, None),
    ]:
        result = engine.analyse(view, image, QUESTION, name, max_new_tokens=3, **options)
        assert len(result.figure.data) > 0 and result.summary, (name, view)
        assert len(result.table) == rows if rows is not None else len(result.table) > shortcuts, (name, view)
    diagram = engine.diagram(name)
    assert [(r["vit_layer"], r["llm_layer"]) for r in diagram.table] == config.shortcut_pairs


def test_views_take_the_requests_subset_and_options(engine, image):
    result = engine.analyse("contributions", image, QUESTION, "sparsecut-tiny", "5:1,1:6", max_new_tokens=3)
    assert [row["shortcut"] for row in result.table] == ["5:1", "1:6"]
    picked = engine.analyse("cross_attention", image, QUESTION, "sparsecut-tiny", shortcut="3:3", head=0, patch=(1, 2),
                            max_new_tokens=3)
    assert "patch (1, 2)" in picked.summary and picked.image.shape[:2] == (32, 32)  # 2x2 crops of 16 px, stitched
    assert "patch (1, 2)" in picked.figure.layout.title.text and "head 0" in picked.figure.layout.title.text
    for method in ("occlusion", "shortcut attribution"):
        assert engine.analyse("attributions", image, QUESTION, method=method, steps=2, max_new_tokens=3).table
    subset = engine.diagram("sparsecut-tiny", "5:1,1:6")
    assert "inference-time subset" in subset.figure.layout.title.text and "trained with 5:1,3:3,1:6" in subset.summary
    with pytest.raises(RequestError, match="Head 9 is out of range"):
        engine.analyse("llm_attention", image, QUESTION, head=9, max_new_tokens=3)
    with pytest.raises(RequestError, match="Shortcut '6:1' is not on in this request"):
        engine.analyse("cross_attention", image, QUESTION, shortcut="6:1", max_new_tokens=3)
    with pytest.raises(RequestError, match="Unknown view 'nope'"):
        engine.analyse("nope", image, QUESTION)


def test_bad_requests_are_refused_with_their_reason(engine, image, tmp_path):
    with pytest.raises(RequestError, match="question contains the image placeholder"):
        engine.answer(image, "What is <image> here?")
    with pytest.raises(RequestError, match="Max new tokens must be a whole number in 1..512"):
        Decoding(max_new_tokens=MAX_NEW_TOKENS + 1)
    with pytest.raises(RequestError, match="Temperature must be a number"):
        Decoding(sample=True, temperature=None)
    assert Decoding(sample=True, temperature=0.5, top_p=0.9).generate_kwargs() == {
        "do_sample": True, "temperature": 0.5, "top_p": 0.9, "max_new_tokens": 32}
    assert Decoding(temperature=0.5).generate_kwargs() == {"do_sample": False, "max_new_tokens": 32}
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "sparsecut"}')
    served = Engine(["sparsecut-tiny", str(broken)], "llava-tiny")
    with pytest.raises(RequestError, match="Model 'broken' failed to load from .*broken"):
        served.answer(image, QUESTION, "broken")
    assert list(served.answer(image, QUESTION, decoding=Decoding(max_new_tokens=2)))[-1].done  # still serving


def test_closing_a_stream_stops_its_generation(engine, image):
    loaded = engine.load("sparsecut-tiny")
    processor = loaded.processor
    batch = dict(processor(images=[Image.open(image)], text=[processor.prompt(QUESTION)]))
    settings = {"max_new_tokens": 400, "min_new_tokens": 400, "do_sample": False, "pad_token_id": 0}
    result = {}
    stream = stream_generate(loaded.model, processor.tokenizer, batch, settings, result)
    next(stream)  # the first words
    stream.close()
    for thread in threading.enumerate():
        if thread.name == "sparsecut-generate":
            thread.join(timeout=30)
    assert result["ids"].shape[1] - batch["input_ids"].shape[1] < 400


def test_examples_are_deterministic_and_the_committed_ones_match(tmp_path):
    entries = write_examples(str(tmp_path))
    committed = load_examples()
    assert [c.name for c in committed] == [case.name for case in CASES] == [e["name"] for e in entries]
    assert {c.kind for c in committed} == {"small text", "unanswerable", "cluttered scene"}
    for case, entry in zip(committed, entries):
        assert (tmp_path / entry["file"]).read_bytes() == Path(case.path).read_bytes()
        assert case.question == entry["question"] and case.answer == entry["answer"]
        assert Image.open(case.path).size == (96, 96)
    assert (tmp_path / "README.md").read_text() == (Path(DEFAULT_DIR) / "README.md").read_text()


def test_the_latency_bench_reports_every_case_studys_answers_as_the_engine_gives_them(engine):
    from app.bench import format_report, run
    from sparsecut.benchmarking import machine

    with one_torch_thread():
        result = run(engine, repeats=1, warmup=0, max_new_tokens=4)
    cases = load_examples()
    assert [entry["case"] for entry in result["answers"]] == [case.name for case in cases]
    for entry, case in zip(result["answers"], cases):
        ours, theirs = list(engine.compare(case.path, case.question, decoding=Decoding(max_new_tokens=4)))[-1]
        assert (entry["sparsecut"], entry["baseline"]) == (ours.text, theirs.text)
        assert entry["sparsecut_right"] == case.is_right(ours.text) and entry["right"] == case.answer
    assert set(result["latency"]) == {"both", "sparsecut", "baseline"}
    report = format_report({**result, "machine": machine(torch.device(engine.device))})
    assert f"| {cases[0].name} | {cases[0].answer} | {result['answers'][0]['sparsecut']} (" in report
    assert f"right: SparseCut {sum(e['sparsecut_right'] for e in result['answers'])} / {len(cases)}" in report


def test_the_breakdown_times_one_forward_per_new_token_and_its_phases_add_up(engine):
    from app.bench import PHASES, _phases, breakdown, format_breakdown, vision_parts
    from sparsecut.benchmarking import ForwardTimes

    case, name = load_examples()[0], engine.models[0]
    model = engine.load(name).model
    with one_torch_thread():
        with ForwardTimes(model, vision_parts(model), torch.device("cpu")) as timer:
            started = time.perf_counter()
            answer = list(engine.answer(case.path, case.question, name, decoding=Decoding(max_new_tokens=4)))[-1]
            ended = time.perf_counter()
        phases = breakdown(engine, repeats=1, max_new_tokens=4)
    assert len(timer.calls) == answer.new_tokens  # the prefill, then one call per new token after the first
    assert timer.part_seconds[0]["tower"] > 0 and all(part["tower"] == 0 for part in timer.part_seconds[1:])
    assert not model._forward_hooks and not model._forward_pre_hooks  # removed on exit
    row = _phases(timer, started, ended)
    assert sum(row[phase] for phase in PHASES) == pytest.approx(row["total"]) and row["decode_steps"] == answer.new_tokens - 1
    assert set(phases) == {"sparsecut", "baseline"} and all(phases[kind]["vision"] > 0 for kind in phases)
    report = format_breakdown(phases, {"sparsecut": name, "baseline": engine.baseline})
    assert all(f"| {phase} | " in report for phase in PHASES)


def test_the_stats_summary_aligns_both_answers_and_their_ratios():
    from app.engine import Answer
    from app.ui import stats_summary

    common = dict(done=True, shortcuts="1:1", ablation=False, high_res=False, context_tokens=40, visual_tokens=16)
    ours = Answer("sparsecut-tiny", "3", latency_s=0.1944, first_text_s=0.05, new_tokens=2, prefill_flops=3_000_000_000, **common)
    theirs = Answer("llava-tiny", "2", latency_s=0.2, first_text_s=None, new_tokens=None, prefill_flops=2_000_000_000, **common)
    rows = stats_summary(ours, theirs).splitlines()
    assert rows[0] == "| | sparsecut-tiny | llava-tiny | SparseCut / LLaVA |" and rows[1] == "|---|---:|---:|---:|"
    assert "| latency | 194 ms | 200 ms | 0.97x |" in rows and "| prefill GFLOPs | 3 | 2 | 1.50x |" in rows
    assert "| time to first words | 50 ms | – |  |" in rows and "| new tokens | 2 | – |  |" in rows  # still streaming
    alone = stats_summary(ours).splitlines()
    assert alone[0] == "| | sparsecut-tiny |" and "| visual tokens in the context | 16 |" in alone
    assert stats_summary(None) == ""


def test_a_case_study_is_recognised_by_its_pixels_and_question_and_its_answers_marked():
    from PIL import Image

    from app.engine import Answer
    from app.examples import find_case, load_examples
    from app.ui import stats_summary

    cases = load_examples()
    case = cases[0]
    with Image.open(case.path) as picture:
        image = picture.convert("RGB")
    assert find_case(cases, image, case.question + "\n") is case  # whatever file carries the same pixels
    assert find_case(cases, image, "How many circles are there?") is None
    assert find_case(cases, image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), case.question) is None
    common = dict(latency_s=0.1, first_text_s=0.05, new_tokens=2, prefill_flops=10**9, shortcuts="1:1", ablation=False,
                  high_res=False, context_tokens=40, visual_tokens=16)
    right = Answer("sparsecut-tiny", f" {case.answer.upper()}.", done=True, **common)
    streaming = Answer("llava-tiny", "unans", done=False, **common)
    rows = stats_summary(right, streaming, case).splitlines()
    assert rows[2] == f"| answer (right: {case.answer}) | {case.answer.upper()}. ✓ right | … |  |"
    wrong = Answer("llava-tiny", "unanswerable" if case.answer != "unanswerable" else "7", done=True, **common)
    assert "✗ wrong" in stats_summary(wrong, case=case).splitlines()[2]


def test_what_the_model_sees_is_its_processors_views_de_normalised(engine, image):
    from app.views import side_by_side

    loaded = engine.load("sparsecut-tiny")
    views = engine.model_views(image, "sparsecut-tiny", high_res=True)
    grid, side = loaded.model.config.high_res_grid, loaded.processor.image_size
    assert views.shape == (1 + grid * grid, side, side, 3) and views.dtype == np.uint8
    normalised = loaded.processor.image_views(image, True)
    processor = loaded.processor.image_processor
    back = (views.astype(np.float32) / 255 - np.array(processor.image_mean)) / np.array(processor.image_std)
    assert np.abs(back.transpose(0, 3, 1, 2) - normalised.numpy()).max() < 0.5 / 255 / min(processor.image_std) + 1e-5
    assert engine.model_views(image, "sparsecut-tiny", high_res=False).shape == (1, side, side, 3)
    with pytest.raises(RequestError, match="trained without high-res"):
        engine.model_views(image, "sparsecut-tiny-lowres", high_res=True)
    picture = side_by_side(views, grid, scale=2, gap=4)
    cell = 2 * side
    assert picture.shape == (grid * cell + (grid - 1) * 4, 2 * (grid * cell + (grid - 1) * 4) + 8, 3)
    assert np.array_equal(picture[:cell, -cell:], views[grid].repeat(2, 0).repeat(2, 1))  # the top-right crop
    assert np.array_equal(picture[0, 0], views[0, 0, 0]) and (side_by_side(views[:1], grid, scale=3).shape == (3 * side, 3 * side, 3))
