"""Which option a free-form answer picks in a lettered multiple-choice question.

The rules, tried in order (the first that decides wins):

1. the whole answer is a letter, maybe wrapped as ``(B)``, ``B.``, ``B)``;
2. the answer starts with a letter and a separator: ``"B. blue"``, ``"B) blue"``, ``"(B) blue"``, ``"B: blue"``;
3. ``"The answer is B"`` anywhere (LLaVA's ScienceQA rule);
4. exactly one option letter stands alone as a word once ``.()[],:;!*#{}`` are spaces (VLMEvalKit's
   ``can_infer_option``), except ``A`` in an answer longer than three words, where it is more likely the article;
5. exactly one option's text occurs in the answer, case-insensitively (VLMEvalKit's ``can_infer_text``).

Otherwise there is no choice (``None``), which scores as wrong. LLaVA's own scripts use a subset (SEED-Bench: exact
letter; ScienceQA: rules 1-3; MMBench: VLMEvalKit's rules, then a GPT judge we do not call): for a model that
answers with a letter, as LLaVA-1.5's prompt asks, every rule set gives the same result.
"""

from __future__ import annotations

import re

_WRAPPED = re.compile(r"^\(?([A-Z])\)?\.?$")
_LEADING = re.compile(r"^\(?([A-Z])(?:\)|\.|:)(?:\s|$)")
_ANSWER_IS = re.compile(r"[Tt]he answer is \(?([A-Z])\b")
_SEPARATORS = str.maketrans({c: " " for c in ".()[],:;!*#{}"})


def extract_choice(prediction: str, options: dict[str, str]) -> str | None:
    """The letter of ``options`` (letter -> option text) that ``prediction`` picks, or ``None``."""
    text = prediction.strip()
    for pattern in (_WRAPPED, _LEADING, _ANSWER_IS):
        match = pattern.search(text)
        if match and match.group(1) in options:
            return match.group(1)
    words = text.translate(_SEPARATORS).split()
    letters = {w for w in words if w in options}
    if len(letters) == 1:
        (letter,) = letters
        if not (letter == "A" and len(words) > 3):
            return letter
    lowered = text.lower()
    named = [letter for letter, option in options.items() if option and str(option).lower() in lowered]
    return named[0] if len(named) == 1 else None
