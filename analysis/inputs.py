"""What every analysis takes: one image, one question, and the answer being explained (``Example``).

The answer is the model's own greedy answer unless one is given. Its log-probability is teacher-forced,
``log p(answer | image, question) = sum_k log p(a_k | image, question, a_<k)``: the prompt and the answer run
through the model in one forward pass. A given answer is tokenised on its own (no special tokens) and appended to
the prompt, as the model would generate it; the greedy answer stops before the end-of-sequence token.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from sparsecut import SparseCutForConditionalGeneration
from sparsecut.patterns import Shortcut

from .grid import TokenGrid


@dataclass(frozen=True, eq=False)
class Example:
    """One image + question + answer, processed for one model, and the settings of the call being explained.

    input_ids, attention_mask (1, T + A): the prompt (T tokens, image placeholders included) then the answer (A);
    pixel_values (1, N, 3, S, S); image (H, W, 3) uint8: the square image as the model sees it (the high-res crops
    stitched, or the low-res view).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    pixel_values: torch.Tensor
    prompt_length: int
    question: str
    image: np.ndarray
    grid: TokenGrid
    shortcuts: tuple[Shortcut, ...]  # the shortcuts switched on in the call being explained, by LLM layer
    high_res: bool
    image_token_id: int
    processor: object  # the SparseCutProcessor: tokenizer for decoding, image statistics for baselines

    @property
    def answer_ids(self) -> torch.Tensor:
        """(A,) the answer's token ids."""
        return self.input_ids[0, self.prompt_length :]

    @property
    def answer(self) -> str:
        return self.decode(self.answer_ids)

    @property
    def answer_rows(self) -> torch.Tensor:
        """(A,) positions whose next-token prediction is an answer token: the last prompt token and every answer
        token but the last (the query position in effect when each answer token was generated)."""
        return torch.arange(self.prompt_length - 1, self.input_ids.shape[1] - 1)

    @property
    def visual_positions(self) -> torch.Tensor:
        """(T_img,) sequence positions of the image's views' tokens, in context order; a model's reading tokens
        (config ``reading_tokens``), which follow them and are no view's patches, are left out."""
        placeholders = (self.input_ids[0] == self.image_token_id).nonzero()[:, 0]
        return placeholders[: self.grid.views * self.grid.tokens_per_view]

    def model_inputs(self, with_answer: bool = True) -> dict:
        """Keyword arguments for the model: the prompt (and answer), the views, and the call's settings."""
        end = None if with_answer else self.prompt_length
        return dict(
            input_ids=self.input_ids[:, :end],
            attention_mask=self.attention_mask[:, :end],
            pixel_values=self.pixel_values,
            shortcuts=list(self.shortcuts),
            high_res=self.high_res,
        )

    def decode(self, ids: torch.Tensor) -> str:
        return self.processor.tokenizer.decode(ids, skip_special_tokens=True).strip()


def check_model(model) -> SparseCutForConditionalGeneration:
    if not isinstance(model, SparseCutForConditionalGeneration):
        raise TypeError(f"Expected a SparseCutForConditionalGeneration; got {type(model).__name__}.")
    return model


def prepare(
    model,
    processor,
    image,
    question: str,
    answer: str | None = None,
    *,
    shortcuts=None,
    high_res: bool | None = None,
    max_new_tokens: int = 32,
    template: str | None = None,
) -> Example:
    """Process ``image`` (PIL image, path or bytes) and ``question`` for ``model``; generate the greedy answer when
    ``answer`` is None. ``shortcuts`` / ``high_res`` are the per-call settings to explain (default: the model's)."""
    check_model(model)
    if image is None:
        raise ValueError("An image is required: pass a PIL image, a path or bytes.")
    if not isinstance(question, str) or not question.strip():
        raise ValueError("The question must be a non-empty string.")
    config = model.config
    active = tuple(sorted(model.model.resolve_shortcuts(shortcuts), key=lambda s: (s[1], -s[0])))  # in LLM-layer order
    use_high = model.model.resolve_high_res(high_res)
    prompt = processor(images=[image], text=[processor.prompt(question, template=template)], high_res=use_high)
    device = model.device
    prompt_ids = prompt["input_ids"].to(device)
    pixel_values = prompt["pixel_values"].to(device, model.dtype)
    tokenizer = processor.tokenizer
    if answer is None:
        inputs = dict(
            input_ids=prompt_ids,
            attention_mask=prompt["attention_mask"].to(device),
            pixel_values=pixel_values,
            shortcuts=list(active),
            high_res=use_high,
        )
        answer_ids = greedy_answer_ids(model, inputs, tokenizer, max_new_tokens)
        if answer_ids.numel() == 0:
            raise ValueError(
                "The model's greedy answer is empty (it stopped at once); pass answer=... to explain a given answer."
            )
    else:
        answer_ids = torch.as_tensor(
            tokenizer(answer, add_special_tokens=False)["input_ids"], dtype=torch.long, device=device
        )
        if answer_ids.numel() == 0:
            raise ValueError("The answer tokenises to nothing; pass a non-empty answer or None for the greedy one.")
    input_ids = torch.cat([prompt_ids, answer_ids[None]], dim=1)  # (1, T + A)
    grid = TokenGrid.from_config(config, use_high)
    return Example(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        pixel_values=pixel_values,
        prompt_length=prompt_ids.shape[1],
        question=question,
        image=_seen_image(pixel_values[0], processor.image_processor, grid),
        grid=grid,
        shortcuts=active,
        high_res=use_high,
        image_token_id=config.image_token_id,
        processor=processor,
    )


