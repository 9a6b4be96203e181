"""Metrics of the paper's benchmarks, as their official / LLaVA-1.5 evaluation scripts compute them.

- ``vqa_accuracy``: VQAv2, VizWiz, TextVQA (the official VQA rule, or LLaVA's EvalAI processor variant).
- ``gqa_accuracy``: GQA exact match.
- ``pope_metrics``: POPE accuracy, precision, recall, F1 and yes-ratio (LLaVA's ``eval_pope.py``).
- ``choice_accuracy`` / ``circular_accuracy``: ScienceQA-IMG, SEED-Bench, MMBench (see ``choices.py``).
- ``bootstrap_interval``: a percentile bootstrap interval for an accuracy, resampling whole groups (e.g. the
  questions of one image together, since they share what the model saw).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .answers import clean_whitespace, evalai_normalise, normalise_words, strip_punctuation
from .choices import extract_choice

VQA_PROCESSORS = ("official", "evalai")


def vqa_accuracy(prediction: str, answers: Sequence[str], processor: str = "official") -> float:
    """Accuracy in [0, 1] of one answer against the human answers (10 in VQAv2, VizWiz and TextVQA).

    Agreement: for each human answer, the prediction scores ``min(1, matches among the *other* humans / 3)``, and
    the score is the mean over the humans. With ``k`` of 10 humans matching that is 0, 0.3, 0.6, 0.9 and 1.0 for
    ``k`` = 0, 1, 2, 3 and >= 4.

    ``processor="official"`` is ``vqaEval.py`` of GT-Vision-Lab/VQA (master): newlines/tabs become spaces and
    answers are stripped; then, **only if the human answers are not all identical**, both the human answers and the
    prediction go through ``strip_punctuation`` and ``normalise_words`` (``answers.py``). When all humans agree
    (e.g. ten times ``"yes"``), comparison is exact and case-sensitive: ``"Yes"`` or ``"yes."`` scores 0. The
    maintainers' reason: not to alter answers that read text in the image.

    ``processor="evalai"`` is LLaVA's ``m4c_evaluator`` (TextVQA) and its EvalAI submission converter: every
    answer, human or predicted, goes through ``evalai_normalise`` unconditionally, then the same agreement rule.

    The official script drops one human by comparing answer records, which carry distinct ``answer_id`` in VQAv2;
    here the left-out human is dropped by position, which is the same thing.
    """
    if processor not in VQA_PROCESSORS:
        raise ValueError(f"Unknown VQA answer processor {processor!r}; choose one of {', '.join(VQA_PROCESSORS)}.")
    if isinstance(answers, str) or len(answers) == 0:
        raise ValueError(f"answers must be a non-empty list of human answers; got {answers!r}.")
    if processor == "evalai":
        prediction, humans = evalai_normalise(prediction), [evalai_normalise(a) for a in answers]
    else:
        prediction, humans = clean_whitespace(prediction), [clean_whitespace(a) for a in answers]
        if len(set(humans)) > 1:
            humans = [normalise_words(strip_punctuation(a)) for a in humans]
            prediction = normalise_words(strip_punctuation(prediction))
    matches = [human == prediction for human in humans]
    total = sum(matches)
    return sum(min(1.0, (total - hit) / 3) for hit in matches) / len(humans)


def gqa_accuracy(predictions: Sequence[str], answers: Sequence[str]) -> float:
    """GQA: exact match after LLaVA's conversion (``text.rstrip('.').lower()``) against the official answer."""
    _same_length(predictions, answers, "answers")
    hits = [p.strip().rstrip(".").lower() == a for p, a in zip(predictions, answers)]
    return sum(hits) / len(hits) if hits else 0.0


def pope_answer(prediction: str) -> str:
    """LLaVA's ``eval_pope.py``: the first sentence, commas removed, split on spaces; ``No``, ``no`` or ``not`` as a
    word means "no", anything else "yes"."""
    text = prediction.split(".")[0] if "." in prediction else prediction
    words = text.replace(",", "").split(" ")
    return "no" if "No" in words or "not" in words or "no" in words else "yes"


