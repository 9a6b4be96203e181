"""A shipped member's greedy answers on the held-out split, kept one per question beside the family.

``<family>/answers/<member>.json`` holds {"files": the member's shipped-files key (``sparsecut.zoo.content_key``),
"answers": {question key: answer}}. A question's key is a hash of its image's decoded pixels and its text, so a
benchmark change that rewrites some questions invalidates only those, and reshipping a member (new files) all of its
answers. Scoring reads the answers from here, so every number in ``results.json`` can be traced to the answers
behind it; delete a member's file to generate its answers again.
"""

from __future__ import annotations

import hashlib
import json
import os

from PIL import Image

from sparsecut.images import pixels_sha256

ANSWERS = "answers"  # the folder in a family folder


def answers_file(folder: str, name: str) -> str:
    """Where member ``name``'s answers are kept in an answers ``folder``."""
    return os.path.join(folder, f"{name}.json")


def drop_answers(family_dir: str, name: str) -> None:
    """Remove the answers kept for member ``name`` in family folder ``family_dir`` (a member that left it)."""
    path = answers_file(os.path.join(family_dir, ANSWERS), name)
    if os.path.isfile(path):
        os.remove(path)


def question_keys(records: list[dict], image_root: str) -> list[str]:
    """One key per record (``image`` under ``image_root``, ``question``): 16 hex digits of sha256 over the image's
    pixels and the question."""
    pixels = {}
    for image in {r["image"] for r in records}:
        with Image.open(os.path.join(image_root, image)) as picture:
            pixels[image] = pixels_sha256(picture)
    return [hashlib.sha256(f"{pixels[r['image']]}\n{r['question']}".encode()).hexdigest()[:16] for r in records]


def _kept(folder: str | None, name: str, files: str) -> dict[str, str]:
    """The answers kept for ``name`` in ``folder`` if they are those of shipped files ``files``, else none."""
    path = folder and answers_file(folder, name)
    if not path or not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as handle:
        kept = json.load(handle)
    return kept["answers"] if kept.get("files") == files else {}


class AnswerStore:
    """The answers of member ``name`` (shipped files ``files``) kept in ``folder``; with ``folder`` None, in memory
    only. Answers kept for other files are dropped. ``earlier``: another folder whose answers for the same files are
    reused too (a run's own family folder, when the run then ships the same member elsewhere)."""

    def __init__(self, folder: str | None, name: str, files: str, earlier: str | None = None):
        self.path = folder and answers_file(folder, name)
        self.files = files
        self.saved = _kept(folder, name, files)
        self.answers = {**_kept(earlier, name, files), **self.saved}

    def __contains__(self, key: str) -> bool:
        return key in self.answers

    def __getitem__(self, key: str) -> str:
        return self.answers[key]

    def update(self, answers: dict[str, str]) -> None:
        self.answers.update(answers)

    def save(self, keys: list[str]) -> None:
        """Keep the answers to ``keys`` (in that order) and nothing else; the file is rewritten only if that changes
        it."""
        current = {key: self.answers[key] for key in keys}
        if not self.path or current == self.saved:
            return
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        with open(self.path, "w", encoding="utf-8") as handle:
            json.dump({"files": self.files, "answers": current}, handle, indent=0)
            handle.write("\n")
        self.saved = current
