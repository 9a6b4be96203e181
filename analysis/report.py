"""One HTML page with every analysis view for one image and question, plus a PNG per view and the data as JSON.

    python -m analysis.report --model sparsecut-tiny --image cat.png --question "What colour is the cat?" --out report/

``--model`` is a shipped name (``sparsecut.zoo``) or a ``save_pretrained`` folder holding the model and its
processor; it is loaded with eager attention (the LLM attention view needs the weights). The page works offline
(plotly.js is embedded once). ``build_report`` does the same from Python for a model already loaded.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import sys

import plotly.io as pio

from sparsecut import SparseCutForConditionalGeneration, SparseCutProcessor
from sparsecut.images import load_image
from sparsecut.patterns import format_pattern

from .ablation import shortcut_ablation
from .attributions import BASELINES, integrated_gradients, occlusion, shortcut_attribution
from .contributions import contribution_norms
from .cross_attention import cross_attention, unavailable_reason
from .diagrams import pattern_diagram
from .flops import MODES, forward_flops
from .inputs import prepare
from .llm_attention import llm_attention
from .probes import attention_unavailable_reason

SECTIONS = {  # name -> (heading, what it shows)
    "pattern": (
        "Shortcut pattern",
        "ViT layers (left) feed LLM layers (right); a shortcut (i, j) adds ViT layer i's adapted "
        "features to the visual positions of the hidden state entering LLM layer j.",
    ),
    "contributions": (
        "Shortcut contributions",
        "||Z_i||, the size of what each shortcut adds at the visual tokens, and its "
        "ratio to the hidden state entering layer j (with the shortcuts added): near 1 the shortcut dominates, "
        "near 0 it is a nudge. Bars: means over the visual tokens; maps: per token, over the image.",
    ),
    "cross_attention": (
        "Adapter cross-attention",
        "Where each adapter's low-res query (the outlined patch) looks in the "
        "high-res crops, on the full image; entropy per shortcut and head (uniform attention = log K).",
    ),
    "llm_attention": (
        "LLM attention to the image",
        "Attention from the positions that produce the answer to the image's "
        "tokens, per LLM layer; layers where shortcuts land are marked.",
    ),
    "ablation": (
        "Shortcut ablation",
        "Each shortcut (and group) switched off at inference: the change in the answer's "
        "teacher-forced log-probability and the greedy answer then generated. Most harmful first.",
    ),
    "integrated_gradients": (
        "Image attribution: integrated gradients",
        "Pixel attribution of log p(answer) from a baseline image; red supports the answer, blue works against it.",
    ),
    "occlusion": (
        "Image attribution: occlusion",
        "Drop in log p(answer) when a window of one view is replaced by the "
        "baseline; red: the region supports the answer.",
    ),
    "shortcut_attribution": (
        "Attribution over shortcuts",
        "Integrated gradients on the adapter outputs from all shortcuts "
        "off: each shortcut's share of the change in log p(answer), and per visual token.",
    ),
    "flops": (
        "Cost of one forward",
        "FLOPs of one forward with this prompt's text length (analysis.flops), for LLaVA "
        "(low-res), LLaVA with the high-res views concatenated, and this SparseCut model.",
    ),
}


def _table(rows: list[dict]) -> str:
    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in rows[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row.values()) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(_cell(v) for v in value)
    return "" if value is None else str(value)


def _si(flops: int) -> str:
    for scale, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M")):
        if flops >= scale:
            return f"{flops / scale:.3f}{unit}"
    return str(flops)


def flops_table(config, text_tokens: int) -> list[dict]:
    """One row per mode (``analysis.flops.forward_flops``)."""
    rows = []
    for mode in MODES:
        f = forward_flops(config, mode, text_tokens)
        rows.append(
            {
                "mode": mode,
                "context_length": f["context_length"],
                **{k: _si(f[k]) for k in ("vision", "adapter", "llm_body", "lm_head", "total")},
            }
        )
    return rows


def build_report(
    model,
    processor,
    image,
    question: str,
    out_dir: str,
    *,
    answer: str | None = None,
    shortcuts=None,
    high_res: bool | None = None,
    patch=None,
    adapter_head: int | None = None,
    llm_head: int | None = None,
    ig_steps: int = 16,
    occlusion_window: int | None = None,
    occlusion_stride: int | None = None,
    baseline: str = "mean",
    max_new_tokens: int = 32,
    skip=(),
    model_name: str = "",
    dpi: int = 150,
) -> dict:
    """Run every view (except those in ``skip``) and write ``index.html``, ``report.json`` and one PNG per view
    into ``out_dir``. Returns {"html", "json", "pngs": {view: path}}."""
    unknown = sorted(set(skip) - set(SECTIONS))
    if unknown:
        raise ValueError(f"Unknown view(s) to skip: {', '.join(unknown)}; views are {', '.join(SECTIONS)}.")
    example = prepare(
        model, processor, image, question, answer, shortcuts=shortcuts, high_res=high_res, max_new_tokens=max_new_tokens
    )
    if patch is not None:
        example.grid.patch_index(patch)  # a bad patch fails here, before the expensive views
    os.makedirs(out_dir, exist_ok=True)
    text_tokens = example.input_ids.shape[1] - int((example.input_ids == example.image_token_id).sum())

    views = {  # name -> how to compute it; flops is a table only
        "pattern": lambda: pattern_diagram(model.config),
        "contributions": lambda: contribution_norms(model, example),
        "cross_attention": lambda: cross_attention(model, example),
        "llm_attention": lambda: llm_attention(model, example),
        "ablation": lambda: shortcut_ablation(model, example, max_new_tokens=max_new_tokens),
        "integrated_gradients": lambda: integrated_gradients(model, example, n_steps=ig_steps, baseline=baseline),
        "occlusion": lambda: occlusion(
            model, example, window=occlusion_window, stride=occlusion_stride, baseline=baseline
        ),
        "shortcut_attribution": lambda: shortcut_attribution(model, example, n_steps=ig_steps),
    }
    notes = {
        "cross_attention": unavailable_reason(model.config, example.high_res),
        "llm_attention": attention_unavailable_reason(model),
    }
    figure_options = {"cross_attention": dict(patch=patch, head=adapter_head), "llm_attention": dict(head=llm_head)}
    sections, data, pngs, plotly_js = [], {}, {}, True
    for name, (heading, explanation) in SECTIONS.items():
        if name in skip:
            continue
        note = notes.get(name)
        result = views[name]() if name in views and not note else None
        parts = [f'<section id="{name}"><h2>{heading}</h2><p>{html.escape(explanation)}</p>']
        if note:
            parts.append(f'<p class="note">Not available: {html.escape(note)}</p>')
        if name == "flops":
            rows = flops_table(model.config, text_tokens)
            data[name] = {"text_tokens": text_tokens, "modes": rows}
            parts.append(f"<p>1 image + {text_tokens} text tokens; a multiply-add = 2 FLOPs.</p>" + _table(rows))
        elif name == "pattern":
            data[name] = {"shortcuts": format_pattern(result.shortcuts), "description": result.description}
            parts.append(f"<p>{html.escape(result.description)}</p>")
        elif result is not None:
            data[name] = result.table()
            parts.append(_table(data[name]))
        if result is not None:
            options = figure_options.get(name, {})
            parts.append(pio.to_html(result.plotly(**options), full_html=False, include_plotlyjs=plotly_js))
            plotly_js = False
            pngs[name] = os.path.join(out_dir, f"{name}.png")
            result.matplotlib(**options).savefig(pngs[name], dpi=dpi)
            parts.append(f'<p><a href="{name}.png">{name}.png</a></p>')
        sections.append("".join(parts) + "</section>")

    summary = {
        "model": model_name,
        "question": example.question,
        "answer": example.answer,
        "shortcuts": format_pattern(example.shortcuts),
        "high_res": example.high_res,
        "views": data,
    }
    json_path = os.path.join(out_dir, "report.json")
    with open(json_path, "w", encoding="utf-8") as handle:
        json.dump(summary, handle, indent=2)
    html_path = os.path.join(out_dir, "index.html")
    with open(html_path, "w", encoding="utf-8") as handle:
        handle.write(_page(summary, sections))
    return {"html": html_path, "json": json_path, "pngs": pngs}


def _page(summary: dict, sections: list[str]) -> str:
    facts = "".join(
        f"<tr><th>{k}</th><td>{html.escape(str(summary[k]))}</td></tr>"
        for k in ("model", "question", "answer", "shortcuts", "high_res")
    )
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}table{border-collapse:collapse;"
        "margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 8px;font-size:13px;text-align:left}"
        ".note{color:#a33}section{margin-bottom:2.5em}"
    )
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>SparseCut analysis</title><style>{style}</style></head>"
        f"<body><h1>SparseCut analysis</h1><table>{facts}</table>{''.join(sections)}</body></html>"
    )


def _patch(text: str):
    try:
        row, col = (int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--patch takes ROW,COL (e.g. 3,5); got {text!r}.") from None
    return row, col


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m analysis.report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", required=True, help="a shipped name (e.g. sparsecut-tiny) or a save_pretrained folder"
    )
    parser.add_argument("--image", required=True, help="the image file")
    parser.add_argument("--question", required=True)
    parser.add_argument("--out", required=True, help="folder for index.html, report.json and the PNGs")
    parser.add_argument("--answer", help="the answer to explain (default: the model's greedy answer)")
    parser.add_argument("--shortcuts", help="a subset of the model's shortcuts, 'i:j,...' (default: all)")
    parser.add_argument("--no-high-res", action="store_true", help="use the low-res view only")
    parser.add_argument(
        "--patch", type=_patch, help="low-res patch ROW,COL for the cross-attention maps (default: the centre)"
    )
    parser.add_argument(
        "--adapter-head", type=int, help="one adapter attention head for its maps (default: their mean)"
    )
    parser.add_argument("--llm-head", type=int, help="one LLM attention head for its maps (default: their mean)")
    parser.add_argument("--ig-steps", type=int, default=16, help="integrated-gradients steps (default 16)")
    parser.add_argument("--occlusion-window", type=int, help="occlusion window in pixels (default: one ViT patch)")
    parser.add_argument("--occlusion-stride", type=int, help="occlusion stride in pixels (default: the window)")
    parser.add_argument(
        "--baseline", choices=BASELINES, default="mean", help="attribution baseline image (default mean)"
    )
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--dpi", type=int, default=150, help="resolution of the PNGs (default 150)")
    parser.add_argument("--skip", default="", help=f"comma-separated views to leave out: {', '.join(SECTIONS)}")
    args = parser.parse_args(argv)
    try:
        image = load_image(args.image)  # a missing or broken image fails before the model loads
        model = SparseCutForConditionalGeneration.from_pretrained(args.model, attn_implementation="eager").eval()
        processor = SparseCutProcessor.from_pretrained(args.model)
        paths = build_report(
            model,
            processor,
            image,
            args.question,
            args.out,
            answer=args.answer,
            shortcuts=args.shortcuts,
            high_res=False if args.no_high_res else None,
            patch=args.patch,
            adapter_head=args.adapter_head,
            llm_head=args.llm_head,
            ig_steps=args.ig_steps,
            occlusion_window=args.occlusion_window,
            occlusion_stride=args.occlusion_stride,
            baseline=args.baseline,
            max_new_tokens=args.max_new_tokens,
            skip=[s for s in args.skip.split(",") if s],
            model_name=args.model,
            dpi=args.dpi,
        )
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {paths['html']}, {paths['json']} and {len(paths['pngs'])} PNGs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
