"""The Gradio page: ``build_demo(engine) -> gr.Blocks``. Every action is a named API endpoint.

Endpoints (``gradio_client.Client(url).predict(..., api_name="/ask")``): ``/ask`` (streams both answers: each
answer's text and full stats record, then both stats as one Markdown table; the last input, ``compare``, adds the
baseline's), ``/contributions``, ``/cross_attention``, ``/llm_attention``,
``/attributions``, ``/ablation``, ``/diagram``, ``/model_views`` (what the model receives), ``/model_info``, ``/pick_example``, ``/select_patch``. Inputs are
taken raw (no Gradio preprocessing) so that the engine checks every one of them and refuses bad ones with its own
message, shown in the page as an error.
"""

from __future__ import annotations

import base64
import functools
import inspect

import gradio as gr
import pandas as pd
from PIL import Image

from sparsecut.evaluation.synthetic.scenes import DEFAULT_LAYOUT

from .examples import find_case, load_examples
from .checkpoints import USAGE
from .request_checks import MAX_NEW_TOKENS, Decoding, RequestError, Upload, read_image, with_short_answer
from .views import ATTRIBUTION_METHODS, side_by_side

MEAN_HEADS = "mean"
# the gallery one row of whole, square thumbnails: no fixed height that crops them or leaves empty space below
GALLERY_CSS = """
#examples, #examples .grid-wrap { height: auto !important; min-height: 0 !important; max-height: none !important; overflow-y: visible !important; }
#examples .grid-container { grid-template-rows: none !important; grid-auto-rows: auto !important; }
"""


def _user_errors(fn):
    """Show ``RequestError`` in the page as a Gradio error with its message (functions and generators alike)."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def stream(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except RequestError as err:
                raise gr.Error(str(err), print_exception=False) from err
        return stream

    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RequestError as err:
            raise gr.Error(str(err), print_exception=False) from err
    return call


def _image(payload):
    """A raw Gradio image payload (an uploaded file's data, or a data URL) -> an ``Upload`` for the engine, named by
    the file's original name (error messages never show the server's temporary path)."""
    if payload is None:
        return None
    if isinstance(payload, str):
        return Upload(payload)
    if payload.get("path"):
        return Upload(payload["path"], payload.get("orig_name"))
    url = payload.get("url") or ""
    if url.startswith("data:") and "," in url:
        return Upload(base64.b64decode(url.split(",", 1)[1]), payload.get("orig_name"))
    raise RequestError("The image did not arrive: upload it again.")


def _integer(name: str, value) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = None
    if number is None or number != int(number):
        raise RequestError(f"{name} must be a whole number; got {value!r}.")
    return int(number)


def _head(value):
    return None if value in (None, "", MEAN_HEADS) else _integer(f"Head ({MEAN_HEADS!r} or a number)", value)


def _patch(row, col):
    return None if row is None or col is None else (_integer("Patch row", row), _integer("Patch column", col))


def _table(rows: list[dict]) -> pd.DataFrame:
    def cell(value):
        if isinstance(value, float):
            return float(f"{value:.4g}")
        if isinstance(value, (list, tuple)):
            return ", ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in value)
        return value

    return pd.DataFrame([{k: cell(v) for k, v in row.items()} for row in rows])


def _enlarged(image, at_least: int = 256):
    """Nearest-neighbour upscaling of a small (H, W, 3) image, so that its patches are large enough to click."""
    factor = max(1, -(-at_least // max(image.shape[:2])))
    return image.repeat(factor, 0).repeat(factor, 1)


def _short(question, short: bool):
    """The question box at Ask: with the short-answer instruction appended when the switch is on."""
    return with_short_answer(question) if short and isinstance(question, str) else question


def _shown(answer) -> tuple:
    return ("", None) if answer is None else (answer.text, answer.stats())


def _ms(seconds) -> str:
    return "–" if seconds is None else f"{1000 * seconds:,.0f} ms"


def _gflops(flops) -> str:
    return "–" if flops is None else f"{flops / 1e9:.3g}"


def _ratio(ours, theirs) -> str:
    return "–" if ours is None or theirs is None or not theirs else f"{ours / theirs:.2f}x"


def _verdict(answer, case) -> str:
    if not answer.done:
        return "…"
    return f"{answer.text.strip() or '(empty)'} " + ("✓ right" if case.is_right(answer.text) else "✗ wrong")


def stats_summary(ours, theirs=None, case=None) -> str:
    """The two answers' request stats as one aligned Markdown table (ms, counts, GFLOPs), with the SparseCut / LLaVA
    ratio of latency and prefill FLOPs when both are there; "–" for what is not known yet (while streaming). For a
    case study (``case``), a first row marks each finished answer right or wrong against the case's answer."""
    answers = [a for a in (ours, theirs) if a is not None]
    if not answers:
        return ""
    rows = [(f"answer (right: {case.answer})", lambda a: _verdict(a, case), lambda: "")] if case else []
    rows += [("latency", lambda a: _ms(a.latency_s), lambda: _ratio(ours.latency_s, theirs.latency_s)),
            ("time to first words", lambda a: _ms(a.first_text_s), lambda: ""),
            ("new tokens", lambda a: "–" if a.new_tokens is None else str(a.new_tokens), lambda: ""),
            ("visual tokens in the context", lambda a: str(a.visual_tokens), lambda: ""),
            ("prompt length (tokens)", lambda a: str(a.context_tokens), lambda: ""),
            ("prefill GFLOPs", lambda a: _gflops(a.prefill_flops), lambda: _ratio(ours.prefill_flops, theirs.prefill_flops))]
    both = ours is not None and theirs is not None
    header = "| | " + " | ".join(a.model for a in answers) + (" | SparseCut / LLaVA |" if both else " |")
    lines = [header, "|---|" + "---:|" * (len(answers) + both)]
    for name, value, ratio in rows:
        lines.append(f"| {name} | " + " | ".join(value(a) for a in answers) + (f" | {ratio()} |" if both else " |"))
    return "\n".join(lines)


