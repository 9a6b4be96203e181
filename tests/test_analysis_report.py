"""analysis/: pattern diagrams for every pattern, and the report CLI on a saved tiny model."""

import json

import plotly.graph_objects as go
import pytest
from PIL import Image

from conftest import make_model, make_processor, randomise_gates, sparsecut_config
from test_analysis_views import one_thread, tiny_image  # noqa: F401  (one_thread: an autouse fixture)
from analysis.diagrams import pattern_diagram
from analysis.report import SECTIONS, main
from sparsecut import PATTERN_NAMES, make_pattern


@pytest.mark.parametrize("name", PATTERN_NAMES)
def test_diagram_draws_one_curve_per_shortcut_for_every_pattern(name, tmp_path):
    diagram = pattern_diagram(name, 24, 32)
    pairs = make_pattern(name, 24, 32)
    assert diagram.shortcuts == pairs and len(diagram.blocks()) == 24 + 32
    for (i, j), xs, ys in diagram.curves():  # from the top of ViT layer i to the bottom of LLM layer j
        assert ys[0] == pytest.approx((i - 0.15) / 24) and ys[-1] == pytest.approx((j - 1) / 32)
    fig = diagram.plotly()
    assert [t.name for t in fig.data if isinstance(t, go.Scatter)] == [f"{i}:{j}" for i, j in pairs]
    figure = diagram.matplotlib()
    assert len(figure.axes[0].lines) == len(pairs)
    figure.savefig(tmp_path / "diagram.png", dpi=40)
    assert Image.open(tmp_path / "diagram.png").size[0] > 0


def test_diagram_of_a_config_and_bad_patterns():
    config = sparsecut_config()
    diagram = pattern_diagram(config)
    assert (diagram.vision_layers, diagram.llm_layers, diagram.shortcuts) == (6, 8, [(1, 6), (3, 3), (5, 1)])
    assert "U-shape" in diagram.description
    assert pattern_diagram([(2, 1), (1, 3)], 4, 4).name == "custom"
    with pytest.raises(ValueError, match="Unknown shortcut pattern"):
        pattern_diagram("sparse-middle")
    with pytest.raises(ValueError, match="out of range"):
        pattern_diagram([(30, 1)])


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-model")
    model = make_model()
    randomise_gates(model)
    model.save_pretrained(folder)
    make_processor(model.config).save_pretrained(folder)
    image = folder / "image.png"
    tiny_image().save(image)
    return str(folder), str(image)


def run(*args) -> int:
    return main([str(a) for a in args])


def test_report_cli_writes_the_page_pngs_and_data(saved_model, tmp_path):
    folder, image = saved_model
    out = tmp_path / "report"
    code = run("--model", folder, "--image", image, "--question", "What is it?", "--out", out, "--max-new-tokens", 4,
               "--ig-steps", 4, "--patch", "1,2", "--adapter-head", 1, "--llm-head", 2, "--dpi", 40)
    assert code == 0
    page = (out / "index.html").read_text()
    for name in SECTIONS:
        assert f'<section id="{name}">' in page
    assert "Not available" not in page
    assert page.count("window.PlotlyConfig") == 1  # plotly.js embedded once
    assert page.count("Plotly.newPlot") == len(SECTIONS) - 1  # every view but the FLOPs table
    for name in set(SECTIONS) - {"flops"}:
        assert Image.open(out / f"{name}.png").size[0] > 100
    data = json.loads((out / "report.json").read_text())
    assert data["shortcuts"] == "5:1,3:3,1:6" and data["answer"]
    assert [row["mode"] for row in data["views"]["flops"]["modes"]] == ["llava", "concat", "sparsecut"]
    assert len(data["views"]["ablation"]) == 1 + 3 + 2  # baseline, one per shortcut, two default groups


def test_report_cli_notes_views_a_llava_mode_model_lacks(tmp_path):
    folder, out = tmp_path / "llava-mode", tmp_path / "out"
    model = make_model(pattern="llava", num_shortcuts=None, high_res=False, adapter_attention=False)
    model.save_pretrained(folder)
    make_processor(model.config).save_pretrained(folder)
    tiny_image().save(tmp_path / "image.png")
    skip = "integrated_gradients,occlusion,shortcut_attribution,flops"
    code = run("--model", folder, "--image", tmp_path / "image.png", "--question", "Q?", "--answer", "x", "--out", out,
               "--skip", skip, "--dpi", 40)
    assert code == 0
    page = (out / "index.html").read_text()
    assert '<section id="occlusion">' not in page and '<section id="llm_attention">' in page
    assert "Not available: The adapters have no attention block" in page and not (out / "cross_attention.png").exists()
    data = json.loads((out / "report.json").read_text())
    assert data["high_res"] is False
    assert [row["ablation"] for row in data["views"]["ablation"]] == ["none (all on)", "off 5:1"]


def test_report_cli_explains_a_model_with_reading_tokens(tmp_path):
    """Every view works when the context holds reading tokens after the views' tokens (they are no patch)."""
    folder, out = tmp_path / "reading", tmp_path / "out"
    model = make_model(reading_tokens=2)
    randomise_gates(model)
    model.save_pretrained(folder)
    make_processor(model.config).save_pretrained(folder)
    tiny_image().save(tmp_path / "image.png")
    code = run("--model", folder, "--image", tmp_path / "image.png", "--question", "Q?", "--answer", "x", "--out", out,
               "--ig-steps", 2, "--dpi", 40)
    assert code == 0
    page = (out / "index.html").read_text()
    assert "Not available" not in page and all(f'<section id="{name}">' in page for name in SECTIONS)
    data = json.loads((out / "report.json").read_text())
    assert data["views"]["flops"]["text_tokens"] == len(make_processor(model.config)(text=make_processor(
        model.config).prompt("Q?"), images=Image.open(tmp_path / "image.png")).input_ids[0]) + 1 - model.config.tokens_per_image(True)


def test_report_cli_rejects_bad_input_with_a_message(saved_model, tmp_path, capsys):
    folder, image = saved_model
    common = ["--model", folder, "--question", "Q?", "--answer", "x", "--out", tmp_path / "out"]
    cases = [
        (["--image", tmp_path / "missing.png"], "does not exist"),
        (["--image", image, "--patch", "9,9"], "outside the 4x4"),
        (["--image", image, "--shortcuts", "4:2"], "not in this model"),
        (["--image", image, "--llm-head", "9"], "Head 9"),
        (["--image", image, "--skip", "colours"], "Unknown view"),
        (["--image", image, "--model", tmp_path / "nothing-here"], "nothing-here"),
    ]
    for extra, message in cases:
        assert run(*common, *extra) == 2
        assert message in capsys.readouterr().err
