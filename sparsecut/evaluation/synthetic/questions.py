"""Questions, answers and captions derived from a scene's specification, in families mirroring the paper's benchmarks.

| family       | mirrors          | asks                                                        | answers              |
|--------------|------------------|-------------------------------------------------------------|----------------------|
| attribute    | GQA              | colour / shape / size of a uniquely described object       | red, circle, small   |
| count        | VQAv2 (number)   | how many shapes / colours / objects                         | 0..5                 |
| position     | VQAv2 (other)    | where an object is; is A left of / above B                  | top left, yes, no    |
| existence    | POPE             | is there a <colour> <shape>; negatives random/popular/adversarial | yes, no        |
| reading      | TextVQA          | what is written (legible only at full resolution)           | 46, CAT              |
| unanswerable | VizWiz           | reading with no or illegible text; an absent object's colour | unanswerable       |
| choice       | ScienceQA/MMBench| lettered options for attribute / count questions            | A..D                 |

Training-only drills, never scored as families of their own (``DRILLS``): ``spelling`` asks for one character of a
legible text by its place ("What is the second character of the text in the image?" -> 7), the skill a number's later
digits need; ``relation`` asks only the position family's left-of / above questions (``position`` asks them 40% of
the time), for more of them per conversation; ``tally`` asks the count family's questions, half of them with four
lettered numbers as options, for more counting per conversation (the family's own questions answer 0 or 1 four
times in five when they count a shape or a colour; with ``balanced_counts`` the drill's answer is drawn first,
uniformly among the counts above zero the scene has, so a member does not learn "1" for every object it finds);
``recount`` asks a count question (balanced the same way where asked) openly and then
again with four lettered numbers, two turns (``ask_turns``), so the lettered answer's look-up of the count among the
options is learned with the count already in context.

POPE negatives here: random = any absent (colour, shape); popular = an absent colour of a shape that is present;
adversarial = an absent pairing of a colour and a shape that are both present on other objects.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .scenes import COLOURS, SHAPES, Scene, position_name

FAMILIES = ("attribute", "count", "position", "existence", "reading", "unanswerable", "choice")
DRILLS = ("spelling", "relation", "tally", "recount")  # asked in training data only: the benchmark scores FAMILIES
ORDINALS = ("first", "second", "third")
SHORT = "Answer the question using a single word or phrase."
UNANSWERABLE = "When the provided information is insufficient, respond with 'Unanswerable'. " + SHORT
CHOICE = "Answer with the option's letter from the given choices directly."
LETTERS = "ABCD"
NUMBERS = [str(n) for n in range(6)]  # a count's answers


@dataclass(frozen=True)
class QA:
    question: str  # as the model sees it, instruction suffix included
    answer: str
    family: str
    subtype: str


def _plural(shape: str) -> str:
    return shape + ("es" if shape.endswith("s") else "s")


def _unique(scene: Scene, key) -> list:
    values = [key(s) for s in scene.shapes]
    return [s for s in scene.shapes if values.count(key(s)) == 1]


def attribute(scene: Scene, rng) -> QA | None:
    options = []
    for s in _unique(scene, lambda s: s.shape):
        options.append(QA(f"What color is the {s.shape}?\n{SHORT}", s.colour, "attribute", "colour"))
    for s in _unique(scene, lambda s: s.colour):
        options.append(QA(f"What shape is the {s.colour} object?\n{SHORT}", s.shape, "attribute", "shape"))
    for s in scene.shapes:
        options.append(QA(f"Is the {s.name} small or large?\n{SHORT}", s.size, "attribute", "size"))
    return options[int(rng.integers(len(options)))] if options else None


def count(scene: Scene, rng, balanced: bool = False) -> QA:
    """How many objects of a shape, of a colour, or in all (a third of the time each). The shape or colour is drawn
    uniformly, so four answers in five are 0 or 1; ``balanced`` (the drills' way) draws the answer first, uniformly
    among the counts above zero that the scene has for that kind, then a shape or colour with that count, so a scene
    with two squares is asked "2" as often as "1" (0, right 99% of the time, is left to the family's own questions)."""
    kind = int(rng.integers(3))
    if kind == 2:
        return QA(f"How many shapes are there?\n{SHORT}", str(len(scene.shapes)), "count", "all")
    names = list(SHAPES) if kind == 0 else list(COLOURS)
    counts = [sum((s.shape if kind == 0 else s.colour) == name for s in scene.shapes) for name in names]
    pool = names
    if balanced:
        present = sorted(set(counts) - {0})
        wanted = present[int(rng.integers(len(present)))]
        pool = [name for name, c in zip(names, counts) if c == wanted]
    value = pool[int(rng.integers(len(pool)))]
    n = counts[names.index(value)]
    if kind == 0:
        return QA(f"How many {_plural(value)} are there?\n{SHORT}", str(n), "count", "shape")
    return QA(f"How many {value} objects are there?\n{SHORT}", str(n), "count", "colour")


def _relation(target, other) -> QA | None:
    """Is ``target`` left of ``other`` (when their columns differ), else above it (when their rows differ)."""
    if target.cell[1] != other.cell[1]:
        answer = "yes" if target.cell[1] < other.cell[1] else "no"
        return QA(f"Is the {target.name} to the left of the {other.name}?\n{SHORT}", answer, "position", "left-of")
    if target.cell[0] != other.cell[0]:
        answer = "yes" if target.cell[0] < other.cell[0] else "no"
        return QA(f"Is the {target.name} above the {other.name}?\n{SHORT}", answer, "position", "above")
    return None


def _other(scene: Scene, target, rng):
    return [s for s in scene.shapes if s is not target][int(rng.integers(len(scene.shapes) - 1))]


def position(scene: Scene, rng) -> QA:
    target = scene.shapes[int(rng.integers(len(scene.shapes)))]
    if len(scene.shapes) > 1 and rng.random() < 0.4:
        qa = _relation(target, _other(scene, target, rng))
        if qa is not None:
            return qa
    return QA(f"Where is the {target.name}?\n{SHORT}", position_name(target.cell), "position", "where")


def relation(scene: Scene, rng) -> QA | None:
    """A position family's left-of / above question about two objects drawn at random (a drill for the relations,
    which ``position`` asks 40% of the time: see ``DRILLS``); None with fewer than two objects."""
    if len(scene.shapes) < 2:
        return None
    target = scene.shapes[int(rng.integers(len(scene.shapes)))]
    return _relation(target, _other(scene, target, rng))


def existence(scene: Scene, rng, subtype: str | None = None) -> QA | None:
    """Half positives, half negatives of the given (or a random) POPE subtype, balanced as POPE is."""
    present = {(s.colour, s.shape) for s in scene.shapes}
    if subtype is None:
        subtype = "positive" if rng.random() < 0.5 else ("random", "popular", "adversarial")[int(rng.integers(3))]
    if subtype == "positive":
        pool = sorted(present)
    else:
        absent = [(c, s) for s in SHAPES for c in COLOURS if (c, s) not in present]
        if subtype == "popular":
            absent = [p for p in absent if p[1] in {s for _, s in present}]
        elif subtype == "adversarial":
            absent = [p for p in absent if p[0] in {c for c, _ in present} and p[1] in {s for _, s in present}]
        pool = absent
    if not pool:
        return None
    colour, shape = pool[int(rng.integers(len(pool)))]
    answer = "yes" if subtype == "positive" else "no"
    return QA(f"Is there a {colour} {shape} in the image?\n{SHORT}", answer, "existence", subtype)


def reading(scene: Scene, rng) -> QA | None:
    if scene.text is None or not scene.text.legible:
        return None
    return QA(f"What is written in the image?\n{UNANSWERABLE}", scene.text.text, "reading", "digits" if scene.text.text.isdigit() else "word")


def spelling(scene: Scene, rng) -> QA | None:
    """One character of the legible text, at a place drawn uniformly (a drill for reading: see ``DRILLS``)."""
    if scene.text is None or not scene.text.legible:
        return None
    place = int(rng.integers(len(scene.text.text)))
    return QA(f"What is the {ORDINALS[place]} character of the text in the image?\n{SHORT}", scene.text.text[place],
              "spelling", ORDINALS[place])


def unanswerable(scene: Scene, rng) -> QA | None:
    options = []
    if scene.text is None:
        options.append(QA(f"What is written in the image?\n{UNANSWERABLE}", "unanswerable", "unanswerable", "no-text"))
    elif not scene.text.legible:
        options.append(QA(f"What is written in the image?\n{UNANSWERABLE}", "unanswerable", "unanswerable", "illegible"))
    absent = [s for s in SHAPES if s not in {x.shape for x in scene.shapes}]
    if absent:
        shape = absent[int(rng.integers(len(absent)))]
        options.append(QA(f"What color is the {shape}?\n{UNANSWERABLE}", "unanswerable", "unanswerable", "absent-object"))
    return options[int(rng.integers(len(options)))] if options else None


def choice(scene: Scene, rng) -> QA | None:
    """An attribute (70%) or count question with four lettered options of the answer's kind: three other colours,
    shapes or numbers. Its subtype names the base question's family and subtype (``count-colour``: how many red
    objects, asked with four numbers)."""
    base = attribute(scene, rng) if rng.random() < 0.7 else count(scene, rng)
    if base is None or base.subtype == "size":
        base = count(scene, rng)
    pool = NUMBERS if base.family == "count" else {"colour": list(COLOURS), "shape": list(SHAPES)}[base.subtype]
    return _lettered(base, rng, pool)


def _lettered(base: QA, rng, pool: list[str]) -> QA:
    """``base`` asked with four lettered options: its answer and three distractors drawn from ``pool``; subtype
    ``<base family>-<base subtype>``."""
    distractors = [v for v in pool if v != base.answer]
    picks = [distractors[i] for i in rng.choice(len(distractors), size=3, replace=False)]
    options = picks + [base.answer]
    order = rng.permutation(4)
    options = [options[i] for i in order]
    letter = LETTERS[options.index(base.answer)]
    question = base.question.split("\n")[0]
    lines = "\n".join(f"{LETTERS[i]}. {option}" for i, option in enumerate(options))
    return QA(f"{question}\n{lines}\n{CHOICE}", letter, "choice", f"{base.family}-{base.subtype}")


def tally(scene: Scene, rng, balanced: bool = False) -> QA:
    """A count family's question (with ``balanced`` answers: ``count``), asked openly or, half of the time, with
    lettered options (a drill for counting: see ``DRILLS``)."""
    base = count(scene, rng, balanced=balanced)
    return _lettered(base, rng, NUMBERS) if rng.random() < 0.5 else base


def recount(scene: Scene, rng, balanced: bool = False) -> tuple[QA, QA]:
    """A count family's question (with ``balanced`` answers: ``count``) asked openly, then the same question with four
    lettered numbers (a drill of two turns for the letter step of lettered counts: see ``DRILLS``)."""
    base = count(scene, rng, balanced=balanced)
    return base, _lettered(base, rng, NUMBERS)


ASKERS = {
    "attribute": attribute,
    "count": count,
    "position": position,
    "existence": existence,
    "reading": reading,
    "unanswerable": unanswerable,
    "choice": choice,
    "spelling": spelling,
    "relation": relation,
    "tally": tally,
}


TURN_DRILLS = {"recount": recount}  # drills that ask several turns at once
COUNT_DRILLS = ("tally", "recount")  # drills that can draw their answers balanced (``count``)


def ask(scene: Scene, family: str, rng: np.random.Generator, balanced_counts: bool = False) -> QA | None:
    """A question of ``family`` about ``scene``, or None when the scene cannot pose one (e.g. reading without text);
    ``balanced_counts``: a count drill's answers are drawn balanced (``count``; other families ignore it)."""
    if family in TURN_DRILLS:
        raise ValueError(f"the {family} drill asks several turns at once: use ask_turns.")
    if balanced_counts and family in COUNT_DRILLS:
        return ASKERS[family](scene, rng, balanced=True)
    return ASKERS[family](scene, rng)


def ask_turns(scene: Scene, family: str, rng: np.random.Generator, balanced_counts: bool = False) -> list[QA]:
    """The turns ``family`` asks about ``scene``, in order: one question, none where the scene cannot pose one, or
    each turn of a drill of several (``TURN_DRILLS``); ``balanced_counts`` as ``ask``'s."""
    if family in TURN_DRILLS:
        return list(TURN_DRILLS[family](scene, rng, balanced=balanced_counts))
    qa = ask(scene, family, rng, balanced_counts)
    return [] if qa is None else [qa]


def caption(scene: Scene) -> str:
    """A stage-1 caption listing every object with size, colour, shape and position, and the text."""
    parts = [f"a {s.size} {s.name} {_where(s.cell)}" for s in sorted(scene.shapes, key=lambda s: s.cell)]
    text = "There " + ("is " if len(parts) == 1 else "are ") + ", ".join(parts[:-1]) + (" and " if len(parts) > 1 else "") + parts[-1] + "."
    if scene.text is not None:
        where = _where(scene.text.cell)
        text += f" The text {scene.text.text} is written {where}." if scene.text.legible else f" There is an illegible scribble {where}."
    return text


def _where(cell) -> str:
    name = position_name(cell)
    return "in the center" if name == "center" else f"at the {name}" if " " in name else f"on the {name}" if name in ("left", "right") else f"at the {name}"
