"""The app's engine, without Gradio: load models once, answer (streamed), compare with the baseline, analyse.

    engine = Engine.embedded()                                   # or Engine(["runs/stage2"], baseline="llava-hf/...")
    for answer in engine.answer("scene.png", "What is written in the image?", high_res=False):
        print(answer.text)                                       # grows token by token; the last one has done=True
    sparsecut, llava = list(engine.compare("scene.png", "How many circles are there?"))[-1]
    view = engine.analyse("contributions", "scene.png", "How many circles are there?")   # figure, table, summary

A model is loaded on first use, once, and shared by every request. Each request's settings (a subset of the
model's shortcuts, high-res on/off, decoding) travel as call arguments only and are never stored on the model, so
concurrent requests with different settings do not affect each other. Refused requests raise ``RequestError``.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from analysis.flops import forward_flops
from analysis.inputs import prepare, view_images
from sparsecut import zoo
from sparsecut.config import pattern_config
from sparsecut.evaluation.generation import on_model, pad_token_id
from sparsecut.patterns import EXPLICIT_RE, format_pattern

from .checkpoints import default_family, display_name, load_model
from .request_checks import Decoding, RequestError, check_question, read_image
from .streaming import interleave, stream_generate
from .views import VIEWS, ViewResult, diagram_view

EXAMPLE_CACHE = 16  # prepared examples kept for the views (a view's controls re-use the same greedy answer)


@dataclass(frozen=True)
class Answer:
    """One model's answer to one request, as it streams (``done=False``) and when finished."""

    model: str
    text: str
    done: bool
    latency_s: float  # since the request arrived
    first_text_s: float | None  # when the first words were streamed (the streamer releases whole words)
    new_tokens: int | None  # generated tokens, end-of-sequence included (when done)
    visual_tokens: int  # the image's tokens in the LLM context
    context_tokens: int  # the prompt: text and visual tokens
    prefill_flops: int | None  # analysis.flops count of the prefill generate runs (when done)
    shortcuts: str  # the shortcuts switched on, "i:j,..."
    ablation: bool  # a subset of the model's shortcuts (an inference-time ablation, not a trained pattern)
    high_res: bool

    def stats(self) -> dict:
        """Everything but the text, with the FLOPs also written for people."""
        stats = {k: v for k, v in asdict(self).items() if k != "text"}
        stats["prefill"] = _flops_text(self.prefill_flops)
        return stats


@dataclass(frozen=True)
class Loaded:
    name: str
    spec: str
    model: object
    processor: object


@dataclass(frozen=True)
class _Job:
    """One generation, checked and processed, ready to run."""

    loaded: Loaded
    inputs: dict
    settings: dict
    active: tuple
    ablation: bool
    high_res: bool
    visual_tokens: int
    context_tokens: int
    started: float


def _flops_text(flops: int | None) -> str | None:
    if flops is None:
        return None
    scale, unit = next((s, u) for s, u in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1, "")) if flops >= s or s == 1)
    return f"{flops / scale:.3g} {unit}FLOPs"


def prefill_flops(config, active, high_res: bool, context_tokens: int) -> int:
    """FLOPs of the prefill ``generate`` runs for one request: ``analysis.flops.forward_flops`` for the request's
    shortcuts and views, with the LM head on the last position only."""
    request = pattern_config(config, shortcuts=[list(s) for s in active], high_res=high_res)
    counts = forward_flops(request, request.mode, context_tokens - request.num_image_tokens)
    return counts["total"] - counts["lm_head"] + counts["lm_head"] // counts["context_length"]


