"""A reader aligned to the LLM before any question: the reading adapter learns to turn the crops into the text's
characters *as the LLM's own input embeddings*.

A member's reading tokens (``sparsecut.reading``) sit in the LLM's context at the input-embedding level. Trained
through the LLM (the reading stage), they read the words but not one number (README "Step (t)"): the LLM has to learn
what the tokens mean and the adapter has to learn to say it, together, from ~3,000 answers. The spelling tower already
carries each text spelled by position (``training.tiny.dense --spell``), so the adapter's half can be learned without
the LLM at all: reading token k is fitted to the LLM's input embedding of the text's k-th character (its single-
character token: ``6``, ``3``; ``O``, ``W``, ``L``), and to zero past the text's end and where no text can be read (no
text, or a scribble). A zero input is what the LLM sees at an empty visual position, and it attends to nothing there.
The LLM then finds the text in its context as text, which a pretrained LM copies (README "Step (m)": characters one
per position are copied within a few hundred steps, numbers included).

The tower is frozen, so its crop tokens are computed once; the adapter (queries, attention blocks, MLP) is fitted to
them in seconds. Held-out scores: each slot's nearest target (the characters' embeddings and zero) and whole texts.

    python -m training.tiny.reader --member sparsecut-tiny --tower runs/tower-spell-6k --output runs/reader
    # then give the folder as the reading tower: probe --reading-tower runs/reader, or the pipeline's reading stage

The output folder is the tower (copied, with its ``pretraining.json``) plus ``READER_WEIGHTS`` and ``READER_RECORD``:
``sparsecut.convert.with_reading_tower`` loads the aligned adapter instead of a fresh one.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

import numpy as np
import torch
from safetensors.torch import save_file

from sparsecut.evaluation.synthetic.dataset import image_for, scene_for
from sparsecut.evaluation.synthetic.scenes import Scene
from sparsecut.reading import READER_WEIGHTS

from .dense import CHARS
from .family import LAYOUT, READING_TEXT_PROBABILITY
from .loop import fit

READER_RECORD = "reader.json"  # the call, seconds, losses and held-out scores, beside READER_WEIGHTS
READER_BATCH, READER_LR = 64, 1e-3


def character_ids(tokenizer, characters) -> dict[str, int]:
    """{character: the LLM's token id for it alone}; raises for a character the tokenizer splits."""
    ids = {}
    for char in characters:
        encoded = tokenizer.encode(char, add_special_tokens=False)
        if len(encoded) != 1:
            raise ValueError(f"the tokenizer writes {char!r} as {len(encoded)} tokens: a reader aligns one token per "
                             "character, so it needs an LLM whose vocabulary has each character alone.")
        ids[char] = encoded[0]
    return ids


def legible_text(scene: Scene) -> str:
    """The scene's text if it can be read, else "" (no text, or a scribble)."""
    return scene.text.text if scene.text is not None and scene.text.legible else ""


def reader_targets(texts: list[str], embeddings: torch.Tensor, ids: dict[str, int], slots: int) -> torch.Tensor:
    """(S, slots, D_t): slot k of text s is the input embedding of its k-th character, zero past its end."""
    targets = torch.zeros(len(texts), slots, embeddings.shape[1])
    for row, text in enumerate(texts):
        if len(text) > slots:
            raise ValueError(f"the text {text!r} has more characters than the model's {slots} reading tokens.")
        for k, char in enumerate(text):
            targets[row, k] = embeddings[ids[char]]
    return targets


@torch.no_grad()
def crop_tokens(model, processor, seed: int, scenes: int, batch: int = 64) -> tuple[torch.Tensor, list[str]]:
    """For ``scenes`` scenes of split ``seed`` (the reading split's mix of texts): the reading tower's tokens of each
    scene's crops, as the model hands them to its reading adapter (S, g*g * M, D_v), and each scene's legible text."""
    tokens, texts = [], []
    for start in range(0, scenes, batch):
        crops = []
        for index in range(start, min(start + batch, scenes)):
            scene = scene_for(seed, index, layout=LAYOUT, text_probability=READING_TEXT_PROBABILITY)[0]
            crops.append(processor.image_views(image_for(scene, seed, index), high_res=True)[1:])  # (g*g, 3, H, W)
            texts.append(legible_text(scene))
        tokens.append(model.model.reading_tower_tokens(torch.stack(crops).to(model.dtype)).float())  # (B, g*g * M, Dv)
    return torch.cat(tokens), texts


@torch.no_grad()
def reader_scores(adapter, tokens: torch.Tensor, texts: list[str], embeddings: torch.Tensor,
                  ids: dict[str, int]) -> dict:
    """Each slot read as its nearest target (a character's embedding, or zero for "none"): slot accuracy, and exact
    texts over all, numbers, words and the unreadable (no text or a scribble: every slot "none")."""
    characters = sorted(ids)
    candidates = torch.cat([torch.zeros(1, embeddings.shape[1]), embeddings[[ids[c] for c in characters]]])  # (1 + C, Dt)
    read = adapter(tokens)  # (S, K, Dt)
    nearest = torch.cdist(read.flatten(0, 1), candidates).argmin(-1).view(read.shape[:2])  # (S, K)
    names = [""] + characters
    got = ["".join(names[i] for i in row) for row in nearest.tolist()]
    slots = read.shape[1]
    wanted = [[names.index(c) for c in text] + [0] * (slots - len(text)) for text in texts]
    groups = {"texts": range(len(texts)),
              "numbers": [i for i, t in enumerate(texts) if t.isdigit()],
              "words": [i for i, t in enumerate(texts) if t.isalpha()],
              "unreadable": [i for i, t in enumerate(texts) if not t]}
    scores = {"slots": float((nearest == torch.tensor(wanted)).float().mean() * 100)}
    for name, rows in groups.items():
        scores[name] = float(np.mean([got[i] == texts[i] for i in rows]) * 100) if rows else None
        scores[f"{name}_n"] = len(rows)
    scores["examples"] = [{"text": texts[i], "read": got[i]} for i in range(min(8, len(texts)))]
    return scores


def align_reader(model, processor, seed: int, scenes: int, steps: int, batch: int = READER_BATCH, lr: float = READER_LR,
                 test_seed: int | None = None, test_scenes: int = 0, progress: bool = True) -> dict:
    """Fit ``model``'s reading adapter (with its reading tower, frozen) so that its tokens are the LLM's character
    embeddings of ``scenes`` scenes of split ``seed``; returns the losses and, with ``test_scenes``, the held-out
    scores of split ``test_seed`` before and after."""
    adapter = model.model.reading_adapter
    if adapter is None or adapter.vision_tower is None:
        raise ValueError("a reader is aligned on a reading tower: give the model one first "
                         "(sparsecut.convert.with_reading_tower).")
    tokenizer = processor.tokenizer
    embeddings = model.get_input_embeddings().weight.detach().float()
    ids = character_ids(tokenizer, CHARS)
    tokens, texts = crop_tokens(model, processor, seed, scenes)
    targets = reader_targets(texts, embeddings, ids, model.config.reading_tokens)
    scale = embeddings[list(ids.values())].pow(2).sum(-1).mean()  # a character embedding's mean squared norm
    trained = [p for n, p in adapter.named_parameters() if not n.startswith("vision_tower.")]
    for param in adapter.vision_tower.parameters():
        param.requires_grad = False
    for param in trained:
        param.requires_grad = True
    held_out = crop_tokens(model, processor, test_seed, test_scenes) if test_scenes else None
    before = reader_scores(adapter, *held_out, embeddings, ids) if held_out else None

    def step_loss(generator):
        rows = torch.randperm(len(texts), generator=generator)[:batch]
        return (adapter(tokens[rows]) - targets[rows]).pow(2).sum(-1).mean() / scale

    losses = fit(adapter, step_loss, steps, lr, seed, weight_decay=0.0, betas=(0.9, 0.98), warmup_ratio=0.05,
                 desc="reader", progress=progress, param_groups=[{"params": trained}])
    after = reader_scores(adapter, *held_out, embeddings, ids) if held_out else None
    return {"losses": losses, "before": before, "after": after}


def save_reader(model, tower_dir: str, output: str, record: dict) -> None:
    """Write the reader folder: the tower as ``tower_dir`` holds it, the aligned adapter, and ``record``."""
    shutil.copytree(tower_dir, output, dirs_exist_ok=True)
    adapter = model.model.reading_adapter
    weights = {n: p.detach().contiguous() for n, p in adapter.state_dict().items() if not n.startswith("vision_tower.")}
    save_file(weights, os.path.join(output, READER_WEIGHTS))
    with open(os.path.join(output, READER_RECORD), "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.tiny.reader", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--member", required=True, help="a member with reading tokens (shipped name or checkpoint "
                        "folder): its LLM's embeddings are the targets, its config the adapter's shape")
    parser.add_argument("--tower", required=True, help="the reading tower (a python -m training.tiny.dense output)")
    parser.add_argument("--output", required=True, help="the reader folder (the tower, the adapter, reader.json)")
    parser.add_argument("--scenes", type=int, default=6000)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=READER_BATCH)
    parser.add_argument("--lr", type=float, default=READER_LR)
    parser.add_argument("--seed", type=int, default=5, help="the scene split it fits on")
    parser.add_argument("--test-seed", type=int, default=7_000, help="the held-out scene split it is scored on")
    parser.add_argument("--test-scenes", type=int, default=1000)
    args = parser.parse_args(argv)
    if args.seed == args.test_seed:
        parser.error("--seed and --test-seed must differ: the scores are held-out scores.")
    from sparsecut import SparseCutForConditionalGeneration, SparseCutProcessor
    from sparsecut.convert import with_reading_tower

    started = time.time()
    torch.manual_seed(args.seed)
    if os.path.isfile(os.path.join(args.tower, READER_WEIGHTS)):
        parser.error(f"{args.tower} is a reader already: give the tower it was aligned on.")
    model = SparseCutForConditionalGeneration.from_pretrained(args.member, dtype=torch.float32)
    processor = SparseCutProcessor.from_pretrained(args.member)
    with_reading_tower(model, args.tower)
    fitted = align_reader(model, processor, args.seed, args.scenes, args.steps, args.batch, args.lr, args.test_seed,
                          args.test_scenes)
    after = fitted["after"]
    record = {**vars(args), "seconds": time.time() - started, "final_loss": fitted["losses"][-1],
              "losses": fitted["losses"], "before": fitted["before"], "after": after}
    save_reader(model, args.tower, args.output, record)
    print(f"Done in {record['seconds']:.0f}s, final loss {record['final_loss']:.4f}: {args.output}")
    if after:
        print("held-out: slots {slots:.1f}%, texts {texts:.1f}%, numbers {numbers:.1f}%, words {words:.1f}%, "
              "unreadable {unreadable:.1f}%".format(**after))
    return 0


if __name__ == "__main__":
    sys.exit(main())