def pope_metrics(predictions: Sequence[str], labels: Sequence[str]) -> dict:
    """POPE as LLaVA's ``eval_pope.py``: yes is the positive class; ``yes_ratio`` is the share of "yes" predictions.

    Returns accuracy, precision, recall, f1, yes_ratio (in [0, 1]) and the counts tp, fp, tn, fn. Where the
    script would divide by zero (no "yes" predicted, or no positive label), precision / recall / F1 are 0."""
    _same_length(predictions, labels, "labels")
    bad = sorted({label for label in labels if label not in ("yes", "no")})
    if bad:
        raise ValueError(f"POPE labels must be 'yes' or 'no'; got {bad[:5]}.")
    said_yes = [pope_answer(p) == "yes" for p in predictions]
    truth = [label == "yes" for label in labels]
    tp = sum(p and t for p, t in zip(said_yes, truth))
    fp = sum(p and not t for p, t in zip(said_yes, truth))
    tn = sum(not p and not t for p, t in zip(said_yes, truth))
    fn = sum(not p and t for p, t in zip(said_yes, truth))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    count = len(truth)
    return {
        "accuracy": (tp + tn) / count if count else 0.0,
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "yes_ratio": sum(said_yes) / count if count else 0.0,
        "tp": tp, "fp": fp, "tn": tn, "fn": fn,
    }


def choice_correct(prediction: str, answer: str, options: Mapping[str, str]) -> bool:
    """Whether the letter extracted from ``prediction`` (``choices.extract_choice``) is ``answer``."""
    if answer not in options:
        raise ValueError(f"The answer {answer!r} is not one of the option letters {sorted(options)}.")
    return extract_choice(prediction, dict(options)) == answer


def choice_accuracy(predictions: Sequence[str], answers: Sequence[str], options: Sequence[Mapping[str, str]]) -> float:
    """Multiple-choice accuracy with answer-letter extraction."""
    _same_length(predictions, answers, "answers")
    _same_length(predictions, options, "option sets")
    hits = [choice_correct(p, a, o) for p, a, o in zip(predictions, answers, options)]
    return sum(hits) / len(hits) if hits else 0.0


def circular_accuracy(groups: Mapping[object, Sequence[bool]]) -> float:
    """MMBench CircularEval: a question counts only if every rotation of its options was answered correctly."""
    if any(len(rounds) == 0 for rounds in groups.values()):
        raise ValueError("Every circular group needs at least one answered rotation.")
    return sum(all(rounds) for rounds in groups.values()) / len(groups) if groups else 0.0


def bootstrap_interval(correct: Sequence[bool], groups: Sequence | None = None, level: float = 0.95,
                       resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """(low, high) percentile bootstrap interval of the mean of ``correct``, resampling ``groups`` (one key per item;
    each distinct key is drawn as a whole) or, without groups, single items; deterministic for ``seed`` and, with
    groups, independent of the items' order (the same answers gathered from several processes give the same)."""
    import numpy as np

    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}.")
    if len(correct) == 0:
        raise ValueError("bootstrap_interval needs at least one item.")
    if groups is not None:
        _same_length(correct, groups, "group keys")
    keys = list(range(len(correct))) if groups is None else list(groups)
    index = {key: k for k, key in enumerate(sorted(set(keys), key=lambda key: (type(key).__name__, key)))}
    cluster = np.array([index[key] for key in keys])
    hits = np.bincount(cluster, weights=np.asarray(correct, dtype=float), minlength=len(index))
    sizes = np.bincount(cluster, minlength=len(index)).astype(float)
    draws = np.random.default_rng(seed).integers(0, len(index), size=(resamples, len(index)))
    means = hits[draws].sum(1) / sizes[draws].sum(1)
    tail = 100 * (1 - level) / 2
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def _same_length(predictions: Sequence, other: Sequence, name: str) -> None:
    if len(predictions) != len(other):
        raise ValueError(f"Got {len(predictions)} predictions but {len(other)} {name}; they must pair up one to one.")