class Engine:
    """Serves ``models`` (the pattern choices) and an optional LLaVA ``baseline`` to compare with."""

    def __init__(self, models: Sequence[str], baseline: str | None = None, device: str = "cpu", dtype: str = "auto",
                 max_image_mb: float = 10.0):
        if not models:
            raise ValueError("Give at least one model.")
        if not max_image_mb > 0:
            raise ValueError(f"max_image_mb must be > 0; got {max_image_mb!r}.")
        self.specs: dict[str, str] = {}
        for spec in [*models, *([baseline] if baseline else [])]:
            name = display_name(spec)
            if self.specs.get(name, spec) != spec:  # two folders with the same base name: this one keeps its path
                name = spec
            self.specs[name] = spec
        self.models = [n for n, s in self.specs.items() if s in models]
        self.baseline = next((n for n, s in self.specs.items() if s == baseline), None)
        self.device, self.dtype = device, dtype
        self.max_image_mb = max_image_mb
        self._loaded: dict[str, Loaded] = {}
        self._lock = threading.Lock()
        self._load_locks: dict[str, threading.Lock] = {}
        self._examples: OrderedDict = OrderedDict()

    @classmethod
    def embedded(cls, **kwargs) -> Engine:
        """The embedded family (``sparsecut-tiny`` and its pattern siblings, ``llava-tiny`` as the baseline); raises
        ``FamilyNotShipped`` saying how to run with your own checkpoints when it is absent."""
        models, baseline = default_family()
        return cls(models, baseline, **kwargs)

    @property
    def synthetic(self) -> bool:
        """Whether any served model is a shipped one (trained on synthetic scenes only)."""
        return any(zoo.is_known(spec) for spec in self.specs.values())

    # loading ----------------------------------------------------------------------------------------------------

    def load(self, name: str) -> Loaded:
        """The loaded model ``name`` (loaded on first use, once, whatever the number of concurrent callers)."""
        if name not in self.specs:
            raise RequestError(f"Unknown model {name!r}; this server has {', '.join(self.specs)}.")
        with self._lock:
            lock = self._load_locks.setdefault(name, threading.Lock())
        with lock:
            if name not in self._loaded:
                spec = self.specs[name]
                try:
                    model, processor = load_model(spec, self.device, self.dtype)
                except Exception as err:  # any failure to load is the user's to see, with its reason
                    raise RequestError(f"Model {name!r} failed to load from {spec}: {type(err).__name__}: {err}") from err
                self._loaded[name] = Loaded(name, spec, model, processor)
        return self._loaded[name]

    def info(self, name: str) -> dict:
        """What the UI shows about a model: its trained pattern, views (and reading tokens), depths and heads."""
        config = self.load(name).model.config
        return {
            "name": name,
            "source": self.specs[name],
            "mode": config.mode,
            "pattern": config.pattern,
            "shortcuts": format_pattern(config.shortcut_pairs),
            "high_res": config.high_res,
            "high_res_grid": config.high_res_grid if config.high_res else 1,
            "reading_tokens": config.reading_tokens,
            "visual_tokens": config.num_image_tokens,
            "vision_layers": config.vision_config.num_hidden_layers,
            "llm_layers": config.text_config.num_hidden_layers,
            "adapter_heads": config.adapter_num_heads,
            "llm_heads": config.text_config.num_attention_heads,
            "patch_grid": config.vision_config.image_size // config.vision_config.patch_size,
        }

    # requests ---------------------------------------------------------------------------------------------------

    def _settings(self, loaded: Loaded, shortcuts, high_res) -> tuple[tuple, bool, bool]:
        """(active shortcuts, high-res on, is an ablation) for one request on ``loaded``."""
        trained = loaded.model.config.shortcut_pairs
        if shortcuts is None or (isinstance(shortcuts, str) and not shortcuts.strip()):
            active = trained
        else:
            if isinstance(shortcuts, str) and not EXPLICIT_RE.match(shortcuts):
                raise RequestError(
                    f"Custom shortcuts must be written i:j,... (ViT layer : LLM layer), a subset of {loaded.name}'s "
                    f"{format_pattern(trained)}; got {shortcuts!r}."
                )
            try:
                active = loaded.model.model.resolve_shortcuts(shortcuts)
            except ValueError as err:
                raise RequestError(f"Custom shortcuts for {loaded.name}: {err}") from err
        try:
            use_high = loaded.model.model.resolve_high_res(None if high_res is None else bool(high_res))
        except ValueError as err:
            raise RequestError(f"{loaded.name} was trained without high-res views; switch high-res fusion off.") from err
        return tuple(active), use_high, list(active) != list(trained)

    def _image(self, image):
        return read_image(image, self.max_image_mb)

    def _job(self, name: str, image, question: str, shortcuts, high_res, decoding: Decoding, started: float) -> _Job:
        loaded = self.load(name)
        active, use_high, ablation = self._settings(loaded, shortcuts, high_res)
        processor, model = loaded.processor, loaded.model
        if processor.image_token in question:
            raise RequestError(f"The question contains the image placeholder {processor.image_token!r}; remove it (the "
                               "image is placed before the question for you).")
        batch = processor(images=[image], text=[processor.prompt(question)], high_res=use_high)
        context = batch["input_ids"].shape[1]
        limit = getattr(model.config.text_config, "max_position_embeddings", None)
        if limit and context + decoding.max_new_tokens > limit:
            raise RequestError(
                f"The question is too long for {name}: the prompt takes {context} tokens and {decoding.max_new_tokens} "
                f"new tokens are asked for, over the model's context of {limit} tokens. Shorten the question or lower "
                "max new tokens."
            )
        inputs = {**on_model(batch, model), "shortcuts": list(active), "high_res": use_high}
        settings = {**decoding.generate_kwargs(), "pad_token_id": pad_token_id(processor.tokenizer)}
        return _Job(loaded, inputs, settings, active, ablation, use_high,
                    model.config.tokens_per_image(use_high), context, started)

    def _stream(self, job: _Job) -> Iterator[Answer]:
        tokenizer = job.loaded.processor.tokenizer
        result: dict = {}
        text, first = "", None

        def make(text: str, done: bool, **extra) -> Answer:
            fields = {"new_tokens": None, "prefill_flops": None, "latency_s": time.perf_counter() - job.started} | extra
            return Answer(job.loaded.name, text, done, first_text_s=first, visual_tokens=job.visual_tokens,
                          context_tokens=job.context_tokens, shortcuts=format_pattern(job.active),
                          ablation=job.ablation, high_res=job.high_res, **fields)

        for piece in stream_generate(job.loaded.model, tokenizer, job.inputs, job.settings, result):
            if piece:
                first = first if first is not None else time.perf_counter() - job.started
                text += piece
                yield make(text.strip(), False)
        latency = time.perf_counter() - job.started
        new = result["ids"][0, job.context_tokens:]
        flops = prefill_flops(job.loaded.model.config, job.active, job.high_res, job.context_tokens)
        yield make(tokenizer.decode(new, skip_special_tokens=True).strip(), True, new_tokens=int(new.numel()),
                   prefill_flops=flops, latency_s=latency)

    def answer(self, image, question: str, model: str | None = None, shortcuts=None, high_res: bool | None = None,
               decoding: Decoding | None = None) -> Iterator[Answer]:
        """Stream one model's answer (default: the first model). ``shortcuts``: ``"i:j,..."``, a subset of the
        model's shortcuts (an inference-time ablation), or None for all; ``high_res``: None for the model's
        setting. The request is checked here; the returned iterator runs the model."""
        started = time.perf_counter()
        question, image = check_question(question), self._image(image)
        job = self._job(model or self.models[0], image, question, shortcuts, high_res, decoding or Decoding(), started)
        return self._stream(job)

    def compare(self, image, question: str, model: str | None = None, shortcuts=None, high_res: bool | None = None,
                decoding: Decoding | None = None) -> Iterator[tuple[Answer | None, Answer | None]]:
        """Stream ``(model's answer, baseline's answer)`` as either grows; both run at once. The baseline runs with
        its own settings and the same question, image and decoding."""
        started = time.perf_counter()
        if self.baseline is None:
            raise RequestError("No baseline to compare with: start the app with --baseline PATH_OR_HUB_ID.")
        question, image, decoding = check_question(question), self._image(image), decoding or Decoding()
        jobs = [self._job(model or self.models[0], image, question, shortcuts, high_res, decoding, started),
                self._job(self.baseline, image, question, None, None, decoding, started)]
        return self._pairs(jobs)

    def _pairs(self, jobs: list[_Job]) -> Iterator[tuple[Answer | None, Answer | None]]:
        latest: list[Answer | None] = [None, None]
        for index, answer in interleave(self._stream(job) for job in jobs):
            latest[index] = answer
            yield latest[0], latest[1]

    # views ------------------------------------------------------------------------------------------------------

    def analyse(self, view: str, image, question: str, model: str | None = None, shortcuts=None,
                high_res: bool | None = None, max_new_tokens: int = 32, progress=None, **options) -> ViewResult:
        """One inside view (``app.views.VIEWS``: contributions, cross_attention, llm_attention, attributions,
        ablation) of the model's greedy answer; ``options`` are the view's (head, layer, patch, method, ...).
        ``progress(fraction, message)`` is told about slow steps."""
        if view not in VIEWS:
            raise RequestError(f"Unknown view {view!r}; the views are {', '.join(VIEWS)} (and the pattern diagram).")
        loaded = self.load(model or self.models[0])
        active, use_high, _ = self._settings(loaded, shortcuts, high_res)
        decoding = Decoding(max_new_tokens=max_new_tokens)
        question, image = check_question(question), self._image(image)
        if progress is not None:
            progress(0.0, "answering greedily")
        try:
            example = self._example(loaded, image, question, active, use_high, decoding.max_new_tokens)
            return VIEWS[view](loaded.model, example, progress=progress, max_new_tokens=decoding.max_new_tokens, **options)
        except ValueError as err:  # the analysis library's refusals (a head out of range, no attention, ...)
            raise RequestError(str(err)) from err

    def model_views(self, image, model: str | None = None, high_res: bool | None = None) -> np.ndarray:
        """(N, S, S, 3) uint8: what ``model`` receives for ``image`` with this high-res setting, exactly as its
        processor makes it (de-normalised): the low-res view, then the g x g crops when high-res is on."""
        loaded = self.load(model or self.models[0])
        _, use_high, _ = self._settings(loaded, None, high_res)
        views = loaded.processor.image_views(self._image(image), use_high)  # (N, 3, S, S)
        return view_images(views, loaded.processor.image_processor)

    def diagram(self, model: str | None = None, shortcuts=None) -> ViewResult:
        """The pattern diagram of a model's trained shortcuts, or of the request's subset of them."""
        loaded = self.load(model or self.models[0])
        active, _, _ = self._settings(loaded, shortcuts, None)
        return diagram_view(loaded.model.config, list(active))

    def _example(self, loaded: Loaded, image, question: str, active: tuple, high_res: bool, max_new_tokens: int):
        """``analysis.inputs.prepare`` for the request, kept for the next few view calls with the same inputs."""
        key = (loaded.name, hashlib.sha256(image.tobytes()).hexdigest(), image.size, question, active, high_res,
               max_new_tokens)
        with self._lock:
            if key in self._examples:
                self._examples.move_to_end(key)
                return self._examples[key]
        example = prepare(loaded.model, loaded.processor, image, question, shortcuts=list(active), high_res=high_res,
                          max_new_tokens=max_new_tokens)
        with self._lock:
            self._examples[key] = example
            while len(self._examples) > EXAMPLE_CACHE:
                self._examples.popitem(last=False)
        return example
