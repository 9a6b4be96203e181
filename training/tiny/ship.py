"""Ship the trained family into ``assets/`` and score what was shipped.

    python -m training.tiny.ship --from runs/tiny --to assets/sparsecut-tiny     # export + score + card
    python -m training.tiny.ship --score-only --to assets/sparsecut-tiny         # rescore the shipped checkpoints

Export writes the zoo's compact format (``sparsecut.zoo.export_family``: the vision tower and tokenizer once, each
member's remaining weights in fp16). The results table is then made from the *shipped* checkpoints, loaded by name
through the zoo as a user would, on the held-out split (its own seed, regenerated here from the generator), and
saved as ``results.md`` + ``results.json`` beside them; ``results.json`` also keeps the scores of the first
``SUBSET`` questions, which the tests reproduce.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager

from .dataset import write_split
from .evaluate import predict, read_eval, results_table, score
from .family import FAMILY, Budget, split_seed

SUBSET = 200  # questions the tests rescore (the first ones of the held-out split)
TEST_IMAGES = Budget().test_images


def export(root: str, names: list[str], out_dir: str) -> None:
    """Export trained members ``root/models/<name>`` (all from one vision tower) to ``out_dir``."""
    from sparsecut import SparseCutForConditionalGeneration, SparseCutProcessor, zoo

    models = {name: SparseCutForConditionalGeneration.from_pretrained(os.path.join(root, "models", name)) for name in names}
    processor = SparseCutProcessor.from_pretrained(os.path.join(root, "models", names[0]))
    zoo.export_family(models, processor, out_dir)


def held_out(seed: int, images: int, folder: str) -> list[dict]:
    """Write the first ``images`` scenes of the held-out split under ``folder``; return its questions in order."""
    return read_eval(write_split(folder, "test", split_seed(seed, "test"), images, "eval"))


@contextmanager
def assets_at(family_dir: str):
    """Within the block, ``sparsecut.zoo`` resolves names from the assets folder holding ``family_dir``."""
    before = os.environ.get("SPARSECUT_ASSETS")
    os.environ["SPARSECUT_ASSETS"] = os.path.dirname(os.path.abspath(family_dir))
    try:
        yield
    finally:
        if before is None:
            del os.environ["SPARSECUT_ASSETS"]
        else:
            os.environ["SPARSECUT_ASSETS"] = before


def score_shipped(family_dir: str, names: list[str], seed: int = 0, images: int = TEST_IMAGES,
                  subset: int | None = SUBSET, progress: bool = True, data_dir: str | None = None) -> dict:
    """Score the models ``names`` shipped in ``family_dir``, loaded by name through the zoo, on the held-out split:
    {"seed", "questions", "images", "results", "subset"}. ``data_dir``: a folder that already holds the split
    (``test.jsonl`` and ``images/``, as the pipeline's OUTPUT/data does); otherwise its first ``images`` scenes are
    written to a temporary folder."""
    from sparsecut import SparseCutForConditionalGeneration, SparseCutProcessor

    with ExitStack() as stack:
        stack.enter_context(assets_at(family_dir))
        if data_dir is None:
            data_dir = stack.enter_context(tempfile.TemporaryDirectory())
            records = held_out(seed, images, data_dir)
        else:
            records = read_eval(os.path.join(data_dir, "test.jsonl"))
        results, first = {}, {}
        for name in names:
            model = SparseCutForConditionalGeneration.from_pretrained(name).eval()
            predictions = predict(model, SparseCutProcessor.from_pretrained(name), records, os.path.join(data_dir, "images"),
                                  progress=progress)
            results[name] = score(records, predictions)
            if subset:
                first[name] = score(records[:subset], predictions[:subset])
    return {"seed": split_seed(seed, "test"), "questions": len(records), "images": len({r["scene"] for r in records}),
            "results": results, "subset": {"questions": subset, "results": first}}


def write_results(out_dir: str, scored: dict) -> str:
    """``results.json`` and ``results.md`` in ``out_dir``; returns the markdown table."""
    table = results_table(scored["results"])
    with open(os.path.join(out_dir, "results.json"), "w", encoding="utf-8") as handle:
        json.dump(scored, handle, indent=2)
    with open(os.path.join(out_dir, "results.md"), "w", encoding="utf-8") as handle:
        handle.write(f"Held-out split: {scored['questions']} questions on {scored['images']} scenes (generator seed "
                     f"{scored['seed']}, never used for training), scored from the shipped fp16 checkpoints; accuracy "
                     "in %, existence F1 and unanswerable recall as fractions.\n\n" + table)
    return table


def write_card(out_dir: str, run_root: str, scored: dict) -> None:
    """``MODEL_CARD.md``: how the family was made (command, seed, data sizes, budget, time) and what it scores."""
    run = scored["run"]
    budget = run["budget"]
    with open(os.path.join(run_root, "backbones", "pretraining.json"), encoding="utf-8") as handle:
        pretraining = json.load(handle)
    members = "\n".join(f"| `{name}` | {spec['pattern']} | {'yes' if spec['high_res'] else 'no'} |"
                         for name, spec in FAMILY.items() if name in scored["results"])
    card = f"""# The sparsecut-tiny family

The embedded default models of SparseCut: a miniature of the paper's setup, trained from scratch on the synthetic
benchmark of `training/tiny/` by one command. They answer questions about synthetic 128-px scenes (coloured
shapes on a 3x3 grid, small printed text); they know nothing else.

## How it was made

    {run["command"]}

- seed {run["seed"]}; device: {run["device"]}; {run["jobs"]} member(s) trained side by side; training took
  {run["train_seconds"] / 60:.1f} min, everything (data, backbones, family, export, scoring) {run["seconds"] / 60:.1f} min.
- data (generator splits never shared): stage 1 {budget["pretrain_images"]} captioned scenes, stage 2
  {budget["instruct_images"]} scenes with 3-turn conversations, held-out {scored["images"]} scenes
  ({scored["questions"]} questions, generator seed {scored["seed"]}); backbones from a separate split.
- backbones: BPE tokenizer (`tokenizers`, {pretraining["corpus_texts"]} texts), Llama-style LM (8 layers, width 128)
  pretrained {budget["lm_steps"]} steps (final loss {pretraining["lm_final_loss"]:.3f}); CLIP-style ViT (8 layers,
  width 128, 16-px patches, 64-px input) pretrained contrastively with hard negatives {budget["clip_steps"]} steps
  (final loss {pretraining["clip_final_loss"]:.3f}).
- every member: stage 1 (adapters only, lr 1e-3) {budget["stage1_steps"]} steps, stage 2 (adapters + LLM, lr
  {budget["stage2_lr"]}) {budget["stage2_steps"]} steps, batch {budget["batch"]}, through `python -m training`.
- stored: the vision tower and tokenizer once in `shared/`, each member's other weights in fp16 safetensors
  (`sparsecut.zoo` assembles and caches an fp32 folder on first load).

| member | pattern | high-res |
|---|---|---|
{members}

## Scores (from these files, `python -m training.tiny.ship --score-only --to {out_dir}`)

{results_table(scored["results"])}
"""
    with open(os.path.join(out_dir, "MODEL_CARD.md"), "w", encoding="utf-8") as handle:
        handle.write(card)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.tiny.ship", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="source", help="the OUTPUT folder of python -m training.tiny")
    parser.add_argument("--to", required=True, help="the family folder in assets/, e.g. assets/sparsecut-tiny")
    parser.add_argument("--models", default=",".join(FAMILY))
    parser.add_argument("--seed", type=int, default=0, help="the seed the family was trained with (picks the held-out split)")
    parser.add_argument("--score-only", action="store_true", help="rescore what is already shipped in --to")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    if not args.score_only:
        missing = [n for n in names if not args.source or not os.path.isdir(os.path.join(args.source, "models", n))]
        if missing:
            parser.error(f"no trained model(s) {missing} under {args.source!r}/models; run python -m training.tiny first")
        export(args.source, names, args.to)
    started = time.time()
    scored = score_shipped(args.to, names, args.seed)
    previous = os.path.join(args.to, "results.json")
    if os.path.isfile(previous):  # keep how the family was trained
        with open(previous, encoding="utf-8") as handle:
            scored["run"] = json.load(handle).get("run")
    print(write_results(args.to, scored))
    print(f"Scored in {time.time() - started:.0f}s: {os.path.join(args.to, 'results.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
