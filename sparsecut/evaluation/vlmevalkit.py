"""SparseCut as a VLMEvalKit model (``generate_inner``), the harness the paper's numbers come from.

VLMEvalKit looks models up in ``vlmeval.config.supported_VLM``; ``register`` adds SparseCut there, and running
this module registers it and then runs VLMEvalKit's own ``run.py`` with the arguments after ``--``:

    git clone https://github.com/open-compass/VLMEvalKit && pip install -e VLMEvalKit
    python -m sparsecut.evaluation.vlmevalkit --model-path runs/stage2 --run VLMEvalKit/run.py -- \\
        --data MMBench_DEV_EN MMBench_DEV_CN SEEDBench_IMG ScienceQA_TEST POPE GQA_TestDev_Balanced --model sparsecut
    torchrun --nproc-per-node 4 -m sparsecut.evaluation.vlmevalkit --model-path runs/stage2 --run VLMEvalKit/run.py \\
        -- --data MMBench_DEV_EN --model sparsecut                     # one process per GPU, as VLMEvalKit does

Multiple-choice datasets get LLaVA's prompt (``build_prompt``: hint, question, ``A. ...`` lines, the letter
instruction, in Chinese for Chinese questions), as VLMEvalKit's own LLaVA model does; other datasets use the
dataset's prompt. Importable without VLMEvalKit (the base class is then ``object``).
"""

from __future__ import annotations

import argparse
import os
import re
import runpy
import sys
from functools import partial

import torch

from . import generation, prompts

try:
    from vlmeval.vlm.base import BaseModel as _Base
except ImportError:  # VLMEvalKit is not installed
    _Base = object

_CHINESE = re.compile(r"[\u4e00-\u9fff]")


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and value != value) or str(value).strip().lower() in ("", "nan")


class SparseCutVLM(_Base):
    """A VLMEvalKit model; ``model_path``: a shipped name, SparseCut folder or HF LLaVA folder."""

    INSTALL_REQ = False
    INTERLEAVE = True

    def __init__(self, model_path: str, max_new_tokens: int = 128, dtype: str = "auto", template: str | None = None,
                 **kwargs):
        device = "cuda" if torch.cuda.is_available() else "cpu"  # run.py gives each process its own GPUs
        self.model, self.processor = generation.load(model_path, device, generation.evaluation_dtype(dtype, device), template)
        self.max_new_tokens = max_new_tokens

    def use_custom_prompt(self, dataset) -> bool:
        from vlmeval.dataset import DATASET_TYPE

        return dataset is not None and DATASET_TYPE(dataset) == "MCQ"

    def build_prompt(self, line, dataset=None) -> list[dict]:
        """LLaVA-1.5's multiple-choice prompt for a dataset row (``question``, ``hint``, ``A``, ``B``, ...)."""
        options = {c: str(line[c]) for c in prompts.LETTERS if c in line and not _missing(line[c])}
        hint = line["hint"] if "hint" in line and not _missing(line["hint"]) else None
        question = str(line["question"])
        lang = "cn" if _CHINESE.search(question + "".join(options.values())) else "en"
        text = prompts.lettered(question, options, prefix=f"{hint}\n" if hint else "", lang=lang)
        return [dict(type="image", value=path) for path in self.dump_image(line, dataset)] + [dict(type="text", value=text)]

    def generate_inner(self, message: list[dict], dataset=None) -> str:
        """``message``: ``[{"type": "image" | "text", "value": path | text}, ...]`` in order."""
        images = [m["value"] for m in message if m["type"] == "image"]
        content = "".join(f"{self.processor.image_token}\n" if m["type"] == "image" else m["value"] for m in message)
        return generation.answer(self.model, self.processor, [images], [content], self.max_new_tokens)[0]


def register(name: str = "sparsecut", **kwargs) -> None:
    """Make ``--model <name>`` in VLMEvalKit build ``SparseCutVLM(**kwargs)``."""
    from vlmeval.config import supported_VLM

    supported_VLM[name] = partial(SparseCutVLM, **kwargs)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ours, theirs = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(prog="python -m sparsecut.evaluation.vlmevalkit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-path", required=True, help="a shipped name, SparseCut folder or HF LLaVA folder")
    parser.add_argument("--run", required=True, help="VLMEvalKit's run.py")
    parser.add_argument("--name", default="sparsecut", help="the model name to pass to run.py's --model")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--dtype", default="auto")
    args = parser.parse_args(ours)
    if not os.path.isfile(args.run):
        parser.error(f"{args.run} does not exist; pass the run.py of a VLMEvalKit checkout.")
    register(args.name, model_path=args.model_path, max_new_tokens=args.max_new_tokens, dtype=args.dtype)
    saved, sys.argv = sys.argv, [args.run, *theirs]
    try:
        runpy.run_path(args.run, run_name="__main__")
    finally:
        sys.argv = saved
    return 0


if __name__ == "__main__":
    sys.exit(main())
