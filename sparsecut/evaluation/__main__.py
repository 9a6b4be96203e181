"""python -m sparsecut.evaluation: evaluate a model on one benchmark split (see ``runner.py``).

    python -m sparsecut.evaluation --model runs/stage2 --benchmark gqa --data-dir data/gqa --output runs/eval/gqa
    accelerate launch --num_processes 4 -m sparsecut.evaluation --model runs/stage2 --benchmark pope \\
        --data-dir data/pope --output runs/eval/pope                  # data-parallel, same result as one process
    python -m sparsecut.evaluation.tables runs/eval/*/                # the paper's tables from several runs
"""

from __future__ import annotations

import argparse
import sys

from .benchmarks import BENCHMARKS
from .generation import DTYPES
from .metrics import VQA_PROCESSORS
from .runner import RunConfig, run


def _layouts() -> str:
    return "\n".join(f"{name} ({b.description}; default split {b.default_split}):\n{b.layout}"
                     for name, b in BENCHMARKS.items())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sparsecut.evaluation", description=__doc__,
                                     epilog="--data-dir layouts (D = --data-dir):\n" + _layouts(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a shipped name (sparsecut-tiny), a SparseCut folder or an HF LLaVA folder")
    parser.add_argument("--benchmark", required=True, choices=sorted(BENCHMARKS))
    parser.add_argument("--data-dir", required=True, help="the benchmark's files, in their released layout (below)")
    parser.add_argument("--output", required=True, help="folder for predictions, metrics and tables; rerun to resume")
    parser.add_argument("--split", help="benchmark split (defaults below)")
    parser.add_argument("--batch-size", type=int, default=8, help="questions per generate() call, per process")
    parser.add_argument("--max-new-tokens", type=int, help="default 128 (LLaVA-1.5); 6 for synthetic")
    parser.add_argument("--limit", type=int, help="only the first N questions")
    parser.add_argument("--vqa-processor", choices=VQA_PROCESSORS,
                        help="VQA answer normalisation: official (vqaEval.py; default for vqav2, vizwiz) or evalai "
                             "(LLaVA's m4c/EvalAI processor; default for textvqa)")
    parser.add_argument("--ocr", action="store_true", help="textvqa: Rosetta OCR tokens in the prompt (LLaVA-1.5's setting)")
    parser.add_argument("--lang", choices=("en", "cn"), help="mmbench: prompt language (default: from the split name)")
    parser.add_argument("--no-circular", dest="circular", action="store_false", help="mmbench: ask each question once")
    parser.add_argument("--dtype", default="auto", choices=("auto", *DTYPES))
    parser.add_argument("--template", choices=("vicuna_v1", "plain", "tokenizer"), help="override the chat template")
    parser.add_argument("--name", help="the model's name in the tables (default: the model folder's name)")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU even if a GPU is present")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    args = parser.parse_args(argv)
    result = run(RunConfig(**vars(args)))
    if result is not None:
        with open(f"{args.output}/results.md", encoding="utf-8") as handle:
            print(handle.read(), end="")
        print(f"Predictions, metrics.json and results.md in {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