def _header(engine) -> str:
    lines = [
        "# SparseCut: visual features from several ViT layers, added into several LLM layers",
        ("Ask about an image and get SparseCut's answer next to a LLaVA-style baseline's, with each request's latency, "
         "visual context length and FLOPs; the tabs below show inside the model (contributions, attention, "
         "attributions, ablations)."),
    ]
    if engine.synthetic:
        lines.append(
            "> **The embedded models are tiny and trained only on synthetic scenes** "
            f"({DEFAULT_LAYOUT.image_size}-px images of coloured shapes and short printed text; see the case studies). They know nothing about photos: for photos, run "
            f"the app with a real checkpoint: `{USAGE}` (a SparseCut `save_pretrained` folder, or an HF LLaVA-1.5 "
            "folder or hub id such as `llava-hf/llava-1.5-7b-hf`)."
        )
    return "\n\n".join(lines)


def launch(demo: gr.Blocks, **options):
    """``demo.launch(**options)`` with the page's own style sheet (Gradio 6 takes it at launch)."""
    return demo.launch(css=GALLERY_CSS, **options)


def build_demo(engine, concurrency: int = 4) -> gr.Blocks:
    """The page for ``engine``; requests are queued and at most ``concurrency`` run at once per endpoint."""
    cases = load_examples()
    views = {}

    @_user_errors
    def ask(image, question, model, shortcuts, high_res, sample, temperature, top_p, max_new_tokens, compare):
        decoding = Decoding(bool(sample), temperature, top_p, max_new_tokens)
        case = _case_asked(image, question)
        if compare:
            for ours, theirs in engine.compare(_image(image), question, model, shortcuts, high_res, decoding):
                yield _shown(ours) + _shown(theirs) + (stats_summary(ours, theirs, case),)
        else:
            for ours in engine.answer(_image(image), question, model, shortcuts, high_res, decoding):
                yield _shown(ours) + ("", {"comparison": "off"}, stats_summary(ours, case=case))

    def _case_asked(image, question):
        """The case study this request asks (its image and question), if any: its answers get marked."""
        if not isinstance(question, str) or not any(c.question.strip() == question.strip() for c in cases):
            return None
        return find_case(cases, read_image(_image(image), engine.max_image_mb), question)

    @_user_errors
    def model_views(image, model, high_res):
        views = engine.model_views(_image(image), model, high_res)  # (N, S, S, 3)
        return side_by_side(views, engine.info(model or engine.models[0])["high_res_grid"])

    @_user_errors
    def model_info(model):
        info = engine.info(model)
        heads = [MEAN_HEADS] + [str(h) for h in range(info["llm_heads"])]
        adapter_heads = [MEAN_HEADS] + [str(h) for h in range(info["adapter_heads"])]
        note = (f"**{info['name']}**: pattern `{info['pattern']}` ({info['mode']} mode), shortcuts `{info['shortcuts']}`; "
                f"ViT {info['vision_layers']} layers, LLM {info['llm_layers']} layers; high-res "
                + (f"{info['high_res_grid']}x{info['high_res_grid']} crops" if info["high_res"] else "not trained")
                + (f" read by {info['reading_tokens']} reading tokens" if info["reading_tokens"] else "")
                + f"; {info['visual_tokens']} visual tokens.")
        return (
            note,
            gr.Checkbox(value=info["high_res"], interactive=info["high_res"]),
            gr.Textbox(placeholder=f"e.g. {info['shortcuts'].split(',')[0]} (empty: all of {info['shortcuts']})"),
            gr.Dropdown(choices=["all", *info["shortcuts"].split(",")], value="all"),
            gr.Dropdown(choices=adapter_heads, value=MEAN_HEADS),
            gr.Slider(minimum=1, maximum=info["llm_layers"], value=info["llm_layers"], step=1),
            gr.Dropdown(choices=heads, value=MEAN_HEADS),
        )

    def pick_example(evt: gr.SelectData):
        case = cases[evt.index]
        with Image.open(case.path) as picture:
            picture.load()
            return picture, case.question, f"**{case.kind}** ({case.name}): {case.note} Right answer: `{case.answer}`."

    def _view(view, image, question, model, shortcuts, high_res, max_new_tokens, **options) -> tuple:
        """(figure, summary, table) of one view, and the image the model saw (for the cross-attention tab)."""
        result = engine.analyse(view, _image(image), question, model, shortcuts, high_res, max_new_tokens, **options)
        return (result.figure, result.summary, _table(result.table)), result.image

    @_user_errors
    def contributions(image, question, model, shortcuts, high_res, max_new_tokens, ratio):
        return _view("contributions", image, question, model, shortcuts, high_res, max_new_tokens, ratio=bool(ratio))[0]

    @_user_errors
    def cross_attention(image, question, model, shortcuts, high_res, max_new_tokens, shortcut, head, patch_row, patch_col):
        (figure, summary, table), seen = _view("cross_attention", image, question, model, shortcuts, high_res,
                                               max_new_tokens, shortcut=shortcut, head=_head(head),
                                               patch=_patch(patch_row, patch_col))
        return figure, _enlarged(seen), summary, table

    @_user_errors
    def select_patch(seen, model, evt: gr.SelectData):
        side = engine.info(model)["patch_grid"]
        x, y = evt.index
        height, width = seen.shape[:2]
        return min(int(y * side / height), side - 1), min(int(x * side / width), side - 1)

    @_user_errors
    def llm_attention(image, question, model, shortcuts, high_res, max_new_tokens, layer, head):
        return _view("llm_attention", image, question, model, shortcuts, high_res, max_new_tokens,
                     layer=None if layer is None else _integer("Layer", layer), head=_head(head))[0]

    @_user_errors
    def attributions(image, question, model, shortcuts, high_res, max_new_tokens, method, steps, progress=gr.Progress()):
        return _view("attributions", image, question, model, shortcuts, high_res, max_new_tokens, method=method,
                     steps=_integer("Steps", steps), progress=lambda fraction, message: progress(fraction, desc=message))[0]

    @_user_errors
    def ablation(image, question, model, shortcuts, high_res, max_new_tokens):
        return _view("ablation", image, question, model, shortcuts, high_res, max_new_tokens)[0]

    @_user_errors
    def diagram(model, shortcuts):
        result = engine.diagram(model, shortcuts)
        return result.figure, result.summary, _table(result.table)

    with gr.Blocks(title="SparseCut demo") as demo:
        gr.Markdown(_header(engine), elem_id="header")
        with gr.Row():
            with gr.Column(scale=3):
                image = gr.Image(label="Image (upload, or paste from the clipboard)", sources=["upload", "clipboard"],
                                 type="filepath", format="png", height=300, elem_id="image")
                question = gr.Textbox(label="Question", lines=2, max_lines=8, elem_id="question")
                ask_button = gr.Button("Ask", variant="primary", elem_id="ask")
            with gr.Column(scale=2):
                model = gr.Dropdown(engine.models, value=engine.models[0], label="Shortcut pattern (one trained model each)",
                                    info="Embedded tiny models, trained on synthetic scenes only" if engine.synthetic else None,
                                    elem_id="model")
                model_note = gr.Markdown(elem_id="model-note")
                shortcuts = gr.Textbox(label="Inference-time ablation: a subset of this model's shortcuts (i:j,...)",
                                       info="Not a trained pattern: switches the other shortcuts of the loaded model off "
                                            "for this request only. Empty: all of them.", elem_id="shortcuts")
                high_res = gr.Checkbox(label="High-res fusion (the crops, fused by cross-attention)", elem_id="high-res")
                short = gr.Checkbox(value=engine.synthetic, label="Short answer: append \"Answer the question using a "
                                    "single word or phrase.\" to a plain question at Ask", info="The form the embedded "
                                    "family was trained on (LLaVA-1.5's VQA instruction); the question box shows it.",
                                    elem_id="short-answer")
                compare = gr.Checkbox(value=engine.baseline is not None, interactive=engine.baseline is not None,
                                      label=f"Compare with the LLaVA baseline ({engine.baseline or 'none: pass --baseline'})",
                                      elem_id="compare")
                with gr.Accordion("Decoding", open=False):
                    sample = gr.Checkbox(label="Sample (off: greedy)")
                    temperature = gr.Slider(0.05, 5.0, value=1.0, step=0.05, label="Temperature (when sampling)")
                    top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Top-p (when sampling)")
                    max_new_tokens = gr.Slider(1, MAX_NEW_TOKENS, value=32, step=1, label="Max new tokens")
        gr.Markdown("**Case studies** (in the spirit of the paper's Fig. 4): pick one, then Ask; it runs live. "
                    + " · ".join(f"{k + 1}. {c.kind}: {c.name}" for k, c in enumerate(cases)), elem_id="examples-label")
        gallery = gr.Gallery([c.path for c in cases], format="png", elem_id="examples", show_label=False,
                             columns=len(cases) or 1, object_fit="contain", allow_preview=False)
        case_note = gr.Markdown(elem_id="case-note")
        with gr.Row():
            ours = gr.Textbox(label="SparseCut", lines=2, interactive=False, elem_id="sparsecut-answer")
            theirs = gr.Textbox(label=f"LLaVA baseline ({engine.baseline or 'none'})", lines=2, interactive=False,
                                elem_id="baseline-answer")
        summary = gr.Markdown(elem_id="stats-summary")
        seen_views = gr.Image(label="What the model sees, as its processor made it (after Ask): left, the low-res view "
                              "every model reads, where small text is a blur; right, the high-res crops SparseCut "
                              "fuses by cross-attention (when high-res fusion is on)", interactive=False, format="png",
                              height=280, elem_id="model-views")
        with gr.Accordion("Full request records (as the API returns them)", open=False):
            with gr.Row():
                our_stats = gr.JSON(label="SparseCut", elem_id="sparsecut-stats")
                their_stats = gr.JSON(label="Baseline", elem_id="baseline-stats")

        request = [image, question, model, shortcuts, high_res, max_new_tokens]

        def shown_view(name: str):
            """A view's plot, summary and table, inside its tab."""
            return [gr.Plot(label=name, elem_id=f"plot-{name}"), gr.Markdown(elem_id=f"summary-{name}"),
                    gr.Dataframe(value=None, interactive=False, visible=False, elem_id=f"table-{name}")]

        with gr.Tabs():
            with gr.Tab("Contributions", elem_id="tab-contributions"):
                gr.Markdown("How much each shortcut adds at the image's tokens: ||Z|| and its share ||Z|| / ||h|| of the "
                            "hidden state h it joins, per shortcut and per patch. The input shortcut (into LLM layer 1) "
                            "*is* the image's tokens, as LLaVA's projector output is, so its share is 1 by construction; "
                            "a deeper shortcut's share says how much it changes a stream that already holds the image.")
                ratio = gr.Checkbox(label="Maps of the ratio ||Z|| / ||h|| (off: ||Z||)")
                views["contributions"] = (gr.Button("Show contributions", elem_id="run-contributions"), [ratio],
                                          shown_view("contributions"))
            with gr.Tab("Cross-attention", elem_id="tab-cross-attention"):
                gr.Markdown("Where each adapter's low-res queries look in the high-res crops. Pick a shortcut and a "
                            "head; click a patch on the image to see its attention.")
                with gr.Row():
                    shortcut = gr.Dropdown(["all"], value="all", label="Shortcut")
                    adapter_head = gr.Dropdown([MEAN_HEADS], value=MEAN_HEADS, label="Head")
                    patch_row = gr.Number(label="Patch row", precision=0)
                    patch_col = gr.Number(label="Patch column", precision=0)
                button = gr.Button("Show cross-attention", elem_id="run-cross-attention")
                seen = gr.Image(label="The image as the model sees it: click a patch", interactive=False, height=256,
                                format="png", elem_id="seen-image")
                plot, text, rows = shown_view("cross_attention")
                views["cross_attention"] = (button, [shortcut, adapter_head, patch_row, patch_col], [plot, seen, text, rows])
            with gr.Tab("LLM attention", elem_id="tab-llm-attention"):
                gr.Markdown("The LLM's attention from the answer to the image, per decoder layer (* = a shortcut lands).")
                with gr.Row():
                    layer = gr.Slider(1, 2, value=1, step=1, label="LLM layer")
                    llm_head = gr.Dropdown([MEAN_HEADS], value=MEAN_HEADS, label="Head")
                views["llm_attention"] = (gr.Button("Show LLM attention", elem_id="run-llm-attention"), [layer, llm_head],
                                          shown_view("llm_attention"))
            with gr.Tab("Attributions", elem_id="tab-attributions"):
                gr.Markdown("Which pixels, or which shortcuts, drove the answer (captum; slow: computed on demand). "
                            "Integrated gradients' attributions add up to log p(answer) minus its value at the baseline "
                            "(a blank image, or no shortcuts), up to the integration error the summary gives: the gap "
                            "left by summing the gradients at that many points. More integration steps shrink it; "
                            "occlusion has none.")
                with gr.Row():
                    method = gr.Radio(list(ATTRIBUTION_METHODS), value=ATTRIBUTION_METHODS[0], label="Method")
                    steps = gr.Slider(2, 64, value=16, step=1, label="Integration steps")
                views["attributions"] = (gr.Button("Compute attributions", elem_id="run-attributions"), [method, steps],
                                         shown_view("attributions"))
            with gr.Tab("Ablation", elem_id="tab-ablation"):
                gr.Markdown("Each shortcut (and some groups) switched off at inference: delta log p = log p(the greedy "
                            "answer, shortcut off) - log p(it, all on), so a negative delta marks a shortcut the answer "
                            "leans on; and the answer then generated. That answer can change even where delta is "
                            "positive: another answer's probability may have risen more than this one's.")
                views["ablation"] = (gr.Button("Run the ablation", elem_id="run-ablation"), [], shown_view("ablation"))
            with gr.Tab("Pattern diagram", elem_id="tab-diagram"):
                gr.Markdown("The shortcut pattern as in the paper's Fig. 2 (ViT left, LLM right, layer 1 at the bottom); "
                            "with a custom subset, the subset.")
                diagram_button = gr.Button("Show the pattern", elem_id="run-diagram")
                diagram_outputs = shown_view("diagram")

        answers = [ours, our_stats, theirs, their_stats, summary]
        asking = [*request[:5], sample, temperature, top_p, max_new_tokens, compare]
        for trigger, name in ((ask_button.click, "ask"), (question.submit, None)):  # the button is the API's /ask
            visibility = dict(api_name=name) if name else dict(api_visibility="undocumented")
            trigger(_short, [question, short], question, api_visibility="private").then(
                ask, asking, answers, preprocess=False, **visibility).success(
                model_views, [image, model, high_res], seen_views, preprocess=False,
                **(dict(api_name="model_views") if name else dict(api_visibility="undocumented")))
        gallery.select(pick_example, None, [image, question, case_note], api_name="pick_example")
        info_outputs = [model_note, high_res, shortcuts, shortcut, adapter_head, layer, llm_head]
        model.change(model_info, model, info_outputs, api_name="model_info", preprocess=False)
        demo.load(model_info, model, info_outputs, api_visibility="undocumented", preprocess=False)

        handlers = {"contributions": contributions, "cross_attention": cross_attention, "llm_attention": llm_attention,
                    "attributions": attributions, "ablation": ablation}
        def reveal(event, table):
            """Tables start hidden (no placeholder headers); a view that filled its table shows it."""
            event.success(lambda: gr.Dataframe(visible=True), None, table, api_visibility="private")

        for name, handler in handlers.items():
            button, extra, outputs = views[name]
            reveal(button.click(handler, request + extra, outputs, api_name=name, preprocess=False), outputs[-1])
        _, extra, outputs = views["cross_attention"]
        reveal(seen.select(select_patch, [seen, model], [patch_row, patch_col], api_name="select_patch").then(
            cross_attention, request + extra, outputs, api_visibility="undocumented", preprocess=False), outputs[-1])
        _, extra, outputs = views["llm_attention"]
        reveal(layer.release(llm_attention, request + extra, outputs, api_visibility="undocumented", preprocess=False),
               outputs[-1])
        reveal(diagram_button.click(diagram, [model, shortcuts], diagram_outputs, api_name="diagram", preprocess=False),
               diagram_outputs[-1])
    demo.queue(default_concurrency_limit=concurrency, max_size=64)
    return demo
