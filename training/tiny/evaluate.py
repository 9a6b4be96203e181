"""Score a model on the synthetic benchmark's held-out split: accuracy per family, POPE-style F1, unanswerable recall.

The scoring lives in ``sparsecut.evaluation.benchmarks.synthetic`` (also ``python -m sparsecut.evaluation
--benchmark synthetic``) and the batched greedy generation in ``sparsecut.evaluation.generation``; this module
keeps the names the family pipeline uses.
"""

from __future__ import annotations

import os

from tqdm.auto import tqdm

from sparsecut.evaluation.benchmarks.synthetic import normalise, read_eval, results_table, score
from sparsecut.evaluation.generation import answer

__all__ = ["normalise", "predict", "read_eval", "results_table", "score"]


def predict(model, processor, records: list[dict], image_root: str, batch_size: int = 32, max_new_tokens: int = 6,
            progress: bool = True, **model_kwargs) -> list[str]:
    """Greedy answers for ``records`` (each with ``image`` and ``question``), in order."""
    model.eval()
    answers = []
    for start in tqdm(range(0, len(records), batch_size), desc="evaluating", disable=not progress):
        chunk = records[start : start + batch_size]
        answers += answer(model, processor, [os.path.join(image_root, r["image"]) for r in chunk],
                          [r["question"] for r in chunk], max_new_tokens, **model_kwargs)
    return answers
