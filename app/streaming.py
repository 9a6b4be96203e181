"""Streaming: ``generate`` in a thread with a ``TextIteratorStreamer``, and several streams interleaved as they come.

Closing a stream early (the browser went away) stops its generation at the next token.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator

import torch
from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

_END = object()
# torch CPU threads per computation in the app (``--threads``): each answer generates in a thread of its own, so the two
# models of a comparison run at once, one per core; a short answer is bound by reading the weights once per token, and
# two threads per model on 2 cores answered slower (README, "Latency")
CPU_THREADS = 1


class _StopWhenSet(StoppingCriteria):
    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def stream_generate(model, tokenizer, inputs: dict, settings: dict, result: dict) -> Iterator[str]:
    """Text pieces as ``model.generate(**inputs, **settings)`` produces them; when the stream ends, ``result["ids"]``
    holds generate's output (1, T + new). An error raised by generate is raised here."""
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    stop = threading.Event()
    failure = []

    def run():
        try:
            result["ids"] = model.generate(
                **inputs, **settings, streamer=streamer, stopping_criteria=StoppingCriteriaList([_StopWhenSet(stop)])
            )
        except BaseException as err:  # noqa: BLE001 - handed to the consuming thread below
            failure.append(err)
            streamer.end()

    thread = threading.Thread(target=run, name="sparsecut-generate", daemon=True)
    thread.start()
    try:
        yield from streamer
        thread.join()
    finally:
        stop.set()
    if failure:
        raise failure[0]


def interleave(iterators: Iterable[Iterator]) -> Iterator[tuple[int, object]]:
    """``(index, item)`` from several iterators as soon as each produces it, each iterator run in its own thread.
    An error in one is raised here; closing this generator closes them all."""
    events: queue.Queue = queue.Queue()
    stop = threading.Event()

    def pump(index: int, iterator: Iterator) -> None:
        try:
            for item in iterator:
                if stop.is_set():
                    break
                events.put((index, item, None))
        except BaseException as err:  # noqa: BLE001 - handed to the consuming thread below
            events.put((index, None, err))
        finally:
            getattr(iterator, "close", lambda: None)()
            events.put((index, _END, None))

    threads = [threading.Thread(target=pump, args=(k, it), daemon=True) for k, it in enumerate(iterators)]
    for thread in threads:
        thread.start()
    remaining = len(threads)
    try:
        while remaining:
            index, item, error = events.get()
            if error is not None:
                raise error
            if item is _END:
                remaining -= 1
            else:
                yield index, item
    finally:
        stop.set()
