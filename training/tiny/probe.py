"""python -m training.tiny.probe: what one family member's recipe learns, in minutes, without the whole pipeline.

A member's model is built from the backbones of a pipeline run (as stage 1 does; built first, with the pipeline's
budget and seed, if the run folder has none) and trained as stage 2 (vision tower
frozen; adapters and LLM trained) on single-turn questions of the chosen families, then scored on held-out scenes
by teacher-forced exact match of the answer tokens (no generation: fast, and the same for every answer length).
Training scenes come from the instruct split's seed, held-out scenes from the test split's. The README's "why the
family falls short" probes are runs of it. ``--oracle-vision`` swaps the vision tower and adapters for perfect
per-cell features read from each scene's specification (``oracle.py``): the member's LLM alone, given ideal inputs.
``--init NAME`` starts from a trained member instead (a shipped one by name, or a checkpoint folder): what more
training on a question mix adds to it, scored before the first step too.

    python -m training.tiny.probe --run runs/tiny --steps 600 --json probe.json
    python -m training.tiny.probe --run runs/tiny --families existence --max-shapes 2 --fresh-lm
    python -m training.tiny.probe --run runs/tiny --oracle-vision --steps 2400
    python -m training.tiny.probe --init sparsecut-tiny --families position,relation --lora-rank 8 --steps 150
    python -m training.tiny.probe --init sparsecut-tiny --reading-tower runs/tower-spell-6k --trained reading+lora \
        --lora-rank 8 --llm-lr 1.5e-3 --families reading --text-probability 1.0
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from sparsecut.benchmarking import write_json
from sparsecut.config import ATTENTION_SCOPES, HIGH_RES_FUSIONS, MLP_TYPES
from sparsecut.convert import from_backbones, with_reading_tower
from training.data import IGNORE_INDEX, Collator, encode, supervised_positions
from training.trainer import add_lora, apply_freezing, module_of
from training.recipes import LORA_MODULES, load_recipe

from sparsecut.evaluation.synthetic.dataset import DESCRIBE, image_for, scene_for
from .family import CHAT_TEMPLATE, FAMILY, LAYOUT, Budget, backbone_dirs, build_backbones, split_seed
from .loop import fit
from .oracle import CELLS, FEATURES, POSITION_FEATURES, TEXT_FEATURES, TEXT_PLACES, TEXT_POSITIONS, OracleVLM, oracle_features
from sparsecut.evaluation.synthetic.questions import DRILLS, FAMILIES, ask_turns, caption
from sparsecut.evaluation.synthetic.scenes import DEFAULT_LAYOUT, LAYOUTS, Layout, layout_named

PROBED = ("existence", "attribute", "count", "position")
TRAINED = ("member", "reading", "reading+lora")  # --trained: the member's recipe; its reading adapter alone, or with the LoRA


def build_model(run: str, member: str, fresh_lm: bool, seed: int, recipe=None, oracle_vision: bool = False,
                text: str | None = None, vision: str | None = None, oracle_positions: bool = False,
                adapter_mlp: str = "mlp2x_gelu", attention_scope: str | None = None, oracle_text: str | None = None,
                region_bias: float | None = None, adapter_output_rms: float | str | None = None,
                pattern: str | None = None, high_res_fusion: str = "cross-attention", reading_tokens: int = 0,
                reading_layer: int | None = None):
    """(model, processor): ``member``'s architecture on the backbones of pipeline run ``run`` (built there first if
    absent and not both replaced), with fresh adapters, in ChatML without a default system prompt as the family; ``text`` (a base model name
    such as ``smollm2-135m-instruct``, or a folder) replaces the run's LLM; ``vision`` (a CLIPVisionModel folder, e.g. from
    ``python -m training.tiny.dense``) replaces the run's tower; ``fresh_lm`` re-initialises the LLM (no text
    pretraining). Frozen as ``recipe`` (default: stage 2) freezes. ``oracle_vision``: instead, an ``OracleVLM`` on
    that LLM (all of it trained), its cells carrying their row and column too with ``oracle_positions`` and the
    text's characters with ``oracle_text`` (``cell``: in the text's cell; ``tokens``: as tokens of their own after
    the cells, the processor then writing TEXT_POSITIONS more placeholders per image).
    ``adapter_mlp``: the adapters' (or LLaVA projector's) MLP, ``mlp2x_gelu`` or ``linear``; ``attention_scope``: the
    adapters' cross-attention, ``global`` or ``local`` (default: the member's), ``region_bias`` its per-head place
    bias's start (local only; default: the member's); ``adapter_output_rms``: the adapters' output scale (a number, or
    "embeddings" for the LLM's; default: none, the paper's); ``pattern``: a shortcut pattern instead of the member's
    (a name of ``sparsecut.patterns`` or ``"i:j,..."``), its high-res fusion kept (``"llava"``: one shortcut into the
    LLM's input, fused, as the oracle feeds it); ``high_res_fusion``: ``cross-attention`` (the paper's), ``concat``
    (every crop's tokens in the context too, as LLaVA-NeXT: the LLM reads the crops itself) or ``stack`` (each fused
    token also carries its region's crop tokens along its channels); ``reading_tokens`` K: K more visual tokens, each
    read from the crops by a learned query (``sparsecut.reading``), at ViT layer ``reading_layer`` (default: the input
    shortcut's)."""
    if pattern is not None and oracle_vision:
        raise ValueError("pattern replaces the member's shortcuts, which oracle_vision replaces by the oracle's input: "
                         "choose one.")
    if vision is None or text is None:  # the run's own backbones are needed
        build_backbones(run, Budget(), seed)  # returns at once when the run has them
        run_vision, run_text = backbone_dirs(run)
    vision, text = vision or run_vision, text or run_text
    spec = FAMILY[member]
    torch.manual_seed(seed)
    model, processor = from_backbones(vision, text, pattern=pattern or spec["pattern"], high_res=spec["high_res"],
                                      adapter_attention=spec.get("adapter_attention", True), adapter_mlp=adapter_mlp,
                                      adapter_attention_scope=attention_scope or spec.get("adapter_attention_scope", "global"),
                                      adapter_region_bias=region_bias if region_bias is not None
                                      else spec.get("adapter_region_bias"),
                                      adapter_output_rms=adapter_output_rms, high_res_fusion=high_res_fusion,
                                      reading_tokens=reading_tokens, reading_layer=reading_layer,
                                      chat_template=CHAT_TEMPLATE)
    if fresh_lm:  # the LLM as transformers initialises it from its config
        fresh = AutoModelForCausalLM.from_config(model.config.text_config)
        model.model.language_model.load_state_dict(fresh.model.state_dict())
        model.lm_head.load_state_dict(fresh.lm_head.state_dict())
    if oracle_vision:
        language_model = AutoModelForCausalLM.from_config(model.config.text_config)
        language_model.model.load_state_dict(model.model.language_model.state_dict())
        language_model.lm_head.load_state_dict(model.lm_head.state_dict())
        features = FEATURES + (POSITION_FEATURES if oracle_positions else 0) + (TEXT_FEATURES if oracle_text else 0)
        if oracle_text == "tokens":  # a placeholder per character place after the cells
            processor.image_seq_length = max(processor.image_seq_length, CELLS + TEXT_POSITIONS)
        return OracleVLM(language_model, model.config.image_token_id, processor.tokens_per_image(False), features), processor
    apply_freezing(model, recipe or load_recipe("stage2"))
    return model, processor


def trained_model(init: str, recipe=None):
    """(model, processor): a trained member, ``init`` a shipped family member's name (``sparsecut.zoo``, assembled
    from the installed base) or a SparseCut checkpoint folder, fp32, frozen as ``recipe`` (default: stage 2)."""
    from sparsecut import SparseCutForConditionalGeneration, SparseCutProcessor

    model = SparseCutForConditionalGeneration.from_pretrained(init, dtype=torch.float32)
    processor = SparseCutProcessor.from_pretrained(init)
    apply_freezing(model, recipe or load_recipe("stage2"))
    return model, processor


def with_lora(model, rank: int, modules: str = "all"):
    """``model`` (a member or an ``OracleVLM``) with its LLM trained through a LoRA of rank ``rank`` (alpha 2 x rank,
    no dropout) on ``modules`` (``training.recipes.LORA_MODULES``) and its projector or adapters trained in full;
    every other weight frozen."""
    model = add_lora(model, {"r": rank, "alpha": 2 * rank, "dropout": 0.0, "modules": modules})
    for name, param in model.named_parameters():  # peft froze all but the LoRA
        param.requires_grad = "lora_" in name or ".projector." in name or module_of(name) in ("adapters", "reading_adapter")
    return model


def _item(processor, turns: list[tuple[str, str]], index: int, family: str, high_res: bool, max_length: int) -> dict:
    """One conversation about scene ``index`` (``turns``: (question, answer) pairs, the image before the first),
    encoded as the training CLI encodes LLaVA records."""
    conversation = []
    for question, answer in turns:
        prefix = f"{processor.image_token}\n" if not conversation else ""
        conversation += [{"from": "human", "value": prefix + question}, {"from": "gpt", "value": answer}]
    encoded = encode({"id": f"{index}-{family}", "image": "scene", "conversations": conversation}, processor,
                     processor.template, max_length, high_res)
    last_answer = turns[-1][1]
    return {"input_ids": torch.tensor(encoded.input_ids), "labels": torch.tensor(encoded.labels), "scene": index,
            "family": family, "answer": last_answer,  # and its own tokens, before the turn's end:
            "answer_tokens": len(processor.tokenizer(last_answer, add_special_tokens=False).input_ids)}


def questions(processor, seed: int, scenes: int, families: list[str], high_res: bool, max_shapes: int,
              max_length: int, oracle_vision: bool = False, per_sample: int = 1,
              captions: bool = False, oracle_positions: bool = False,
              layout: Layout = DEFAULT_LAYOUT, oracle_text: str | None = None,
              text_probability: float = 0.5) -> tuple[list[dict], torch.Tensor]:
    """Encoded conversations about ``scenes`` scenes (drawn in ``layout``) and their views ((scenes, N, 3, S, S), or the oracle's
    (scenes, CELLS, features), with each cell's row and column when ``oracle_positions``, the text's characters when
    ``oracle_text`` (at its cell, or in TEXT_POSITIONS more rows with ``tokens``); a text in a scene with ``text_probability``, the benchmark's 0.5 by default). ``per_sample`` 1: one single-question item per family per scene where the scene
    allows it (what the scores are computed on); ``per_sample`` K > 1: one item per scene holding up to K questions
    (families in turn from a random one, each question drawn afresh), so one sequence supervises K answers. ``captions``: one
    item per scene, "describe the image" answered by the scene's caption (every object in row order)."""
    items, views = [], []
    for index in range(scenes):
        scene, rng = scene_for(seed, index, max_shapes=max_shapes, layout=layout, text_probability=text_probability)
        views.append(oracle_features(scene, oracle_positions, oracle_text) if oracle_vision
                     else processor.image_views(image_for(scene, seed, index), high_res))
        if captions:
            items.append(_item(processor, [(DESCRIBE, caption(scene))], index, "caption", high_res, max_length))
            continue
        asked = [(family, turns) for family in families if (turns := ask_turns(scene, family, rng))]
        if per_sample == 1:  # one item per family (a drill of several turns: one item holding them all)
            items += [_item(processor, [(qa.question, qa.answer) for qa in turns], index, family, high_res, max_length)
                      for family, turns in asked]
            continue
        turns, tries, first = [], 0, int(rng.integers(len(families)))  # families in turn from a random one
        while len(turns) < per_sample and tries < 4 * per_sample:
            family = families[(first + tries) % len(families)]
            tries += 1
            new = [(qa.question, qa.answer) for qa in ask_turns(scene, family, rng)]
            asked_before = {question for question, _ in turns}
            if new and len(turns) + len(new) <= per_sample and not asked_before & {question for question, _ in new}:
                turns += new
        if turns:  # a scene that poses none of the families' questions (a scribble, for reading) gives no item
            items.append(_item(processor, turns, index, "mixed", high_res, max_length))
    return items, torch.stack(views)


def batch_of(items: list[dict], views: torch.Tensor, collate: Collator) -> dict:
    batch = collate([{**item, "pixel_values": views[item["scene"]][None]} for item in items])
    batch.pop("skipped")
    return batch


SPELLED_FAMILIES = ("reading",)  # answers spelled over several tokens: their later digits are scored on their own too


@torch.no_grad()
def exact_match(model, items: list[dict], views: torch.Tensor, collate: Collator, batch_size: int = 64) -> dict[str, float]:
    """family -> share of questions whose answer tokens (and </s>) are all the model's argmax; plus ``overall``; and
    for ``SPELLED_FAMILIES`` "FAMILY, later digits": over the (single-turn) answers that are numbers, the share of
    their digits after the first that are the argmax given the right ones before them (the turn's end tokens not
    counted), "FAMILY, first digits" the share whose first digit is the argmax, and "FAMILY, numbers" / "FAMILY, words": its exact match over number and over word answers. Partial
    reading shows there: the second digit of "46" is right only if it was read (chance 1 in 10),
    while the first token competes with "unanswerable", the right answer to half the questions. Words are left out:
    the tokenizer splits the twelve words so that their first token fixes the rest ("P" -> "EN")."""
    model.eval()
    hits: dict[str, list[bool]] = {}
    later: dict[str, list[bool]] = {}
    first: dict[str, list[bool]] = {}  # "FAMILY, first digits": each number answer's first token
    by_kind: dict[str, list[bool]] = {}  # "reading, numbers" / "reading, words" -> exact match of each answer
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        batch = batch_of(chunk, views, collate)
        labels = batch.pop("labels")[:, 1:]
        predicted = model(**batch).logits[:, :-1].argmax(-1)
        answer = labels != IGNORE_INDEX
        right = predicted == labels
        order = answer.cumsum(1) * answer  # 1, 2, ... along each sequence's supervised tokens, 0 elsewhere
        for item, ok, row_right, row_order in zip(chunk, (right | ~answer).all(1).tolist(), right, order):
            hits.setdefault(item["family"], []).append(ok)
            if item["family"] in SPELLED_FAMILIES:
                number = item["answer"].isdigit()
                by_kind.setdefault(f"{item['family']}, {'numbers' if number else 'words'}", []).append(ok)
                if number:
                    row_later = (row_order >= 2) & (row_order <= item["answer_tokens"])
                    later.setdefault(item["family"], []).extend(row_right[row_later].tolist())
                    first.setdefault(item["family"], []).extend(row_right[row_order == 1].tolist())
    scores = {family: sum(v) / len(v) for family, v in hits.items()}
    scores["overall"] = sum(sum(v) for v in hits.values()) / sum(len(v) for v in hits.values())
    scores.update({f"{family}, first digits": sum(v) / len(v) for family, v in first.items() if v})
    scores.update({f"{family}, later digits": sum(v) / len(v) for family, v in later.items() if v})
    scores.update({name: sum(v) / len(v) for name, v in by_kind.items()})
    return scores


def probe(run: str, member: str = "llava-tiny", families=PROBED, steps: int = 600, lr: float = 1e-3,
          batch: int = 32, scenes: int = 4000, test_scenes: int = 300, max_shapes: int = 5, fresh_lm: bool = False,
          seed: int = 0, progress: bool = True, oracle_vision: bool = False, text: str | None = None,
          per_sample: int = 1, caption_steps: int = 0, llm_lr: float | None = None, bf16: bool = False,
          vision: str | None = None, eval_every: int = 0, oracle_positions: bool = False,
          layout: str = LAYOUT.name, lora_rank: int = 0, lora_modules: str = "all",
          adapter_mlp: str = "mlp2x_gelu", attention_scope: str | None = None, oracle_text: str | None = None,
          region_bias: float | None = None, adapter_output_rms: float | str | None = None,
          pattern: str | None = None, high_res_fusion: str = "cross-attention", text_probability: float = 0.5,
          reading_tokens: int = 0, reading_layer: int | None = None, init: str | None = None,
          score_families=None, reading_tower: str | None = None, trained: str = "member") -> dict:
    """Train ``member`` for ``steps`` on ``families`` and score it; returns the scores, losses and settings.

    ``text``: a base LLM instead of the run's (``smollm2-135m-instruct``); ``vision``: another tower; ``per_sample``: questions per training
    sequence; ``caption_steps``: steps on captions before the questions; ``llm_lr``: the LLM's learning rate (default
    ``lr``; adapters / projector always at ``lr``); ``bf16``: autocast on the CPU; ``eval_every``: also score every
    that many steps (the learning curve, with the CPU seconds spent training so far); ``oracle_positions``: the
    oracle's cells also carry their row and column (as a ViT's tokens carry position embeddings); ``layout``: the
    scenes' geometry (``sparsecut/evaluation/synthetic/scenes.py``), whose low-res view must be the tower's input size; ``lora_rank``
    R > 0: the LLM trained through a LoRA of rank R (alpha 2R, on every attention and MLP projection; ``llm_lr`` is
    then the LoRA's learning rate) instead of in full, as a shipped member's small delta would be; ``lora_modules``:
    ``all`` or ``attention`` (q, k, v, o only); ``adapter_mlp``: ``mlp2x_gelu`` (LLaVA-1.5's) or ``linear``; ``attention_scope``: the adapters' cross-attention,
    ``global`` or ``local`` (default: the member's), ``region_bias`` the local scope's per-head place bias; ``oracle_text``: the oracle also gives the text's
    characters, at the text's cell (``cell``) or as tokens of their own after the cells (``tokens``); ``adapter_output_rms``: the adapters' outputs RMS-normalised, starting at this scale ("embeddings": the
    LLM's input embeddings' RMS); ``pattern``: shortcuts instead of the member's (its high-res fusion kept); ``high_res_fusion``: ``cross-attention``,
    ``concat`` (the crops' tokens in the context) or ``stack`` (along the channels); ``text_probability``: the share
    of scenes, training and held-out, that hold a text (the benchmark's 0.5 by default; 1.0 puts a reading or
    scribble question in every scene); ``reading_tokens``, ``reading_layer``: the member with that many reading tokens
    (``sparsecut.reading``) read at that ViT layer; ``init``: start from that trained member (``trained_model``; its
    checkpoint fixes the architecture and stage 1, so the options that would change them are refused, and ``run`` is
    not used) and score it before the first step too; ``score_families``: the held-out questions' families (default
    ``families``), e.g. one not trained on, to see whether it moves; ``reading_tower``: a tower folder the member's
    reading tokens look through instead of its own tower (``sparsecut.convert.with_reading_tower``: a fresh reading
    adapter around it); ``trained``: what trains, ``member`` (its recipe: adapters and LLM or LoRA), ``reading``
    (the reading adapter alone: every other weight frozen, so only what the reading tokens say can change) or
    ``reading+lora`` (the reading adapter and the LLM's LoRA, ``lora_rank`` > 0: the shortcuts' adapters frozen)."""
    if (reading_tokens or reading_layer is not None) and oracle_vision:
        raise ValueError("reading tokens read a real tower's crops, which oracle_vision replaces: use "
                         "oracle_text='tokens' for the oracle's characters in tokens of their own.")
    score_families = list(score_families or families)
    unknown = [f for f in dict.fromkeys([*families, *score_families]) if f not in FAMILIES + DRILLS]
    if unknown or not families:
        raise ValueError(f"unknown question families {unknown}; choose from {', '.join(FAMILIES + DRILLS)}.")
    if member not in FAMILY:
        raise ValueError(f"unknown member {member!r}; the family is {', '.join(FAMILY)}.")
    if not 1 <= max_shapes <= 5:
        raise ValueError(f"max_shapes must be 1..5 (the scenes hold at most 5 objects); got {max_shapes}.")
    if oracle_positions and not oracle_vision:
        raise ValueError("oracle_positions adds row and column features to the oracle's cells: it needs oracle_vision.")
    if oracle_text and not oracle_vision:
        raise ValueError("oracle_text adds the text's characters to the oracle's input: it needs oracle_vision.")
    if oracle_text not in (None, *TEXT_PLACES):
        raise ValueError(f"oracle_text puts the text's characters in the text's cell or in tokens of their own: one of "
                         f"{', '.join(TEXT_PLACES)} (or None); got {oracle_text!r}.")
    if lora_rank < 0:
        raise ValueError(f"lora_rank must be >= 0 (0: the full LLM is trained); got {lora_rank}.")
    if not 0.0 <= text_probability <= 1.0:
        raise ValueError(f"text_probability is a probability (0..1); got {text_probability}.")
    if trained not in TRAINED:
        raise ValueError(f"trained is one of {', '.join(TRAINED)}; got {trained!r}.")
    if trained == "reading" and (lora_rank or llm_lr is not None):
        raise ValueError("trained='reading' trains the reading adapter alone: drop lora_rank and llm_lr.")
    if trained == "reading+lora" and not lora_rank:
        raise ValueError("trained='reading+lora' trains the reading adapter and a LoRA: give lora_rank > 0.")
    if per_sample < 1 or caption_steps < 0 or caption_steps > steps:
        raise ValueError(f"per_sample must be >= 1 and caption_steps in 0..steps; got {per_sample} and {caption_steps}.")
    geometry = layout_named(layout)
    recipe = load_recipe("stage2")
    if init is not None:  # its checkpoint fixes the architecture and stage 1: any option that would change them is refused
        given = {"fresh-lm": fresh_lm, "oracle-vision": oracle_vision, "text": text, "vision": vision,
                 "oracle-positions": oracle_positions, "oracle-text": oracle_text, "attention-scope": attention_scope,
                 "region-bias": region_bias, "adapter-output-rms": adapter_output_rms, "pattern": pattern,
                 "reading-tokens": reading_tokens, "reading-layer": reading_layer, "caption-steps": caption_steps,
                 "adapter-mlp": adapter_mlp != "mlp2x_gelu", "high-res-fusion": high_res_fusion != "cross-attention"}
        if fixed := [flag for flag, value in given.items() if value]:
            raise ValueError(f"init starts from a trained member, whose checkpoint fixes its architecture and stage 1: "
                             f"drop {', '.join(fixed)}.")
        model, processor = trained_model(init, recipe)
    else:
        model, processor = build_model(run, member, fresh_lm, seed, recipe, oracle_vision, text, vision,
                                       oracle_positions, adapter_mlp, attention_scope, oracle_text, region_bias,
                                       adapter_output_rms, pattern, high_res_fusion, reading_tokens, reading_layer)
    if reading_tower is not None:
        if oracle_vision:
            raise ValueError("a reading tower reads a real tower's crops, which oracle_vision replaces.")
        with_reading_tower(model, reading_tower)
        apply_freezing(model, recipe)  # the new tower frozen as the member's, its fresh adapter trained
    if trained != "member" and (oracle_vision or not model.config.reading_tokens):
        raise ValueError(f"trained={trained!r} trains the reading adapter: the member needs reading tokens "
                         "(reading_tokens, or a trained member that has them).")
    if not oracle_vision and model.config.vision_config.image_size != geometry.view:
        raise ValueError(f"the tower takes {model.config.vision_config.image_size}-px views but layout {layout} cuts "
                         f"{geometry.view}-px ones: pass --vision with a tower trained on that layout "
                         f"(python -m training.tiny.dense --layout {layout}).")
    if lora_rank:
        model = with_lora(model, lora_rank, lora_modules)
    if trained != "member":
        for name, param in model.named_parameters():
            param.requires_grad = module_of(name) == "reading_adapter" or (trained == "reading+lora" and "lora_" in name)
    setting = dict(families=list(families), high_res=not oracle_vision and model.config.high_res,
                   max_shapes=max_shapes, max_length=recipe.max_length, oracle_vision=oracle_vision,
                   oracle_positions=oracle_positions, layout=geometry, oracle_text=oracle_text,
                   text_probability=text_probability)
    train, train_views = questions(processor, split_seed(seed, "instruct"), scenes, **setting, per_sample=per_sample)
    test, test_views = questions(processor, split_seed(seed, "test"), test_scenes, **{**setting, "families": score_families})
    described = questions(processor, split_seed(seed, "pretrain"), scenes, **setting, captions=True) if caption_steps else None
    collate = Collator(processor.tokenizer.pad_token_id)
    done = [0]

    def step_loss(generator):
        items, views = described if done[0] < caption_steps else (train, train_views)
        done[0] += 1
        rows = torch.randint(0, len(items), (batch,), generator=generator).tolist()
        inputs = batch_of([items[r] for r in rows], views, collate)
        keep, targets = supervised_positions(inputs.pop("labels"))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(**inputs, logits_to_keep=keep).logits  # (N, V): the head only where an answer token is
        return F.cross_entropy(logits.float(), targets)

    curve, scoring = [], [0.0]

    def score_now(step: int) -> None:  # a point of the learning curve, its scoring time kept out of training's
        began = time.time()
        curve.append({"step": step, "train_seconds": began - started - scoring[0],
                      "scores": exact_match(model, test, test_views, collate)})
        scoring[0] += time.time() - began
        if progress:  # as it is measured, so that an interrupted run still tells its curve
            print(f"\n  step {step:>5}: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in curve[-1]["scores"].items()),
                  flush=True)

    def after_step(step: int) -> None:
        if eval_every and step % eval_every == 0 and step < steps:
            score_now(step)

    started = time.time()
    if init is not None and eval_every:  # where the trained member starts
        score_now(0)
    losses = fit(model, step_loss, steps, lr, seed, weight_decay=0.0, betas=(0.9, 0.999), warmup_ratio=0.03,
                 desc=f"probe {init or member}", progress=progress, param_groups=_groups(model, lr, llm_lr), after_step=after_step)
    train_seconds = time.time() - started - scoring[0]
    scores = exact_match(model, test, test_views, collate)
    if eval_every:
        curve.append({"step": steps, "train_seconds": train_seconds, "scores": scores})
    return {"scores": scores, "questions": len(test), "train_questions": len(train), "curve": curve,
            "final_loss": sum(losses[-20:]) / max(1, len(losses[-20:])), "train_seconds": train_seconds,
            "losses": losses[:: max(1, steps // 50)],
            "settings": {"member": member, "init": init, "families": list(families), "score_families": score_families, "steps": steps, "lr": lr, "batch": batch,
                         "scenes": scenes, "test_scenes": test_scenes, "max_shapes": max_shapes, "fresh_lm": fresh_lm,
                         "oracle_vision": oracle_vision, "seed": seed, "text": text, "per_sample": per_sample,
                         "caption_steps": caption_steps, "llm_lr": llm_lr, "bf16": bf16, "vision": vision,
                         "eval_every": eval_every, "oracle_positions": oracle_positions, "oracle_text": oracle_text,
                         "layout": layout, "text_probability": text_probability, "trained": trained,
                         "lora_rank": lora_rank, "lora_modules": lora_modules, "adapter_mlp": adapter_mlp,
                         **_adapter_settings(None if oracle_vision else model.config),
                         "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad)}}


def _adapter_settings(config) -> dict:
    """What the probed model's config says of its shortcuts and adapters (all None for the oracle: ``config`` None)."""
    fields = {"attention_scope": "adapter_attention_scope", "region_bias": "adapter_region_bias",
              "adapter_output_rms": "adapter_output_rms", "shortcuts": "shortcuts", "high_res_fusion": "high_res_fusion",
              "reading_tokens": "reading_tokens", "reading_layer": "reading_layer", "reading_tower": "reading_tower"}
    return {key: None if config is None else getattr(config, field) for key, field in fields.items()}


def _groups(model, lr: float, llm_lr: float | None) -> list[dict]:
    """AdamW groups: the LLM's trainable parameters at ``llm_lr`` (when given), everything else trainable at ``lr``."""
    llm, rest = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (llm if llm_lr is not None and "language_model" in name else rest).append(param)
    return [group for group in ({"params": rest, "lr": lr}, {"params": llm, "lr": llm_lr}) if group["params"]]


def _scale(value: str) -> float | str:
    """--adapter-output-rms: a positive number or "embeddings"."""
    if value == "embeddings":
        return value
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'embeddings', not {value!r}") from None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.tiny.probe", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default=None, help="a `python -m training.tiny --output` folder (its backbones/ are "
                        "used, or built there first); required unless --init")
    parser.add_argument("--init", default=None, help="start from this trained member instead of fresh adapters: a "
                        "shipped one's name (e.g. sparsecut-tiny) or a SparseCut checkpoint folder; scored before "
                        "the first step too (with --eval-every)")
    parser.add_argument("--member", default="llava-tiny", choices=list(FAMILY), help="whose architecture to probe")
    parser.add_argument("--families", default=",".join(PROBED), help=f"comma-separated subset of {', '.join(FAMILIES)}, and the training drills {', '.join(DRILLS)} (trained and "
                        "scored like the others); a family named twice is drawn twice as often")
    parser.add_argument("--score-families", default=None, help="the held-out questions' families, comma-separated "
                        "(default: --families), e.g. one not trained on")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--scenes", type=int, default=4000, help="training scenes (each gives one question per family)")
    parser.add_argument("--test-scenes", type=int, default=300)
    parser.add_argument("--max-shapes", type=int, default=5, help="objects per scene at most (1..5)")
    parser.add_argument("--fresh-lm", action="store_true", help="re-initialise the LLM instead of using the pretrained one")
    parser.add_argument("--oracle-vision", action="store_true", help="perfect per-cell scene features instead of the "
                        "member's vision tower and adapters (the LLM alone, given ideal inputs)")
    parser.add_argument("--oracle-positions", action="store_true", help="with --oracle-vision: each cell also "
                        "carries its row and column one-hot (as a ViT's tokens carry position embeddings)")
    parser.add_argument("--oracle-text", nargs="?", const="cell", default=None, choices=list(TEXT_PLACES),
                        help="with --oracle-vision: the text's characters too (one one-hot per character position, "
                        "a reader that cannot misread), in the text's cell (cell, the default: one token holds the "
                        "whole text) or as tokens of their own after the cells (tokens: one placeholder per character)")
    parser.add_argument("--text", default=None, help="a base LLM instead of the run's tiny LM: smollm2-135m-instruct "
                        "(installed from its wheel) or a causal-LM folder; ChatML without a default system prompt")
    parser.add_argument("--vision", default=None, help="a vision tower folder instead of the run's (e.g. "
                        "python -m training.tiny.dense's output)")
    parser.add_argument("--layout", default=LAYOUT.name, choices=list(LAYOUTS), help="the scenes' geometry "
                        "(sparsecut/evaluation/synthetic/scenes.py); a real tower must take its low-res view")
    parser.add_argument("--per-sample", type=int, default=1, help="questions per training sequence (multi-turn)")
    parser.add_argument("--caption-steps", type=int, default=0, help="first train this many steps on captions that "
                        "name every object in row order (LLaVA's stage 1 as a copy task), then on the questions")
    parser.add_argument("--llm-lr", type=float, default=None, help="the LLM's learning rate (default: --lr)")
    parser.add_argument("--lora-rank", type=int, default=0, help="train the LLM through a LoRA of this rank (alpha "
                        "twice it; --llm-lr is its learning rate) instead of in full (0)")
    parser.add_argument("--lora-modules", default="all", choices=list(LORA_MODULES), help="which projections get a "
                        "LoRA: all (attention and MLP) or attention (q, k, v, o)")
    parser.add_argument("--adapter-mlp", default="mlp2x_gelu", choices=list(MLP_TYPES), help="the adapters' (or "
                        "LLaVA projector's) MLP: mlp2x_gelu (LLaVA-1.5's) or linear (a smaller delta to ship)")
    parser.add_argument("--attention-scope", default=None, choices=list(ATTENTION_SCOPES), help="the adapters' "
                        "cross-attention over the crops: global (eq. 2) or local (each low-res token sees the high-res "
                        "tokens of its own region); default: the member's")
    parser.add_argument("--region-bias", type=float, default=None, metavar="B", help="with --attention-scope local: "
                        "a learned per-head bias per place of the region, starting at B for place h mod g^2 of head h")
    parser.add_argument("--adapter-output-rms", default=None, type=_scale, metavar="R", help="RMS-normalise every "
                        "adapter's output with a learned scale starting at R, or at the LLM's input embeddings' RMS "
                        "with 'embeddings' (default: no normalisation, the paper's)")
    parser.add_argument("--pattern", default=None, help="a shortcut pattern instead of the member's, its high-res fusion "
                        "kept: a name (llava, sparse-uniform, ...) or 'i:j,...' (llava: one fused shortcut into the "
                        "LLM's input, where the oracle feeds it)")
    parser.add_argument("--high-res-fusion", default="cross-attention", choices=list(HIGH_RES_FUSIONS), help="how the "
                        "crops reach the LLM: cross-attention (the paper's: the context does not grow), concat (every "
                        "crop's tokens in the context too, as LLaVA-NeXT) or stack (each fused token also carries its "
                        "region's crop tokens along its channels)")
    parser.add_argument("--text-probability", type=float, default=0.5, help="share of scenes (training and "
                        "held-out) holding a text: 1.0 makes every scene a reading or scribble question (default: the "
                        "benchmark's 0.5)")
    parser.add_argument("--reading-tokens", type=int, default=0, metavar="K", help="K more visual tokens, each read "
                        "from the crops by a learned query of its own (sparsecut.reading; not the paper's): a text's "
                        "characters in positions of their own, at K tokens of context (default 0: none)")
    parser.add_argument("--reading-layer", type=int, default=None, help="with --reading-tokens: the ViT layer the "
                        "queries read (default: the input shortcut's)")
    parser.add_argument("--reading-tower", default=None, metavar="DIR", help="the member's reading tokens look at the "
                        "crops through this tower (e.g. python -m training.tiny.dense --spell's output) with a fresh "
                        "reading adapter; its shortcuts keep the member's tower")
    parser.add_argument("--trained", default="member", choices=list(TRAINED), help="what trains: member (its recipe: "
                        "adapters, and the LLM or its LoRA), reading (the reading adapter alone, all else frozen) or "
                        "reading+lora (the reading adapter and the --lora-rank LoRA; the shortcuts' adapters frozen)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast on the CPU (fp32 master weights)")
    parser.add_argument("--eval-every", type=int, default=0, help="also score every N steps (the learning curve)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", default=None, help="write the result here")
    args = parser.parse_args(argv)
    if (args.run is None) == (args.init is None):
        parser.error("give --run (a member built on a pipeline run's backbones) or --init (a trained member), one of them")
    if args.threads:
        torch.set_num_threads(args.threads)
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    try:
        result = probe(args.run, args.member, families, args.steps, args.lr, args.batch, args.scenes,
                       args.test_scenes, args.max_shapes, args.fresh_lm, args.seed, oracle_vision=args.oracle_vision,
                       text=args.text, per_sample=args.per_sample, caption_steps=args.caption_steps,
                       llm_lr=args.llm_lr, bf16=args.bf16, vision=args.vision, eval_every=args.eval_every,
                       oracle_positions=args.oracle_positions, layout=args.layout, lora_rank=args.lora_rank,
                       lora_modules=args.lora_modules, adapter_mlp=args.adapter_mlp,
                       attention_scope=args.attention_scope, oracle_text=args.oracle_text,
                       region_bias=args.region_bias, adapter_output_rms=args.adapter_output_rms,
                       pattern=args.pattern, high_res_fusion=args.high_res_fusion,
                       text_probability=args.text_probability, reading_tokens=args.reading_tokens,
                       reading_layer=args.reading_layer, init=args.init, reading_tower=args.reading_tower,
                       trained=args.trained,
                       score_families=[f.strip() for f in args.score_families.split(",") if f.strip()]
                       if args.score_families else None)
    except ValueError as err:
        parser.error(str(err))
    vision = " with oracle vision" if args.oracle_vision else ""
    print(f"{args.init or args.member}{vision}, {args.steps} steps, {result['questions']} held-out questions (teacher-forced exact match):")
    for family, score in result["scores"].items():
        print(f"  {family:<13} {100 * score:5.1f}%")
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
