"""The app's API through gradio_client against the app on 127.0.0.1: ask, compare, every view, 8 concurrent mixed
requests equal to sequential ones, and bad inputs refused one by one with their reason while the server keeps going."""

import json
import os
import socket
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image
from conftest import one_torch_thread
from test_app_checkpoints import export_tiny_family

from app.engine import Engine
from app.examples import DEFAULT_DIR
from app.request_checks import Decoding
from app.ui import build_demo, launch

QUESTION = "What is written in the image?"
IMAGE = os.path.join(DEFAULT_DIR, "small-text-digits.png")
GREEDY = (False, 1.0, 1.0)  # sample, temperature, top-p
pytestmark = pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword).*")  # gradio's own pandas use


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def tiny_family_served(root, concurrency: int = 8, extra_models=(), max_image_mb: float = 1.0, shipped: bool = False):
    """The app for a tiny random family (or, ``shipped``, the family in assets/) plus ``extra_models`` on
    127.0.0.1: yields (engine, url)."""
    with one_torch_thread(), pytest.MonkeyPatch.context() as patch:
        patch.setenv("SPARSECUT_CACHE", str(root / "cache"))
        if shipped:
            patch.delenv("SPARSECUT_ASSETS", raising=False)
        else:
            patch.setenv("SPARSECUT_ASSETS", str(root / "assets"))
            export_tiny_family(str(root / "assets"))
        engine = Engine.embedded(max_image_mb=max_image_mb)
        engine = Engine([*engine.models, *extra_models], engine.baseline, max_image_mb=max_image_mb)
        demo = build_demo(engine, concurrency=concurrency)
        _, url, _ = launch(demo, server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
        try:
            yield engine, url
        finally:
            demo.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("app-api")
    broken = root / "broken-checkpoint"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "sparsecut"}')
    with tiny_family_served(root, extra_models=[str(broken)], max_image_mb=0.1) as (engine, url):
        yield engine, Client(url, verbose=False, analytics_enabled=False), root


def ask_args(model="sparsecut-tiny", shortcuts="", high_res=True, max_new_tokens=6, compare=False, image=IMAGE,
             question=QUESTION):
    return (handle_file(image) if image else None, question, model, shortcuts, high_res, *GREEDY, max_new_tokens, compare)


def engine_text(engine, model, shortcuts, high_res, max_new_tokens=6):
    answers = engine.answer(IMAGE, QUESTION, model, shortcuts or None, high_res, Decoding(max_new_tokens=max_new_tokens))
    return list(answers)[-1].text


def test_ask_streams_the_sparsecut_answer_with_its_stats(served):
    engine, client, _ = served
    job = client.submit(*ask_args(shortcuts="5:1,1:6"), api_name="/ask")
    final = job.result()
    text, stats, baseline, baseline_stats, summary = final
    assert text == engine_text(engine, "sparsecut-tiny", "5:1,1:6", True)
    assert stats["done"] and stats["ablation"] and stats["shortcuts"] == "5:1,1:6" and stats["high_res"]
    assert stats["visual_tokens"] == 16 and stats["prefill_flops"] > 0 and stats["latency_s"] > 0
    assert (baseline, baseline_stats) == ("", {"comparison": "off"})
    assert f"| latency | {1000 * stats['latency_s']:,.0f} ms |" in summary and "SparseCut / LLaVA" not in summary
    assert len(job.outputs()) >= 1 and job.outputs()[-1][0] == text


def test_compare_gives_the_baselines_answer_beside(served):
    engine, client, _ = served
    text, stats, baseline, baseline_stats, summary = client.predict(*ask_args(high_res=False, compare=True), api_name="/ask")
    assert text == engine_text(engine, "sparsecut-tiny", None, False)
    assert baseline == engine_text(engine, "llava-tiny", None, None)
    assert baseline_stats["model"] == "llava-tiny" and not baseline_stats["high_res"] and baseline_stats["done"]
    ratio = stats["prefill_flops"] / baseline_stats["prefill_flops"]
    assert summary.splitlines()[0] == "| | sparsecut-tiny | llava-tiny | SparseCut / LLaVA |"
    assert f"| prefill GFLOPs | {stats['prefill_flops'] / 1e9:.3g} | {baseline_stats['prefill_flops'] / 1e9:.3g} | {ratio:.2f}x |" in summary


def test_a_case_study_asked_gets_its_answers_marked_right_or_wrong(served):
    from app.examples import load_examples

    _, client, _ = served
    case = load_examples()[0]
    text, _, baseline, _, summary = client.predict(*ask_args(image=case.path, question=case.question, compare=True),
                                                   api_name="/ask")
    marks = [("✓ right" if case.is_right(answer) else "✗ wrong") for answer in (text, baseline)]
    assert summary.splitlines()[2] == f"| answer (right: {case.answer}) | {text.strip()} {marks[0]} | {baseline.strip()} {marks[1]} |  |"
    *_, plain = client.predict(*ask_args(compare=True), api_name="/ask")  # not a case study: no verdict row
    assert "right:" not in plain
    seen = client.predict(handle_file(case.path), "sparsecut-tiny", True, api_name="/model_views")
    assert np.asarray(Image.open(seen)).shape[1] > 2 * np.asarray(Image.open(seen)).shape[0]  # low-res | crops


def _plot_data(plot) -> list:
    assert plot["type"] == "plotly"
    return json.loads(plot["plot"])["data"]


