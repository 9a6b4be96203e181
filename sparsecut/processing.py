"""SparseCutProcessor: image views (low-res + g*g high-res crops), chat templates, image placeholders (§3.3).

Views of one image, all ``S x S`` (S = the tower's input size) and normalised by the tower's HF image processor:

- the image is made square: padded with the processor's mean colour (LLaVA-1.5's ``pad``), or centre-cropped;
- view 0, low-res: the square resized to S;
- views 1..g*g, high-res: the square resized to g*S and cut into g x g tiles, row by row.

So every crop covers a known part of the low-res view. ``pixel_values`` is ``(images, N, 3, S, S)``.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from transformers import BatchFeature
from transformers.processing_utils import ProcessorMixin

from .images import DEFAULT_MAX_PIXELS, load_image
from .templates import TEMPLATE_NAMES, render


class SparseCutProcessor(ProcessorMixin):
    """Turn (image, prompt) pairs into ``input_ids``, ``attention_mask`` and ``pixel_values`` for SparseCut.

    Args:
        image_processor: the vision tower's HF image processor (normalisation, resizing).
        tokenizer: the LLM's tokenizer; it must contain ``image_token`` as a token.
        image_size: S, the tower's input size.
        image_seq_length: M_v, visual tokens per view.
        high_res, high_res_grid, high_res_fusion, reading_tokens: as in ``SparseCutConfig``.
        image_token: the placeholder string in prompts (one per image); expanded to the model's token count.
        template: default chat template: ``vicuna_v1``, ``plain``, ``tokenizer``, or ``auto`` (the tokenizer's own
            chat template when it has one, e.g. Qwen; otherwise LLaVA-1.5's ``vicuna_v1``).
        pad_to_square: pad non-square images (LLaVA-1.5) instead of centre-cropping them.
        max_image_pixels: larger images are refused (decompression-bomb guard).
        padding_side: ``left`` for batched generation (default), ``right`` for training.
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        image_size: int = 336,
        image_seq_length: int = 576,
        high_res: bool = True,
        high_res_grid: int = 2,
        high_res_fusion: str = "cross-attention",
        reading_tokens: int = 0,
        image_token: str = "<image>",
        template: str = "auto",
        pad_to_square: bool = True,
        max_image_pixels: int | None = DEFAULT_MAX_PIXELS,
        padding_side: str = "left",
        chat_template=None,
        **kwargs,
    ):
        if template == "auto":
            template = "tokenizer" if getattr(tokenizer, "chat_template", None) else "vicuna_v1"
        if template not in TEMPLATE_NAMES:
            raise ValueError(f"Unknown template {template!r}; choose one of {', '.join(TEMPLATE_NAMES)} or 'auto'.")
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right'; got {padding_side!r}.")
        self.image_size = image_size
        self.image_seq_length = image_seq_length
        self.high_res = high_res
        self.high_res_grid = high_res_grid
        self.high_res_fusion = high_res_fusion
        self.reading_tokens = reading_tokens
        self.image_token = image_token
        self.template = template
        self.pad_to_square = pad_to_square
        self.max_image_pixels = max_image_pixels
        self.padding_side = padding_side
        super().__init__(image_processor, tokenizer, chat_template=chat_template)
        token_id = tokenizer.convert_tokens_to_ids(image_token)
        if token_id is None or token_id == tokenizer.unk_token_id:
            raise ValueError(
                f"The tokenizer has no {image_token!r} token. Add it with tokenizer.add_special_tokens("
                f"{{'additional_special_tokens': [{image_token!r}]}}) and resize the model's embeddings."
            )
        self.image_token_id = token_id

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """``ProcessorMixin.from_pretrained``, also for shipped names such as ``"sparsecut-tiny"`` (``sparsecut.zoo``)."""
        from . import zoo

        if zoo.is_known(pretrained_model_name_or_path):
            pretrained_model_name_or_path = zoo.resolve(pretrained_model_name_or_path)
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    @classmethod
    def from_model_config(cls, config, image_processor, tokenizer, **kwargs) -> "SparseCutProcessor":
        """A processor matching a ``SparseCutConfig`` (image size, M_v, high-res settings, image token)."""
        fields = dict(
            image_size=config.vision_config.image_size,
            image_seq_length=config.image_seq_length,
            high_res=config.high_res,
            high_res_grid=config.high_res_grid,
            high_res_fusion=config.high_res_fusion,
            reading_tokens=config.reading_tokens,
            image_token=config.image_token,
        )
        fields.update(kwargs)
        return cls(image_processor, tokenizer, **fields)

    # ---- images -------------------------------------------------------------------------------------------------

    def _square(self, image: Image.Image) -> Image.Image:
        width, height = image.size
        if width == height:
            return image
        side = max(width, height) if self.pad_to_square else min(width, height)
        if self.pad_to_square:
            mean = getattr(self.image_processor, "image_mean", None) or (0.5, 0.5, 0.5)
            square = Image.new("RGB", (side, side), tuple(int(round(255 * m)) for m in mean))
            square.paste(image, ((side - width) // 2, (side - height) // 2))
            return square
        left, top = (width - side) // 2, (height - side) // 2
        return image.crop((left, top, left + side, top + side))

    def _normalise(self, views: list[Image.Image]) -> torch.Tensor:
        """S x S RGB images -> (V, 3, S, S) with the tower's normalisation."""
        out = self.image_processor(
            images=views,
            do_resize=False,
            do_center_crop=False,
            return_tensors="pt",
        )["pixel_values"]
        return torch.as_tensor(np.asarray(out)) if not isinstance(out, torch.Tensor) else out

    def image_views(self, image, high_res: bool | None = None) -> torch.Tensor:
        """One image (PIL, path, bytes) -> (N, 3, S, S): the low-res view, then the g*g crops if high-res."""
        use_high = self.high_res if high_res is None else high_res
        square = self._square(load_image(image, self.max_image_pixels))
        S, g = self.image_size, self.high_res_grid
        views = [square.resize((S, S), Image.BICUBIC)]
        if use_high:
            big = square.resize((g * S, g * S), Image.BICUBIC)
            views += [big.crop((c * S, r * S, (c + 1) * S, (r + 1) * S)) for r in range(g) for c in range(g)]
        return self._normalise(views)

    # ---- text ---------------------------------------------------------------------------------------------------

    def tokens_per_image(self, high_res: bool | None = None) -> int:
        """Image placeholder tokens per image in the context: M_v, N * M_v when high-res views are concatenated, or
        M_v + ``reading_tokens`` with high-res views and reading tokens."""
        use_high = self.high_res if high_res is None else high_res
        views = 1 + self.high_res_grid**2 if use_high and self.high_res_fusion == "concat" else 1
        return self.image_seq_length * views + (self.reading_tokens if use_high else 0)

    def apply_chat_template(self, conversation, template: str | None = None, add_generation_prompt: bool = True, **kwargs):
        """Render a conversation (list of role/content messages) to a prompt string with ``<image>`` placeholders."""
        return render(
            conversation, template or self.template, self.tokenizer, add_generation_prompt, image_token=self.image_token
        )

    def prompt(self, question: str, with_image: bool = True, template: str | None = None) -> str:
        """A single-turn prompt for ``question`` (the image first, as LLaVA-1.5)."""
        content = f"{self.image_token}\n{question}" if with_image else question
        return self.apply_chat_template([{"role": "user", "content": content}], template=template)

    def __call__(
        self,
        images=None,
        text=None,
        high_res: bool | None = None,
        padding: bool | str = True,
        padding_side: str | None = None,
        return_tensors: str = "pt",
        add_special_tokens: bool = True,
        **kwargs,
    ) -> BatchFeature:
        """text: a prompt or list of prompts with one ``<image>`` per image; images: an image or a list of images,
        in order of their placeholders. Returns ``input_ids``/``attention_mask`` (B, T), ``pixel_values`` (I, N, 3, S, S)."""
        if text is None:
            raise ValueError("text is required: a prompt with one image placeholder per image (see processor.prompt()).")
        texts = [text] if isinstance(text, str) else list(text)
        if images is None:
            image_list = []
        elif isinstance(images, (list, tuple)):
            image_list = [im for item in images for im in (item if isinstance(item, (list, tuple)) else [item])]
        else:
            image_list = [images]
        placeholders = sum(t.count(self.image_token) for t in texts)
        if placeholders != len(image_list):
            raise ValueError(
                f"The prompt(s) contain {placeholders} {self.image_token!r} placeholder(s) but {len(image_list)} image(s) "
                "were given; put one placeholder per image."
            )
        per_image = self.tokens_per_image(high_res)
        expanded = [t.replace(self.image_token, self.image_token * per_image) for t in texts]
        encoded = self.tokenizer(
            expanded,
            padding=padding,
            padding_side=padding_side or self.padding_side,
            return_tensors=return_tensors,
            add_special_tokens=add_special_tokens,
            **kwargs,
        )
        data = dict(encoded)
        found = int((torch.as_tensor(data["input_ids"]) == self.image_token_id).sum())
        if found != len(image_list) * per_image:
            raise ValueError(
                f"Tokenisation produced {found} image tokens, expected {len(image_list) * per_image}: the prompt was "
                "truncated, or the tokenizer splits the image token. Raise max_length or check the tokenizer."
            )
        if image_list:
            data["pixel_values"] = torch.stack([self.image_views(im, high_res) for im in image_list])  # (I, N, 3, S, S)
        return BatchFeature(data=data, tensor_type=return_tensors)
