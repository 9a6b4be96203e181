"""Load a model for evaluation and answer a batch of (image, question) pairs greedily.

``load(name_or_path)`` takes what ``sparsecut.loading.load_checkpoint`` takes (a shipped name such as
``sparsecut-tiny``, a SparseCut ``save_pretrained`` folder, an HF LLaVA folder or hub id, which becomes the
llava-mode SparseCut baseline with LLaVA-1.5's ``vicuna_v1`` prompt) and picks the dtype.
"""

from __future__ import annotations

from copy import deepcopy

import torch

from sparsecut.precision import MARGIN, cpu_supports_bf16
from sparsecut.quantization import quantize_int8

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "int8": torch.float32}  # int8: fp32, then the LLM's linear layers quantized (sparsecut.quantization)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The dtype to load in. ``auto``: bfloat16 on a GPU that supports it, float32 otherwise (on a CPU, ``load``
    then measures whether a bf16 copy answers faster and switches to it if so)."""
    if name == "auto":
        cuda = device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda else torch.float32
    if name not in DTYPES:
        raise ValueError(f"Unknown dtype {name!r}; choose auto, {', '.join(DTYPES)}.")
    return DTYPES[name]


def evaluation_dtype(dtype: str, device) -> str:
    """The dtype an evaluation loads in: ``"auto"`` is fp32 on a CPU, never a timed choice (every process, resume and
    harness call of one run must answer in the same precision); bf16 on a bf16 GPU as ``load`` decides."""
    return "float32" if dtype == "auto" and torch.device(device).type != "cuda" else dtype


def load(name_or_path: str, device="cpu", dtype: str = "auto", template: str | None = None):
    """(model in eval mode on ``device``, processor) for a shipped name, a SparseCut folder or an HF LLaVA checkpoint
    (``sparsecut.loading.load_checkpoint``: a LLaVA one becomes the llava-mode baseline)."""
    from sparsecut.loading import load_checkpoint

    device = torch.device(device)
    model, processor = load_checkpoint(name_or_path, resolve_dtype(dtype, device), template)
    model = model.to(device).eval()
    if dtype == "int8":
        model = quantize_int8(model)
    if dtype == "auto" and device.type == "cpu" and cpu_supports_bf16() and cpu_bf16_speedup(model, processor) >= MARGIN:
        model = model.to(torch.bfloat16)
    return model, processor


BF16_COPY_MAX_PARAMETERS = 10**9  # up to this size ``cpu_bf16_speedup`` times a bf16 copy; above, autocast


@torch.no_grad()
def cpu_bf16_speedup(model, processor) -> float:
    """fp32 time / bf16 time of one prefill (a mid-grey image and a short question) of fp32 ``model`` on the CPU:
    what ``load(dtype="auto")`` decides by. bf16 is timed on a bf16 copy of the model, what ``load`` would keep (for
    models over ``BF16_COPY_MAX_PARAMETERS``, under autocast instead: no second copy, but the casts of every weight
    in every call make it a lower bound: on SmolLM2-135M with one thread autocast measured under the 1.2x margin where
    the copy answered 1.7x as fast, README "Latency"); ``model`` is left as it is."""
    from PIL import Image

    from sparsecut.precision import bf16_speedup

    size = processor.image_size * processor.high_res_grid
    batch = dict(processor(images=[Image.new("RGB", (size, size), (128, 128, 128))],
                           text=[prompt(processor, "What is in the image?", [None])]))
    if sum(p.numel() for p in model.parameters()) <= BF16_COPY_MAX_PARAMETERS:
        copy = deepcopy(model).to(torch.bfloat16)
        return bf16_speedup(lambda: model(**batch), lambda: copy(**batch))

    def bf16():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(**batch)

    return bf16_speedup(lambda: model(**batch), bf16)


def _as_list(images) -> list:
    return [] if images is None else list(images) if isinstance(images, (list, tuple)) else [images]


def user_content(processor, question: str, images) -> str:
    """The user turn: ``<image>\\n`` per image before the question (LLaVA-1.5's order), unless the question already
    places its image placeholders (then their count must match)."""
    count = len(_as_list(images))
    placed = question.count(processor.image_token)
    if placed and placed != count:
        raise ValueError(f"The question places {placed} image placeholder(s) but comes with {count} image(s).")
    return question if placed else f"{processor.image_token}\n" * count + question


def prompt(processor, question: str, images) -> str:
    """The chat prompt for one question and its images, ending where the assistant's answer starts."""
    return processor.apply_chat_template([{"role": "user", "content": user_content(processor, question, images)}])


def on_model(batch, model) -> dict:
    """A processor's batch on ``model``'s device, its ``pixel_values`` (if any) in the model's dtype."""
    moved = {k: v.to(model.device) for k, v in batch.items()}
    if "pixel_values" in moved:
        moved["pixel_values"] = moved["pixel_values"].to(model.dtype)
    return moved


def pad_token_id(tokenizer) -> int:
    """The id ``generate`` pads with: the tokenizer's pad token, or its end-of-sequence token when it has none."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


@torch.no_grad()
def answer(model, processor, images: list, questions: list[str], max_new_tokens: int, **generate_kwargs) -> list[str]:
    """Greedy answers, stripped, for one batch. ``images[i]``: a path, bytes or PIL image, a list of them, or None
    (text only). ``generate_kwargs`` override the greedy defaults (e.g. ``do_sample=True, temperature=0.7``)."""
    texts = [prompt(processor, q, im) for q, im in zip(questions, images)]
    flat = [im for item in images for im in _as_list(item)]
    batch = on_model(processor(images=flat or None, text=texts, padding_side="left"), model)
    tokenizer = processor.tokenizer
    settings = {"do_sample": False, "max_new_tokens": max_new_tokens, "pad_token_id": pad_token_id(tokenizer), **generate_kwargs}
    out = model.generate(**batch, **settings)
    return [text.strip() for text in tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)]
