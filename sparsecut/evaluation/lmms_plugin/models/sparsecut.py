"""``SparseCut``: an lmms-eval ``lmms`` model (``generate_until``, ``loglikelihood``) over ``sparsecut.evaluation``.

Importable without lmms-eval (the base class is then ``object``, so the requests can be served by any caller that
provides ``task_dict``); lmms-eval itself instantiates it with its own base class.
"""

from __future__ import annotations

import json
from collections import defaultdict

import torch
from tqdm.auto import tqdm

from ... import generation

try:
    from lmms_eval.api.model import lmms as _Base
except ImportError:  # lmms-eval is not installed
    _Base = object


def _visuals(doc_to_visual, doc) -> list:
    visuals = doc_to_visual(doc) if doc_to_visual is not None else []
    return [v for v in (visuals or []) if v is not None]


class SparseCut(_Base):
    """lmms-eval model ``sparsecut``; one process per device under ``accelerate launch``."""

    is_simple = True

    def __init__(self, pretrained: str, batch_size: int = 1, max_new_tokens: int = 128, dtype: str = "auto",
                 template: str | None = None, device: str | None = None, **kwargs):
        if _Base is not object:
            super().__init__()
        else:
            self.task_dict = {}
        from accelerate import Accelerator

        self.accelerator = Accelerator()
        self._rank, self._world_size = self.accelerator.process_index, self.accelerator.num_processes
        self._device = torch.device(device) if device else self.accelerator.device
        self.model, self.processor = generation.load(pretrained, self._device,
                                                     generation.evaluation_dtype(dtype, self._device), template)
        self.batch_size_per_gpu = int(batch_size)
        self.max_new_tokens = int(max_new_tokens)

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def world_size(self) -> int:
        return self._world_size

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    def _generate_settings(self, gen_kwargs: dict) -> dict:
        settings = {"max_new_tokens": int(gen_kwargs.get("max_new_tokens") or self.max_new_tokens)}
        temperature = float(gen_kwargs.get("temperature") or 0)
        if temperature > 0 or gen_kwargs.get("do_sample"):
            settings.update(do_sample=True, temperature=temperature or 1.0)
            if gen_kwargs.get("top_p") is not None:
                settings["top_p"] = float(gen_kwargs["top_p"])
        if int(gen_kwargs.get("num_beams") or 1) > 1:
            settings["num_beams"] = int(gen_kwargs["num_beams"])
        return settings

    def generate_until(self, requests) -> list[str]:
        """Each request: ``(context, gen_kwargs, doc_to_visual, doc_id, task, split)``. Requests with the same
        ``gen_kwargs`` are batched; the answer is cut at the first ``until`` string."""
        results: list[str | None] = [None] * len(requests)
        groups = defaultdict(list)
        for index, request in enumerate(requests):
            groups[json.dumps(request.args[1], sort_keys=True, default=str)].append(index)
        bar = tqdm(total=len(requests), desc="sparsecut", disable=self.rank != 0)
        for indices in groups.values():
            gen_kwargs = dict(requests[indices[0]].args[1])
            until = gen_kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            settings = self._generate_settings(gen_kwargs)
            for start in range(0, len(indices), self.batch_size_per_gpu):
                chunk = indices[start : start + self.batch_size_per_gpu]
                contexts, images = [], []
                for i in chunk:
                    context, _, doc_to_visual, doc_id, task, split = requests[i].args
                    contexts.append(context)
                    images.append(_visuals(doc_to_visual, self.task_dict[task][split][doc_id]))
                answers = generation.answer(self.model, self.processor, images, contexts, **settings)
                for i, text in zip(chunk, answers):
                    for stop in until:
                        if stop and stop in text:
                            text = text.split(stop)[0]
                    results[i] = text
                bar.update(len(chunk))
        bar.close()
        return results

    @torch.no_grad()
    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        """Each request: ``(context, doc_to_target, doc_to_visual, doc_id, task, split)``; returns the summed log
        probability of the target rendered as the assistant's reply (with the template's end of turn, as lmms-eval's
        LLaVA model scores it), and whether greedy decoding would produce exactly those tokens."""
        out = []
        for request in tqdm(requests, desc="sparsecut loglikelihood", disable=self.rank != 0):
            context, doc_to_target, doc_to_visual, doc_id, task, split = request.args
            doc = self.task_dict[task][split][doc_id]
            target = doc_to_target(doc) if callable(doc_to_target) else doc_to_target
            images = _visuals(doc_to_visual, doc)
            prompt = generation.prompt(self.processor, context, images)
            full = self.processor.apply_chat_template(
                [{"role": "user", "content": generation.user_content(self.processor, context, images)},
                 {"role": "assistant", "content": str(target)}], add_generation_prompt=False)
            batch = self.processor(images=images or None, text=[full]).to(self.device)
            if "pixel_values" in batch:
                batch["pixel_values"] = batch["pixel_values"].to(self.model.dtype)
            start = len(self.processor(images=images or None, text=[prompt])["input_ids"][0])
            logits = self.model(**batch).logits[0, start - 1 : -1].float()  # (T_target, V): predicts tokens start..
            tokens = batch["input_ids"][0, start:]
            logprobs = torch.log_softmax(logits, dim=-1).gather(-1, tokens[:, None]).squeeze(-1)
            out.append((float(logprobs.sum()), bool((logits.argmax(-1) == tokens).all())))
        return out

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("The SparseCut lmms-eval model answers single-round tasks (generate_until and "
                                  "loglikelihood); multi-round tasks are not supported.")

