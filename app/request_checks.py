"""What one request may ask for, checked before a model runs: the image, the question and the decoding settings.

Every check raises ``RequestError`` with the specific reason; the app shows that message as it is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from PIL import Image

from sparsecut.evaluation.prompts import short_answer
from sparsecut.images import DEFAULT_MAX_PIXELS, ImageLoadError, load_image

MAX_QUESTION_CHARS = 1000
MAX_NEW_TOKENS = 512
MAX_TEMPERATURE = 5.0


class RequestError(ValueError):
    """A request the app refuses; the message says what is wrong and what to do instead."""


@dataclass(frozen=True)
class Upload:
    """An image that came through the page or the API: ``source`` (the server's temporary path, or bytes) and the
    name the person knows it by. Messages about it use that name, never the server's path."""

    source: str | bytes
    original_name: str | None = None

    @property
    def name(self) -> str:
        return f"the uploaded image '{self.original_name}'" if self.original_name else "the uploaded image"


@dataclass(frozen=True)
class Decoding:
    """Decoding settings of one request: greedy by default; ``sample=True`` draws with temperature / top-p."""

    sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 32

    def __post_init__(self):
        tokens = _number("Max new tokens", self.max_new_tokens)
        if int(tokens) != tokens or not 1 <= tokens <= MAX_NEW_TOKENS:
            raise RequestError(f"Max new tokens must be a whole number in 1..{MAX_NEW_TOKENS}; got {tokens!r}.")
        object.__setattr__(self, "max_new_tokens", int(tokens))
        if not 0 < _number("Temperature", self.temperature) <= MAX_TEMPERATURE:
            raise RequestError(f"Temperature must be in (0, {MAX_TEMPERATURE:g}]; got {self.temperature!r}.")
        if not 0 < _number("Top-p", self.top_p) <= 1:
            raise RequestError(f"Top-p must be in (0, 1]; got {self.top_p!r}.")

    def generate_kwargs(self) -> dict:
        """Keyword arguments for ``generate`` (temperature and top-p only when sampling)."""
        if not self.sample:
            return {"do_sample": False, "max_new_tokens": self.max_new_tokens}
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p, "max_new_tokens": self.max_new_tokens}


def _number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(f"{name} must be a number; got {value!r}.")
    return value


def with_short_answer(question: str) -> str:
    """``question`` with LLaVA-1.5's short-answer instruction on its own line (the form the embedded family was
    trained on), unless it already carries an instruction (a line after the question, as the case studies do)."""
    question = question.rstrip()
    if not question or "\n" in question.strip():
        return question
    return short_answer(question)


def check_question(question) -> str:
    """The question, stripped; refuses an empty or overly long one."""
    if not isinstance(question, str) or not question.strip():
        raise RequestError("The question is empty: type a question about the image.")
    question = question.strip()
    if len(question) > MAX_QUESTION_CHARS:
        raise RequestError(f"The question is {len(question):,} characters long; the limit is {MAX_QUESTION_CHARS:,}.")
    return question


def read_image(source, max_mb: float, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """``source`` (an ``Upload``, a path, bytes or a PIL image) as upright RGB; refuses a missing, oversized (over
    ``max_mb`` MB, 10^6 bytes each) or broken image."""
    if source is None:
        raise RequestError("No image: upload or paste one, or pick an example.")
    name = None
    if isinstance(source, Upload):
        source, name = source.source, source.name
    size = None
    if isinstance(source, (bytes, bytearray)):
        size = len(source)
    elif isinstance(source, (str, os.PathLike)) and os.path.isfile(source):
        size = os.path.getsize(source)
    if size is not None and size > max_mb * 1e6:
        raise RequestError(
            f"The image file is {size / 1e6:.2f} MB; this server accepts images up to {max_mb:g} MB (--max-image-mb)."
        )
    try:
        return load_image(source, max_pixels, name)
    except ImageLoadError as err:
        raise RequestError(str(err)) from err