def test_each_view_returns_a_plot_a_summary_and_a_table(served):
    _, client, _ = served
    request = (handle_file(IMAGE), QUESTION, "sparsecut-tiny", "", True, 3)
    calls = {
        "/contributions": (*request, True),
        "/cross_attention": (*request, "3:3", "1", 0, 1),
        "/llm_attention": (*request, 2, "mean"),
        "/attributions": (*request, "integrated gradients", 2),
        "/ablation": request,
        "/diagram": ("sparsecut-tiny-sparse-top", ""),
    }
    for endpoint, args in calls.items():
        outputs = client.predict(*args, api_name=endpoint)
        plot, *rest = outputs
        summary, table = rest[-2], rest[-1]
        assert _plot_data(plot) and summary and table["data"] and table["headers"], endpoint
    seen = np.asarray(Image.open(client.predict(*calls["/cross_attention"], api_name="/cross_attention")[1]))
    assert seen.shape[:2] == (256, 256)  # the image as the model sees it (2x2 crops of 16 px), enlarged 8x to click on
    assert (seen[::8, ::8].repeat(8, 0).repeat(8, 1) == seen).all()
    note = client.predict("sparsecut-tiny-dense-bottom", api_name="/model_info")[0]
    assert "dense-bottom" in note and "6:1,5:2,4:3,3:4,2:5,1:6" in note


def test_eight_concurrent_mixed_requests_equal_their_sequential_results(served):
    _, client, _ = served
    requests = [
        ask_args("sparsecut-tiny", "", True), ask_args("sparsecut-tiny", "", False),
        ask_args("sparsecut-tiny", "3:3", True), ask_args("sparsecut-tiny-lowres", "", False),
        ask_args("sparsecut-tiny-dense-bottom", "6:1,2:5", False), ask_args("sparsecut-tiny-sparse-top", "", True),
        ask_args("sparsecut-tiny", "5:1", False, compare=True), ask_args("sparsecut-tiny-sparse-top", "5:7", False),
    ]
    sequential = [client.predict(*args, api_name="/ask") for args in requests]
    jobs = [client.submit(*args, api_name="/ask") for args in requests]
    with ThreadPoolExecutor(8) as pool:
        concurrent = list(pool.map(lambda job: job.result(), jobs))
    def key(out):
        return out[0], out[1]["shortcuts"], out[1]["high_res"], out[2]

    assert [key(o) for o in concurrent] == [key(o) for o in sequential]
    assert len({key(o) for o in sequential}) == 8  # the settings really differ


def test_bad_inputs_are_refused_with_their_reason_and_the_server_keeps_serving(served):
    _, client, root = served
    (root / "not-an-image.png").write_bytes(b"this is text, not a PNG")
    (root / "truncated.png").write_bytes(Path(IMAGE).read_bytes()[:200])
    noise = np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)
    Image.fromarray(noise).save(root / "large.png")  # ~270 KB, over the 0.1 MB limit of this server
    bad = [
        (ask_args(image=None), "No image: upload or paste one"),
        (ask_args(image=str(root / "not-an-image.png")), "^The uploaded image 'not-an-image.png' is not an image Pillow can read"),
        (ask_args(image=str(root / "truncated.png")), "is truncated or corrupt"),
        (ask_args(image=str(root / "large.png")), r"accepts images up to 0.1 MB \(--max-image-mb\)"),
        (ask_args(question="   "), "The question is empty"),
        (ask_args(question="why? " * 201), "characters long; the limit is 1,000"),
        (ask_args(shortcuts="deep ones"), r"Custom shortcuts must be written i:j,\.\.\."),
        (ask_args(shortcuts="4:4"), r"Shortcut\(s\) \[\(4, 4\)\] are not in this model"),
        (ask_args(model="sparsecut-huge"), "Unknown model 'sparsecut-huge'"),
        (ask_args(model="broken-checkpoint"), "Model 'broken-checkpoint' failed to load"),
        (ask_args(model="sparsecut-tiny-lowres", high_res=True), "trained without high-res views"),
        (ask_args(max_new_tokens=0), "Max new tokens must be a whole number in 1..512"),
    ]
    for args, reason in bad:
        with pytest.raises(AppError, match=reason) as refused:
            client.predict(*args, api_name="/ask")
        if "image" in reason:  # an upload is named by its file name, never by the server's temporary path
            assert "gradio" not in str(refused.value).lower() and str(root) not in str(refused.value)
    with pytest.raises(AppError, match="Head 7 is out of range"):
        client.predict(handle_file(IMAGE), QUESTION, "sparsecut-tiny", "", True, 3, 2, "7", api_name="/llm_attention")
    text, stats, _, _, _ = client.predict(*ask_args(), api_name="/ask")
    assert stats["done"] and isinstance(text, str)


def test_the_readme_api_example_runs_as_written(served):
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    code = next(block for block in readme.split("```python\n")[1:] if "from gradio_client import" in block).split("```")[0]
    _, client, _ = served
    names = {}
    exec(code.replace('Client("http://127.0.0.1:7860/")', "client"), {"client": client}, names)
    assert names["ours"] and names["our_stats"]["done"] and names["their_stats"]["model"] == "llava-tiny"
    assert "right: 63" in names["table"]  # the example is a case study: the table marks both answers


def test_the_short_answer_switch_appends_the_instruction_to_plain_questions_only():
    from app.request_checks import with_short_answer

    assert with_short_answer("How many circles are there? ") == (
        "How many circles are there?\nAnswer the question using a single word or phrase.")
    case = "What is written in the image?\nWhen the provided information is insufficient, respond with 'Unanswerable'."
    assert with_short_answer(case) == case and with_short_answer("") == ""