def greedy_answer_ids(model, inputs: dict, tokenizer, max_new_tokens: int) -> torch.Tensor:
    """The greedy answer (A,) to one prompt (``inputs``: model keyword arguments, input_ids (1, T)), up to the first
    end-of-sequence token."""
    with torch.no_grad():
        out = model.generate(
            **inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
    return _until_eos(
        out[0, inputs["input_ids"].shape[1] :], [tokenizer.eos_token_id, model.generation_config.eos_token_id]
    )


def _until_eos(ids: torch.Tensor, eos: list) -> torch.Tensor:
    """Generated ids up to the first end-of-sequence id; ``eos`` holds ids, lists of ids or None."""
    stop_ids = [i for e in eos if e is not None for i in ([e] if isinstance(e, int) else e)]
    stops = torch.isin(ids, torch.as_tensor(stop_ids, dtype=ids.dtype, device=ids.device)).nonzero()
    return ids[: int(stops[0, 0])] if len(stops) else ids


def _unnormalised(views: torch.Tensor, image_processor) -> torch.Tensor:
    """(N, 3, S, S) normalised views -> the same in [0, 1], as the image processor's statistics undo them."""
    mean = torch.tensor(image_processor.image_mean, dtype=torch.float32)[:, None, None]
    std = torch.tensor(image_processor.image_std, dtype=torch.float32)[:, None, None]
    return (views.detach().float().cpu() * std + mean).clamp(0, 1)


def _to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """(..., 3, H, W) in [0, 1] -> (..., H, W, 3) uint8."""
    return (pixels * 255).round().to(torch.uint8).movedim(-3, -1).numpy()


def view_images(views: torch.Tensor, image_processor) -> np.ndarray:
    """(N, 3, S, S) normalised views (the low-res view, then the crops) -> (N, S, S, 3) uint8: each view exactly as
    the model receives it, de-normalised."""
    return _to_uint8(_unnormalised(views, image_processor))


def _seen_image(views: torch.Tensor, image_processor, grid: TokenGrid) -> np.ndarray:
    """(N, 3, S, S) normalised views -> (H, W, 3) uint8: the stitched crops when there are any, else the low-res view."""
    pixels = _unnormalised(views, image_processor)  # (N, 3, S, S)
    return _to_uint8(grid.stitch(pixels[1:].transpose(0, 1)) if pixels.shape[0] > 1 else pixels[0])


def answer_logprobs(model, example: Example, pixel_values: torch.Tensor | None = None, shortcuts=None) -> torch.Tensor:
    """Teacher-forced log p of each answer token: (k, A), one row per image in ``pixel_values`` (k, N, 3, S, S)
    (default: the example's, k = 1). ``shortcuts`` overrides the example's active shortcuts (an ablation)."""
    inputs = example.model_inputs()
    if pixel_values is not None:
        k = pixel_values.shape[0]
        inputs.update(
            input_ids=inputs["input_ids"].expand(k, -1),
            attention_mask=inputs["attention_mask"].expand(k, -1),
            pixel_values=pixel_values,
        )
    if shortcuts is not None:
        inputs["shortcuts"] = shortcuts
    answer = example.answer_ids
    logits = model(**inputs, logits_to_keep=answer.numel() + 1).logits[:, :-1]  # (k, A, V): rows predicting the answer
    return logits.float().log_softmax(-1).gather(-1, answer.expand(logits.shape[0], -1)[..., None])[..., 0]
