"""The instructions LLaVA-1.5's evaluation appends to each benchmark's question (its ``llava/eval`` question files)."""

from __future__ import annotations

from collections.abc import Mapping

SHORT_ANSWER = "Answer the question using a single word or phrase."
UNANSWERABLE = "When the provided information is insufficient, respond with 'Unanswerable'."
CHOICE = "Answer with the option's letter from the given choices directly."
CHOICE_CN = "请直接回答选项字母。"  # MMBench-CN (LLaVA's --lang cn)
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def short_answer(question: str) -> str:
    """VQAv2, GQA, TextVQA, POPE: ``question\\nAnswer the question using a single word or phrase.``"""
    return f"{question}\n{SHORT_ANSWER}"


def vizwiz(question: str) -> str:
    """VizWiz: the unanswerable instruction, then the short-answer one, each on its own line."""
    return f"{question}\n{UNANSWERABLE}\n{SHORT_ANSWER}"


def lettered(question: str, options: Mapping[str, str], prefix: str = "", lang: str = "en") -> str:
    """Multiple choice: ``prefix`` (hint or context), the question, ``A. option`` lines, then the letter instruction."""
    lines = "".join(f"\n{letter}. {text}" for letter, text in options.items())
    return f"{prefix}{question}{lines}\n{CHOICE_CN if lang == 'cn' else CHOICE}"


def letter_options(texts) -> dict[str, str]:
    """``["red", "blue"]`` -> ``{"A": "red", "B": "blue"}``."""
    texts = list(texts)
    if len(texts) > len(LETTERS):
        raise ValueError(f"{len(texts)} options is more than the {len(LETTERS)} letters available.")
    return dict(zip(LETTERS, texts))
