"""The case-study gallery, in the spirit of the paper's Fig. 4: small text, unanswerable questions, cluttered scenes.

    python -m app.examples --out assets/examples      # writes <case>.png (96 px in the default layout), examples.json and README.md

Images and questions come from the synthetic benchmark (``sparsecut.evaluation.synthetic.scenes`` / ``questions``): each case takes
the first scene, from ``numpy.random.default_rng([seed, case, index])`` for index 0, 1, ..., that poses its kind of
question. The same seed always gives the same files. The app's gallery reads ``examples.json``.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image

from sparsecut.evaluation.benchmarks.synthetic import normalise
from sparsecut.images import pixels_sha256

from sparsecut.evaluation.synthetic.questions import ask
from sparsecut.evaluation.synthetic.scenes import DEFAULT_LAYOUT, render, sample_scene

SEED = 4242  # not a seed of the tiny family's training or test splits
DEFAULT_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "examples")
MANIFEST = "examples.json"


@dataclass(frozen=True)
class Case:
    name: str  # file stem
    kind: str  # small text / unanswerable / cluttered scene
    family: str  # question family (sparsecut.evaluation.synthetic.questions)
    subtype: str  # the question subtype wanted
    scene: dict  # sample_scene options
    note: str  # what the case probes


CASES = (
    Case("small-text-digits", "small text", "reading", "digits", {"text_probability": 1.0, "scribble_probability": 0.0},
         "Two digits, 8 px apart at full resolution: legible in the high-res crops, a blur in the low-res view."),
    Case("small-text-word", "small text", "reading", "word", {"text_probability": 1.0, "scribble_probability": 0.0},
         "A three-letter word in the same small font."),
    Case("unanswerable-scribble", "unanswerable", "unanswerable", "illegible",
         {"text_probability": 1.0, "scribble_probability": 1.0},
         "Ink shaped like text but no letters: the right answer is 'unanswerable'."),
    Case("unanswerable-absent", "unanswerable", "unanswerable", "absent-object", {"max_shapes": 3},
         "Asks the colour of a shape that is not in the image."),
    Case("cluttered-count", "cluttered scene", "count", "shape", {"min_shapes": 5, "max_shapes": 5},
         "Five objects: count one kind of shape among them."),
    Case("cluttered-existence", "cluttered scene", "existence", "adversarial", {"min_shapes": 5, "max_shapes": 5},
         "POPE-style adversarial negative: the colour and the shape both appear, never together."),
    Case("cluttered-position", "cluttered scene", "position", "where", {"min_shapes": 5, "max_shapes": 5},
         "Where one object sits among five."),
)


@dataclass(frozen=True)
class CaseStudy:
    """One gallery entry: an image file and its question (with the synthetic benchmark's instruction)."""

    path: str
    name: str
    kind: str
    question: str
    answer: str
    note: str
    pixels: str  # sha256 of the decoded image (RGB bytes and size): recognises the case whatever file carries it

    def is_right(self, answer: str) -> bool:
        """Whether ``answer`` is this case's right answer, compared as the synthetic benchmark scores answers."""
        return normalise(answer) == normalise(self.answer)


def find_case(cases: list[CaseStudy], image: Image.Image, question: str) -> CaseStudy | None:
    """The case study asked about, if ``image`` (decoded) and ``question`` are one case's; None otherwise."""
    asked = [c for c in cases if c.question.strip() == question.strip()]
    if not asked:
        return None
    pixels = pixels_sha256(image)
    return next((c for c in asked if c.pixels == pixels), None)


def _find(case: Case, number: int, seed: int):
    """(index, scene, question) of the first scene for ``case`` that poses its question."""
    for index in range(10_000):
        rng = np.random.default_rng([seed, number, index])
        scene = sample_scene(rng, **case.scene)
        qa = ask(scene, case.family, rng)
        if qa is not None and qa.subtype == case.subtype:
            return index, scene, qa
    raise RuntimeError(f"No scene for case {case.name!r} within 10,000 draws.")


def write_examples(out_dir: str, seed: int = SEED) -> list[dict]:
    """Write every case's PNG, ``examples.json`` and a README card into ``out_dir``; returns the JSON entries."""
    os.makedirs(out_dir, exist_ok=True)
    entries = []
    for number, case in enumerate(CASES):
        index, scene, qa = _find(case, number, seed)
        render(scene, seed=index).save(os.path.join(out_dir, f"{case.name}.png"), format="PNG", optimize=False)
        entries.append({"file": f"{case.name}.png", "name": case.name, "kind": case.kind, "question": qa.question,
                        "answer": qa.answer, "family": qa.family, "subtype": qa.subtype, "index": index,
                        "note": case.note})
    with open(os.path.join(out_dir, MANIFEST), "w", encoding="utf-8") as handle:
        json.dump({"seed": seed, "command": "python -m app.examples", "examples": entries}, handle, indent=2)
        handle.write("\n")
    with open(os.path.join(out_dir, "README.md"), "w", encoding="utf-8") as handle:
        handle.write(_card(entries, seed))
    return entries


def _card(entries: list[dict], seed: int) -> str:
    rows = "\n".join(
        f"| `{e['file']}` | {e['kind']} | {e['question'].splitlines()[0]} | {e['answer']} | {e['note']} |" for e in entries
    )
    return (
        "# Case-study examples (the app's gallery)\n\n"
        f"Made by `python -m app.examples --out assets/examples --seed {seed}` from the synthetic benchmark the embedded\n"
        f"models are trained on (`sparsecut/evaluation/synthetic/`: `scenes.py`, `questions.py`): {DEFAULT_LAYOUT.image_size}-px PNGs, deterministic for the\n"
        "seed, in the spirit of the paper's Fig. 4 (small text, unanswerable questions, cluttered scenes). Each case is\n"
        "the first scene from `numpy.random.default_rng([seed, case number, index])`, index 0, 1, ..., that poses its\n"
        "question; `examples.json` records the index, the question as the models see it (with the benchmark's\n"
        "instruction) and the right answer. No photos: the embedded models have only seen such scenes.\n\n"
        "| file | case | question | answer | what it probes |\n|---|---|---|---|---|\n"
        f"{rows}\n"
    )


def load_examples(folder: str = DEFAULT_DIR) -> list[CaseStudy]:
    """The gallery in ``folder`` (empty when it has no ``examples.json``)."""
    path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as handle:
        entries = json.load(handle)["examples"]
    cases = []
    for e in entries:
        path = os.path.join(folder, e["file"])
        with Image.open(path) as picture:
            cases.append(CaseStudy(path, e["name"], e["kind"], e["question"], e["answer"], e["note"], pixels_sha256(picture)))
    return cases


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.examples", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=DEFAULT_DIR, help="output folder (default: assets/examples)")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    entries = write_examples(args.out, args.seed)
    print(f"wrote {len(entries)} examples to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
