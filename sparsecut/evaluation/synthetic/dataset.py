"""Write the synthetic benchmark as files: PNG images, LLaVA JSON for stage 1 and stage 2, JSONL for evaluation.

Image ``i`` of a split is drawn from ``numpy.random.default_rng([seed, i])``: each image is reproducible on its own,
and splits with different seeds never share a scene generator.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict

import numpy as np
from PIL import Image

from .questions import COUNT_DRILLS, DRILLS, FAMILIES, ask, ask_turns, caption
from .scenes import DEFAULT_LAYOUT, Layout, Scene, render, sample_scene

DESCRIBE = "Describe the image briefly."
# how often each family is drawn for a stage-2 turn (reading and unanswerable only where the scene allows)
TRAIN_WEIGHTS = {"attribute": 2, "count": 2, "position": 2, "existence": 3, "reading": 3, "unanswerable": 2, "choice": 1}
# a reading split's turns after its reading question: stage 2's families but reading
LOOK_UP_WEIGHTS = {family: weight for family, weight in TRAIN_WEIGHTS.items() if family != "reading"}


def scene_for(seed: int, index: int, max_shapes: int = 5, layout: Layout = DEFAULT_LAYOUT,
              text_probability: float = 0.5) -> tuple[Scene, np.random.Generator]:
    rng = np.random.default_rng([seed, index])
    return sample_scene(rng, max_shapes=max_shapes, text_probability=text_probability, layout=layout), rng


def image_for(scene: Scene, seed: int, index: int) -> Image.Image:
    """Image ``index`` of split ``seed``: ``scene`` rendered, its scribbles (if any) drawn from its own seed."""
    return render(scene, seed=seed * 1_000_003 + index)


def _save_image(scene: Scene, seed: int, index: int, folder: str, name: str) -> str:
    path = os.path.join(folder, name)
    if not os.path.exists(path):
        image_for(scene, seed, index).save(path, format="PNG", optimize=False)
    return name


def _families(rng, weights: dict[str, int], k: int) -> list[str]:
    names = list(weights)
    p = np.array([weights[n] for n in names], dtype=float)
    return [names[i] for i in rng.choice(len(names), size=k, replace=False, p=p / p.sum())]


def write_split(root: str, name: str, seed: int, num_images: int, kind: str, turns: int = 3,
                layout: Layout = DEFAULT_LAYOUT, drills: tuple[str, ...] = (), text_probability: float = 0.5,
                look_up_turns: int = 0, balanced_counts: bool = False, drills_first: bool = False) -> str:
    """Write split ``name`` under ``root`` (scenes drawn in ``layout``, a text in each with ``text_probability``):
    images in ``root/images/name/``, and

    - kind ``pretrain``: ``name.json``, one caption per image (stage 1);
    - kind ``instruct``: ``name.json``, a ``turns``-turn conversation per image (stage 2), then one more turn per entry
      of ``drills`` (training-only families, ``questions.DRILLS``) where the scene allows it, the count drills'
      answers drawn balanced with ``balanced_counts`` (``questions.count``); the first ``turns`` turns are the same
      with or without drills; with ``drills_first`` the same turns with the drills' first (the held-out questions are
      each asked as a first turn, and what a drill teaches in late turns only was measured not to carry over);
    - kind ``reading``: ``name.json``, one conversation per image: what is written where a legible text is, else the
      unanswerable family's question (the text missing or illegible, or an absent object's colour), then
      ``look_up_turns`` more turns drawn as stage 2's are (``TRAIN_WEIGHTS``, reading left out), so that a stage
      that teaches reading keeps training the look-ups it shares its weights with;
    - kind ``eval``: ``name.jsonl``, one question per family per image where the scene allows it.
    Returns the path of the written JSON/JSONL."""
    unknown = [d for d in drills if d not in DRILLS]
    if unknown or (drills and kind != "instruct"):
        raise ValueError(f"drills are training-only families of instruct splits, one of {', '.join(DRILLS)}; got "
                         f"{list(drills)} for a {kind} split.")
    if balanced_counts and not set(drills) & set(COUNT_DRILLS):
        raise ValueError(f"balanced_counts draws the answers of the count drills ({', '.join(COUNT_DRILLS)}); got "
                         f"drills {list(drills)}: add one, or leave balanced_counts off.")
    if drills_first and not drills:
        raise ValueError("drills_first puts the drill turns first; no drills were given: add one, or leave it off.")
    if look_up_turns < 0 or (look_up_turns and kind != "reading"):
        raise ValueError(f"look_up_turns (>= 0) follow a reading split's reading question; got {look_up_turns} for a "
                         f"{kind} split.")
    folder = os.path.join(root, "images", name)
    os.makedirs(folder, exist_ok=True)
    records = []
    for index in range(num_images):
        scene, rng = scene_for(seed, index, layout=layout, text_probability=text_probability)
        image = f"{name}/{_save_image(scene, seed, index, folder, f'{index:06d}.png')}"
        if kind == "pretrain":
            records.append({"id": f"{name}-{index}", "image": image, "conversations": [
                {"from": "human", "value": f"<image>\n{DESCRIBE}"}, {"from": "gpt", "value": caption(scene)}]})
        elif kind == "instruct":
            asked = []  # the families' turns, then the drills' (the same draws either way)
            for family in _families(rng, TRAIN_WEIGHTS, len(TRAIN_WEIGHTS)):
                qa = ask(scene, family, rng)
                if qa is None:
                    continue
                asked.append(qa)
                if len(asked) == turns:
                    break
            drilled = [qa for drill in drills for qa in ask_turns(scene, drill, rng, balanced_counts)]
            ordered = drilled + asked if drills_first else asked + drilled
            conversation = [turn for k, qa in enumerate(ordered) for turn in (
                {"from": "human", "value": ("<image>\n" if k == 0 else "") + qa.question}, {"from": "gpt", "value": qa.answer})]
            records.append({"id": f"{name}-{index}", "image": image, "conversations": conversation})
        elif kind == "reading":
            qa = ask(scene, "reading", rng) or ask(scene, "unanswerable", rng)
            conversation = [{"from": "human", "value": f"<image>\n{qa.question}"}, {"from": "gpt", "value": qa.answer}]
            asked = {qa.question}
            for family in _families(rng, LOOK_UP_WEIGHTS, len(LOOK_UP_WEIGHTS)):
                if len(conversation) == 2 * (1 + look_up_turns):
                    break
                qa = ask(scene, family, rng)
                if qa is not None and qa.question not in asked:
                    asked.add(qa.question)
                    conversation += [{"from": "human", "value": qa.question}, {"from": "gpt", "value": qa.answer}]
            records.append({"id": f"{name}-{index}", "image": image, "conversations": conversation})
        elif kind == "eval":
            for family in FAMILIES:
                qa = ask(scene, family, rng)
                if qa is not None:
                    records.append({"id": f"{name}-{index}-{family}", "image": image, **asdict(qa), "scene": index})
        else:
            raise ValueError(f"kind must be pretrain, instruct, reading or eval; got {kind!r}.")
    path = os.path.join(root, f"{name}.{'jsonl' if kind == 'eval' else 'json'}")
    with open(path, "w", encoding="utf-8") as handle:
        if kind == "eval":
            handle.writelines(json.dumps(r) + "\n" for r in records)
        else:
            json.dump(records, handle)
    return path
