"""The paper's result tables as markdown rows, from one run or several.

Columns follow the paper: Table 1 (VQAv2, GQA, VizWiz, SciQA-IMG, TextVQA), Table 2 (POPE rand/pop/adv F1,
MMBench EN/CN, SEED-Bench), Table 5 (GQA, VizWiz, SciQA-IMG, TextVQA, POPE avg F1, MMBench EN/CN, SEED-Bench).
A cell is a percentage with one decimal; ``‡`` marks a validation-set number (VQAv2 val, VizWiz val), as the
paper marks its VizWiz val results; ``-`` a benchmark not run.

    python -m sparsecut.evaluation.tables runs/eval/*/          # every run's metrics.json, one row per model
"""

from __future__ import annotations

import argparse
import json
import os
import sys

TABLES: dict[str, tuple[tuple[str, str], ...]] = {
    "Table 1": (("VQAv2", "vqav2"), ("GQA", "gqa"), ("VizWiz", "vizwiz"), ("SciQA-IMG", "scienceqa"),
                ("TextVQA", "textvqa")),
    "Table 2": (("POPE rand", "pope/random"), ("POPE pop", "pope/popular"), ("POPE adv", "pope/adversarial"),
                ("MMBench EN", "mmbench/en"), ("MMBench CN", "mmbench/cn"), ("SEEDBench", "seedbench")),
    "Table 5": (("GQA", "gqa"), ("VizWiz", "vizwiz"), ("SciQA-IMG", "scienceqa"), ("TextVQA", "textvqa"),
                ("POPE avg", "pope/avg"), ("MMBench EN", "mmbench/en"), ("MMBench CN", "mmbench/cn"),
                ("SEEDBench", "seedbench")),
}


def markdown(rows: dict[str, dict[str, str]], every_table: bool = False) -> str:
    """``rows``: model name -> cells (column key -> text). Each table that has a filled cell (or every table)
    becomes a header plus one row per model."""
    out = []
    for title, columns in TABLES.items():
        if not every_table and not any(key in cells for cells in rows.values() for _, key in columns):
            continue
        out += [f"{title}", "", "| model | " + " | ".join(label for label, _ in columns) + " |",
                "|---|" + "---|" * len(columns)]
        out += [f"| {name} | " + " | ".join(cells.get(key, "-") for _, key in columns) + " |" for name, cells in rows.items()]
        out.append("")
    return "\n".join(out)


def collect(run_dirs: list[str]) -> dict[str, dict[str, str]]:
    """model name -> cells merged over the runs' ``metrics.json`` (a later run of the same cell wins)."""
    rows: dict[str, dict[str, str]] = {}
    for run in run_dirs:
        path = os.path.join(run, "metrics.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} does not exist; pass output folders of python -m sparsecut.evaluation.")
        with open(path, encoding="utf-8") as handle:
            result = json.load(handle)
        rows.setdefault(result["name"], {}).update(result["cells"])
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sparsecut.evaluation.tables", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="output folders of python -m sparsecut.evaluation")
    args = parser.parse_args(argv)
    sys.stdout.write(markdown(collect(args.runs), every_table=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
