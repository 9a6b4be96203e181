"""Ship the trained family into ``assets/`` and score what was shipped.

    python -m training.tiny.ship --from runs/tiny --to assets/sparsecut-tiny     # export + score + card
    python -m training.tiny.ship --score-only --to assets/sparsecut-tiny         # rescore the shipped checkpoints

Export writes the zoo's compact format (``export.py``: the vision tower and tokenizer once; per member, in fp16, its
adapters and its LoRA as a delta over the base LLM, which the zoo takes from the installed base). The results table is then made from the *shipped* checkpoints, loaded by name
through the zoo as a user would, on the held-out split (its own seed, regenerated here from the generator), and
saved as ``results.md`` + ``results.json`` beside them; ``results.json`` also keeps the scores of the first
``SUBSET`` questions, which the tests reproduce. Each member's answers are kept beside them, one per question
(``answers.py``): a rescore generates only the answers a member's files or a changed benchmark invalidated.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager

from sparsecut.evaluation.synthetic.dataset import write_split
from sparsecut.evaluation.synthetic.questions import COUNT_DRILLS
from .continued import lineage
from .answers import ANSWERS, AnswerStore, question_keys
from .evaluate import predict, read_eval, results_table, score
from .export import export_family
from .family import BACKBONES, DRILL_FIELDS, FAMILY, LAYOUT, Budget, backbone_dirs, split_seed
from .progress import final_dir
from sparsecut.evaluation.synthetic.scenes import layout_named

SUBSET = 200  # questions the tests rescore (the first ones of the held-out split)
LORA_TARGETS = {"all": "q, k, v, o, gate, up, down", "attention": "q, k, v, o"}
TEST_IMAGES = Budget().test_images


def export(root: str, records: dict[str, dict], out_dir: str, folders: dict[str, str]) -> dict[str, dict]:
    """Export the members a run in ``root`` trained (all from its vision tower and LLM; ``folders``: name -> its final
    model, ``progress.final_dir``) to ``out_dir`` as deltas over the run's base LLM, joining the family there when it
    has the same tower and base (``export.py``). ``records``: name -> how it was trained. Returns the records of every
    member now shipped in ``out_dir`` (those that stayed, from its ``results.json``, then ``records``)."""
    from sparsecut import SparseCutForConditionalGeneration, SparseCutProcessor
    from sparsecut.base_models import BASE_MODELS, resolve_text_backbone, sha256_of
    from sparsecut.zoo import manifest
    from training.trainer import LORA_DIR

    _, text = backbone_dirs(root)
    with open(os.path.join(root, "backbones", BACKBONES), encoding="utf-8") as handle:
        tower = {k: v for k, v in json.load(handle).items() if k not in ("text", "tower_from", "tower_from_sha256")}
    sources = {name: folders[name] for name in records}  # in the records' order
    models = {name: SparseCutForConditionalGeneration.from_pretrained(folder) for name, folder in sources.items()}
    processor = SparseCutProcessor.from_pretrained(next(iter(sources.values())))
    digest = BASE_MODELS[text].sha256 if text in BASE_MODELS else sha256_of(os.path.join(resolve_text_backbone(text), "model.safetensors"))
    loras = {name: os.path.join(folder, LORA_DIR) for name, folder in sources.items() if os.path.isdir(os.path.join(folder, LORA_DIR))}
    stayed = export_family(models, processor, out_dir, base={"text": text, "sha256": digest}, loras=loras,
                           sources=sources, tower_record=tower)
    shipped = {**previous_members(out_dir, stayed), **records}
    return {name: shipped[name] for name in manifest(out_dir)["models"]}  # in the family's order


def held_out(seed: int, images: int, folder: str, layout: str = LAYOUT.name) -> list[dict]:
    """Write the first ``images`` scenes of the held-out split (drawn in ``layout``) under ``folder``; return its
    questions in order."""
    return read_eval(write_split(folder, "test", split_seed(seed, "test"), images, "eval", layout=layout_named(layout)))


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
                  subset: int | None = SUBSET, progress: bool = True, data_dir: str | None = None,
                  layout: str = LAYOUT.name, answers_dir: str | None = None,
                  earlier_answers: str | None = None) -> dict:
    """Score the models ``names`` shipped in ``family_dir``, loaded by name through the zoo, on the held-out split:
    {"seed", "questions", "images", "results", "subset", "scored"}. ``data_dir``: a folder that already holds the split
    (``test.jsonl`` and ``images/``, as the pipeline's OUTPUT/data does); otherwise its first ``images`` scenes are
    written to a temporary folder, drawn in ``layout``. ``answers_dir``: keep each model's answers there, one per
    question (``answers.py``), and generate only those it lacks: a member reshipped as it was, or a benchmark that
    changed some questions, costs only the new answers; ``earlier_answers``: another such folder to reuse answers
    from (for the same files). ``scored``: name -> the shipped files and the questions."""
    from sparsecut import SparseCutForConditionalGeneration, SparseCutProcessor, zoo

    with ExitStack() as stack:
        stack.enter_context(assets_at(family_dir))
        if data_dir is None:
            data_dir = stack.enter_context(tempfile.TemporaryDirectory())
            records = held_out(seed, images, data_dir, layout)
        else:
            records = read_eval(os.path.join(data_dir, "test.jsonl"))
        image_root = os.path.join(data_dir, "images")
        keys = question_keys(records, image_root)
        asked = hashlib.sha256("".join(keys).encode()).hexdigest()[:16]
        results, first, scored = {}, {}, {}
        for name in names:
            files = zoo.content_key(name)
            scored[name] = f"{files}-{asked}"
            store = AnswerStore(answers_dir, name, files, earlier_answers)
            missing = [i for i, key in enumerate(keys) if key not in store]
            if missing:
                model = SparseCutForConditionalGeneration.from_pretrained(name).eval()
                new = predict(model, SparseCutProcessor.from_pretrained(name), [records[i] for i in missing],
                              image_root, progress=progress)
                store.update({keys[i]: answer for i, answer in zip(missing, new)})
            predictions = [store[key] for key in keys]
            store.save(keys)
            results[name] = score(records, predictions)
            if subset:
                first[name] = score(records[:subset], predictions[:subset])
    return {"seed": split_seed(seed, "test"), "questions": len(records), "images": len({r["scene"] for r in records}),
            "results": results, "subset": {"questions": subset, "results": first}, "scored": scored}


def shipped_results(family_dir: str) -> dict | None:
    """A family folder's ``results.json`` (None where it has none yet)."""
    path = os.path.join(family_dir, "results.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


PATTERN_MEMBERS = [name for name, spec in FAMILY.items() if spec["pattern"] != "llava" and not spec["high_res"]]


def paper_tables(results: dict[str, dict]) -> str:
    """Markdown: the paper's Table 4 (reading with and without high-res fusion) and Table 3 (the shortcut patterns,
    all without high-res, overall accuracy with its 95% interval) at tiny scale, from the members in ``results``
    (a table whose members are missing is left out)."""
    parts = []
    reading = {name: results[name]["families"].get("reading") for name in ("sparsecut-tiny", "sparsecut-tiny-lowres",
                                                                           "llava-tiny") if name in results}
    if len(reading) == 3 and None not in reading.values():
        high, low, llava = (100 * reading[n] for n in ("sparsecut-tiny", "sparsecut-tiny-lowres", "llava-tiny"))
        parts.append(f"**Table 4 at tiny scale** (reading, exact match): sparsecut-tiny with high-res fusion {high:.1f}%, "
                     f"sparsecut-tiny-lowres {low:.1f}% ({high - low:+.1f} points from fusing the high-res crops), "
                     f"llava-tiny {llava:.1f}% (it sees the low-res view only).")
    if all(name in results for name in PATTERN_MEMBERS):
        rows = sorted(PATTERN_MEMBERS, key=lambda name: -results[name]["overall"])
        lines = ["**Table 3 at tiny scale** (shortcut patterns, all without high-res fusion; overall accuracy, 95% "
                 "bootstrap interval over scenes):", "", "| member | pattern | overall | 95% interval |", "|---|---|---|---|"]
        for name in rows + [n for n in ("llava-tiny",) if n in results]:
            low, high = results[name]["overall_interval"]
            lines.append(f"| {name} | {FAMILY[name]['pattern']} | {100 * results[name]['overall']:.1f} | "
                         f"{100 * low:.1f}-{100 * high:.1f} |")
        by_pattern = {FAMILY[name]["pattern"]: results[name] for name in PATTERN_MEMBERS}

        def gap(a: str, b: str) -> str:
            (a_low, a_high), (b_low, b_high) = by_pattern[a]["overall_interval"], by_pattern[b]["overall_interval"]
            apart = a_low > b_high or b_low > a_high
            return (f"{100 * (by_pattern[a]['overall'] - by_pattern[b]['overall']):+.1f} points "
                    f"({'intervals apart' if apart else 'intervals overlap'})")

        best = FAMILY[rows[0]]["pattern"]
        lines += ["", f"The paper's ordering: sparse-uniform best of the six: {'yes' if best == 'sparse-uniform' else 'no, ' + best + ' is'}; "
                  f"sparse-uniform over sparse-top {gap('sparse-uniform', 'sparse-top')}; sparse-uniform over "
                  f"sparse-reverse-uniform {gap('sparse-uniform', 'sparse-reverse-uniform')}."]
        parts.append("\n".join(lines))
    return "".join(f"\n{part}\n" for part in parts)


def write_results(out_dir: str, scored: dict) -> str:
    """``results.json`` and ``results.md`` in ``out_dir``; returns the markdown (the results table, then the
    paper's tables at tiny scale where the family has their members)."""
    table = results_table(scored["results"]) + paper_tables(scored["results"])
    with open(os.path.join(out_dir, "results.json"), "w", encoding="utf-8") as handle:
        json.dump(scored, handle, indent=2)
    with open(os.path.join(out_dir, "results.md"), "w", encoding="utf-8") as handle:
        handle.write(f"Held-out split: {scored['questions']} questions on {scored['images']} scenes (generator seed "
                     f"{scored['seed']}, never used for training), scored from the shipped fp16 checkpoints; accuracy "
                     "in %, existence F1 and unanswerable recall / precision as fractions.\n\n" + table)
    return table


def previous_members(family_dir: str, names: list[str]) -> dict[str, dict]:
    """How the members ``names`` already shipped in ``family_dir`` were trained (from its ``results.json``)."""
    shipped = shipped_results(family_dir)
    if not names or shipped is None:
        return {}
    records = shipped.get("members", {})
    unknown = [name for name in names if name not in records]
    if unknown:
        raise ValueError(f"{os.path.join(family_dir, 'results.json')} does not say how {', '.join(unknown)} were trained (a family shipped before "
                         "per-member records): retrain them into it, or ship into an empty folder.")
    return {name: records[name] for name in names}


def _sharing(record: dict) -> str:
    """How a member shared the machine while it trained: "alone" or "N side by side", and its CPU threads where the
    record has them (records made before --threads existed do not)."""
    shared = f"{record['jobs']} side by side" if record["jobs"] > 1 else "alone"
    threads = record.get("threads")
    if not threads:
        return shared
    return f"{shared}, {threads} thread{'s' if threads > 1 else ''}{' each' if record['jobs'] > 1 else ''}"


def _recorded(budget: dict) -> dict:
    """A member's recorded budget, complete: one recorded before ``lora_modules`` existed had the attention LoRA, one
    recorded before a drill's budget field (``DRILL_FIELDS``), ``balanced_counts`` or ``drills_first`` no such drill,
    no balancing, the drills last."""
    return {**budget, "lora_modules": budget.get("lora_modules", "attention"),
            **{field: budget.get(field, 0) for field in (*DRILL_FIELDS, "balanced_counts", "drills_first")}}


TABLED = ("lora_rank", "lora_modules", "stage2_lr")  # budget fields the card's member table shows (its LoRA column)


def _per_member(key: str, members: dict) -> str:
    """e.g. "`relation_turns` 1 for `sparsecut-tiny`, 0 for `llava-tiny`, `sparsecut-tiny-lowres`"."""
    by_value: dict[str, list[str]] = {}
    for name, record in members.items():
        by_value.setdefault(json.dumps(_recorded(record["budget"])[key]), []).append(f"`{name}`")
    return f"`{key}` " + ", ".join(f"{value} for {', '.join(names)}" for value, names in by_value.items())


DRILL_TURNS = {"relation": ("left-of / above question", "left-of / above questions"),  # what a drill's turns ask:
               "tally": ("count question", "count questions"),                        # one, several
               "recount": ("count question asked openly, then with lettered numbers",
                           "count questions each asked openly, then with lettered numbers")}


def _drilled(budget: dict) -> str:
    """The drill turns a budget adds to each stage-2 conversation, as the card's data line says them."""
    recorded = _recorded(budget)
    balanced = ", answers balanced" if recorded["balanced_counts"] else ""
    drilled = "".join(f" and {recorded[field]} more {DRILL_TURNS[drill][recorded[field] > 1]} each (the {drill} drill"
                      f"{balanced if drill in COUNT_DRILLS else ''})" for field, drill in DRILL_FIELDS.items() if recorded[field])
    return drilled + (", the drills' turns asked first" if recorded["drills_first"] else "")


def _lora(budget: dict) -> str:
    """A member's LoRA as its budget records it, e.g. "rank 4 on q, k, v, o, lr 0.003"."""
    return f"rank {budget['lora_rank']} on {LORA_TARGETS[_recorded(budget)['lora_modules']]}, lr {budget['stage2_lr']:g}"


def _high_res(family_dir: str, member: str) -> str:
    """"no", or "yes" and how the shipped member fuses its crops, with its reading tokens if any (read from its
    config, as it was trained)."""
    with open(os.path.join(family_dir, member, "config.json"), encoding="utf-8") as handle:
        config = json.load(handle)
    if not config.get("high_res"):
        return "no"
    own = " through a tower of their own" if config.get("reading_tower") else ""
    reading = f", {config['reading_tokens']} reading tokens{own}" if config.get("reading_tokens") else ""
    return f"yes ({config.get('high_res_fusion', 'cross-attention')}{reading})"


NOT_DIFFERENCES = ("stage1_steps", "stage2_steps", "save_every",  # a continuation's own steps, said apart
                   "reading_steps", "reading_images", "reading_lr", "reading_look_ups")  # and its reading stage


def _reading_stage(record: dict) -> str:
    """The card's words on a continuation's reading stage: "a reading stage of N steps (...)", around a new reading
    tower (``--reading-tower``) or on the reading adapter and tower the member had."""
    tower, budget = record["reading_tower"], record["budget"]
    look_ups = budget.get("reading_look_ups", 0)
    scenes = f"{budget['reading_images']} scenes" + (
        f", each reading question followed by {look_ups} look-up turn{'s' * (look_ups > 1)}" if look_ups else "")
    stage = f"a reading stage of {budget['reading_steps']} steps ({scenes}; the reading adapter "
    trained = (f"at lr {budget['adapter_lr']:g} and the LoRA at {budget['reading_lr']:g}, the shortcuts' adapters "
               "frozen)")
    if tower.get("kept"):
        return stage + f"the member had (its reading tower kept) {trained}"
    spelled = " --spell" if tower["spell"] else ""
    made = (f"that gave its reading tokens a tower of their own, pretrained by `python -m training.tiny.dense --layout "
            f"{tower['layout']} --scenes {tower['scenes']} --steps {tower['steps']} --seed {tower['seed']}{spelled}` "
            f"({tower['seconds'] / 60:.1f} min, final loss {tower['final_loss']:.3f}, sha256 `{tower['sha256'][:16]}...`)")
    reader = tower.get("reader")
    if not reader:
        return stage + f"afresh {trained} " + made
    held_out = reader["held_out"]
    scores = (f", held-out texts {held_out['texts']:.1f}% (numbers {held_out['numbers']:.1f}, words "
              f"{held_out['words']:.1f})" if held_out else "")
    return (stage + f"aligned to the LLM's character embeddings first {trained} " + made + ", the adapter by `python -m "
            f"training.tiny.reader --member {reader['member']} --scenes {reader['scenes']} --steps {reader['steps']} "
            f"--seed {reader['seed']}` ({reader['seconds'] / 60:.1f} min, final loss {reader['final_loss']:.4f}{scores}, "
            f"sha256 `{reader['sha256'][:16]}...`)")


def _continued(name: str, chain: list[dict], commands: list[str]) -> str:
    """The card's sentence on a member trained further with ``--continue-from``: by which command, how many steps at
    which learning rates, and what its budget changed (e.g. the relation drill)."""
    parts = []
    for before, after in zip(chain, chain[1:]):
        old, new = _recorded(before["budget"]), _recorded(after["budget"])
        changed = [f"`{key}` {json.dumps(new[key])} (was {json.dumps(old.get(key))})" for key in new
                   if key not in NOT_DIFFERENCES and new[key] != old.get(key)]
        by = f"by command {commands.index(after['command']) + 1}, "
        if not new["stage2_steps"]:  # a reading stage alone
            parts.append(by + _reading_stage(after))
            continue
        parts.append(by + f"{new['stage2_steps']} more stage-2 steps (LoRA lr {new['stage2_lr']:g}, adapters "
                     f"{new['adapter_lr']:g})" + (f" with {', '.join(changed)}" if changed else " with the same budget")
                     + (f", after {_reading_stage(after)}" if after.get("reading_tower") else ""))
    return (f"\n\n**`{name}` was trained further** (`--continue-from`: no stage 1, from the member as shipped, its "
            f"fp16 adapters and LoRA, the same LoRA trained on): " + "; then ".join(parts) + ".")


def write_card(out_dir: str, scored: dict) -> None:
    """``MODEL_CARD.md``: how the family was made (per member the command, seed, budget and minutes per stage; the
    tower, data sizes, base model and its hash, recipe) and what it scores."""
    from sparsecut.zoo import manifest

    from .family import ADAPTER_MLP
    from .progress import STAGES

    entry = manifest(out_dir)
    base, tower = entry["base"], entry["tower"]
    chains = {name: lineage(record) for name, record in scored["members"].items()}  # first training, then continuations
    members = {name: chain[0] for name, chain in chains.items()}  # how each member was first trained
    commands = list(dict.fromkeys([record["command"] for record in members.values()]  # first trainings, then the rest
                                  + [record["command"] for chain in chains.values() for record in chain[1:]]))
    budgets = list({json.dumps(record["budget"], sort_keys=True): record["budget"] for record in members.values()}.values())
    budget = budgets[0]
    known = [_recorded(b) for b in budgets]
    differ = [key for key in known[0] if all(key in b for b in known) and len({json.dumps(b[key]) for b in known}) > 1]
    recipe = ("" if len(budgets) == 1 else
              f"\n\n**The members were trained with {len(budgets)} different budgets**, differing in "
              + ", ".join(f"`{key}`" for key in differ) + " (the LoRA's per member in the table below"
              + "".join(f"; {_per_member(key, members)}" for key in differ if key not in TABLED)
              + "; the values here are the first member's).")
    recipe += "".join(_continued(name, chain, commands) for name, chain in chains.items() if len(chain) > 1)
    rows = "\n".join(
        f"| `{name}` | {FAMILY[name]['pattern']} | {_high_res(out_dir, entry['models'][name])} | "
        + " | ".join(" + ".join(f"{record['stage_seconds'].get(stage, 0.0) / 60:.1f}" for record in chain
                                if record is chain[0] or record["stage_seconds"].get(stage)) for stage in STAGES)
        + f" | {_lora(chain[0]['budget'])} | {', then '.join(str(commands.index(record['command']) + 1) for record in chain)} | "
        + "; then ".join(f"{record['device']}, {record['mixed_precision']}, {_sharing(record)}" for record in chain)
        + " |" for name, chain in chains.items())
    spelled = " (and each text spelled by position)" if tower.get("tower_spell") else ""
    listed = "\n".join(f"{number}. `{command}`" for number, command in enumerate(commands, 1))
    missing = [name for name in FAMILY if name not in members]
    complete = (f"All {len(FAMILY)} members of the family are shipped." if not missing else
                f"{len(members)} of the family's {len(FAMILY)} members are shipped; not trained yet: "
                + ", ".join(f"`{name}`" for name in missing) + " (a run with `--tower` on this folder adds them).")
    card = f"""# The sparsecut-tiny family

The embedded default models of SparseCut: the paper's architecture at miniature scale on a real pretrained LLM,
trained on the synthetic benchmark of `training/tiny/`. They answer questions about synthetic
{LAYOUT.image_size}-px scenes (coloured shapes on a 3x3 grid, small printed text); they know nothing else.

## How it was made

{complete} Trained by:

{listed}

(the command that trained each member is numbered in the table below; a run with `--tower` trains members on the
family's shipped tower, so that they join it.){recipe}

- seed {tower["tower_seed"]}; data (generator splits never shared; layout `{tower["layout"]}`): stage 1
  {budget["pretrain_images"]} captioned scenes, stage 2 {budget["instruct_images"]} scenes with {budget["turns"]}-question
  conversations{_drilled(budget)}, held-out {scored["images"]} scenes ({scored["questions"]} questions, generator seed {scored["seed"]}).
- LLM: `{base["text"]}` (sha256 `{base["sha256"]}`), in ChatML without a default system prompt; frozen except for
  a LoRA (alpha 2 x its rank; each member's rank, projections and learning rate in the table below).
- vision tower: CLIP-style ViT (8 layers, width 128, 16-px patches, {LAYOUT.view}-px input) pretrained
  {tower["tower_steps"]} steps with dense per-patch labels{spelled} from {tower["tower_scenes"]} scenes of a separate split
  (`training/tiny/dense.py`; final loss {tower["tower_final_loss"]:.3f}; {tower["tower_seconds"] / 60:.1f} min), frozen
  afterwards.
- every member: stage 1 (adapters only, {ADAPTER_MLP} MLP, lr {budget["stage1_lr"]}) {budget["stage1_steps"]}
  steps on captions; stage 2 (adapters at lr {budget["adapter_lr"]} + the LoRA at its lr in the table below)
  {budget["stage2_steps"]} steps; batch {budget["batch"]}; through `python -m training`.
- stored: the vision tower and tokenizer once in `shared/`, each member's adapters and LoRA in fp16; the LLM comes
  from the installed base (`sparsecut.zoo` assembles and caches an fp32 folder on first load).

Measured training time per member (each stage's timed steps, from its log; minutes of one member's share of the
CPU, so members trained side by side overlap in wall clock):

| member | pattern | high-res | stage 1 min | reading stage min | stage 2 min | LoRA | command | device, precision, jobs |
|---|---|---|---|---|---|---|---|---|
{rows}

## Scores (from these files, `python -m training.tiny.ship --score-only --to {out_dir}`)

Each member's greedy answer to every held-out question is kept in `{ANSWERS}/<member>.json` (keyed by a hash of the
question's image pixels and text); the scores below are computed from them.

{results_table(scored["results"])}{paper_tables(scored["results"])}"""
    with open(os.path.join(out_dir, "MODEL_CARD.md"), "w", encoding="utf-8") as handle:
        handle.write(card)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.tiny.ship", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="source", help="the OUTPUT folder of python -m training.tiny")
    parser.add_argument("--to", required=True, help="the family folder in assets/, e.g. assets/sparsecut-tiny")
    parser.add_argument("--models", default=",".join(FAMILY), help="the members of --from to ship (they join the "
                        "family in --to when it has the same tower and base; every member shipped there is scored)")
    parser.add_argument("--seed", type=int, default=0, help="the seed the family was trained with (picks the held-out split)")
    parser.add_argument("--score-only", action="store_true", help="rescore what is already shipped in --to (with "
                        "the answers kept in its answers/ folder; delete a member's file there to generate all again)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    shipped_before = shipped_results(args.to)
    if args.score_only:
        if shipped_before is None:
            parser.error(f"{args.to} has no results.json saying how its members were trained: ship them with --from")
        run, members = shipped_before["run"], shipped_before["members"]
    else:
        trained = os.path.join(args.source or "", "results.json")
        if not os.path.isfile(trained):
            parser.error(f"no results.json under {args.source!r} saying what it trained; run python -m training.tiny first")
        with open(trained, encoding="utf-8") as handle:
            source = json.load(handle)
        if "members" not in source:
            parser.error(f"{trained} does not say how its members were trained (written before per-member records): "
                         "rerun its python -m training.tiny command, which skips what is trained and rewrites it")
        finals = {n: final_dir(args.source, n, source["members"][n]["budget"]["stage2_steps"])
                  for n in names if n in source["members"]}
        missing = [n for n in names if n not in finals or not os.path.isdir(finals[n])]
        if missing:
            parser.error(f"{args.source} has no trained model(s) {missing} (it trained {', '.join(source['members'])})")
        run = source["run"]
        members = export(args.source, {n: source["members"][n] for n in names}, args.to, finals)
    from sparsecut.zoo import manifest

    started = time.time()
    entry = manifest(args.to)
    scored = score_shipped(args.to, list(entry["models"]), args.seed, layout=entry["tower"]["layout"],
                           answers_dir=os.path.join(args.to, ANSWERS),  # and the run's own family's, same files
                           earlier_answers=os.path.join(args.source, "family", ANSWERS) if args.source else None)
    scored["run"], scored["members"] = run, members
    print(write_results(args.to, scored))
    write_card(args.to, scored)
    print(f"Scored in {time.time() - started:.0f}s: {os.path.join(args.to, 'results.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
