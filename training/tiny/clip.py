"""Pretrain the tiny family's CLIP-style ViT contrastively on synthetic scenes (as the paper starts from CLIP).

Each scene gives two (image, caption) pairs: the whole image at the tower's input size (the low-res view) with
the scene's caption, and one full-resolution quadrant (a high-res crop) with a caption of what lies in it. The
crops teach the tower the glyphs that only the high-res views show legibly. Loss: CLIP's symmetric InfoNCE, with
one hard negative caption per image (as NegCLIP): the same scene with one object's colour or shape, or the
text, changed. Random in-batch negatives differ in many words at once, so a tower can tell them apart by colour
alone; the hard negatives make it keep shape and which colour goes with which shape.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPVisionConfig, CLIPVisionModel

from .loop import fit

from .dataset import image_for, scene_for
from .questions import caption
from .scenes import COLOURS, DEFAULT_LAYOUT, SHAPES, WORDS, Scene, Text

VIEW = DEFAULT_LAYOUT.view  # the tower's input size: 64 px
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def tower_config(hidden: int = 128, layers: int = 8, heads: int = 4, patch: int = 16, view: int = VIEW) -> CLIPVisionConfig:
    """The family's vision tower: a CLIP ViT on ``view``-px views (the layout's low-res view)."""
    return CLIPVisionConfig(hidden_size=hidden, intermediate_size=hidden * 4, num_hidden_layers=layers,
                            num_attention_heads=heads, image_size=view, patch_size=patch)


def tower_image_processor(view: int = VIEW) -> CLIPImageProcessor:
    """The tower's preprocessing (``view``-px views, the family's normalisation), saved beside it."""
    return CLIPImageProcessor(size={"shortest_edge": view}, crop_size={"height": view, "width": view},
                              image_mean=list(MEAN), image_std=list(STD))


def clip_config(tokenizer, hidden: int = 128, layers: int = 8, heads: int = 4, patch: int = 16) -> CLIPConfig:
    return CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 4, num_hidden_layers=2,
                         num_attention_heads=heads, max_position_embeddings=96, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id),
        vision_config=tower_config(hidden, layers, heads, patch).to_dict(),
        projection_dim=hidden,
    )


def crop_caption(scene: Scene, quadrant: int) -> str:
    """What lies in quadrant 0..3 (row-major) of the image: the shapes centred there and text starting there."""
    row, column = divmod(quadrant, 2)
    view = scene.layout.view
    inside = lambda x, y: (x >= view) == bool(column) and (y >= view) == bool(row)  # noqa: E731
    parts = [f"a {s.size} {s.name}" for s in scene.shapes if inside(*s.center)]
    text = "A part of the image with " + (", ".join(parts) if parts else "no shape") + "."
    if scene.text is not None and inside(*scene.text.origin):
        text += f" The text {scene.text.text} is written there." if scene.text.legible else " There is an illegible scribble."
    return text


def _pixels(image: Image.Image) -> np.ndarray:
    array = np.asarray(image, dtype=np.float32) / 255.0
    return ((array - MEAN) / STD).transpose(2, 0, 1)


def perturb(scene: Scene, rng: np.random.Generator) -> Scene:
    """The scene with one thing changed: an object's colour or shape (to a pairing not in the scene), or the text."""
    legible = scene.text is not None and scene.text.legible
    if legible and rng.random() < 0.2:
        old = scene.text.text
        pool = [str(n) for n in range(10, 100)] if old.isdigit() else list(WORDS)
        new = pool[int(rng.integers(len(pool)))]
        while new == old:
            new = pool[int(rng.integers(len(pool)))]
        return replace(scene, text=Text(new, scene.text.cell, scene.text.origin, len(new)))
    k = int(rng.integers(len(scene.shapes)))
    taken = {(s.colour, s.shape) for s in scene.shapes}
    target = scene.shapes[k]
    if rng.random() < 0.5:
        options = [replace(target, colour=c) for c in COLOURS if (c, target.shape) not in taken]
    else:
        options = [replace(target, shape=s) for s in SHAPES if (target.colour, s) not in taken]
    if not options:  # every other colour (shape) of this shape (colour) is taken: change the other attribute
        options = [replace(target, colour=c, shape=s) for c in COLOURS for s in SHAPES if (c, s) not in taken]
    changed = options[int(rng.integers(len(options)))]
    return replace(scene, shapes=scene.shapes[:k] + (changed,) + scene.shapes[k + 1 :])


def pairs(seed: int, index: int) -> list[tuple[np.ndarray, str, str]]:
    """(pixels (3, 64, 64), caption, hard negative caption) for one scene: the low-res view and one full-resolution
    crop. A crop's negative is the crop caption of the perturbed scene (the same as its own when the change lies in
    another quadrant; such a negative is masked out of the loss)."""
    scene, rng = scene_for(seed, index)
    image = image_for(scene, seed, index)
    quadrant = int(rng.integers(4))
    row, column = divmod(quadrant, 2)
    crop = image.crop((column * VIEW, row * VIEW, (column + 1) * VIEW, (row + 1) * VIEW))
    low = image.resize((VIEW, VIEW), Image.BICUBIC)
    other = perturb(scene, rng)
    return [(_pixels(low), caption(scene), caption(other)),
            (_pixels(crop), crop_caption(scene, quadrant), crop_caption(other, quadrant))]


def _embed_text(model: CLIPModel, input_ids, attention_mask) -> torch.Tensor:
    """(N, P) unit caption embeddings, each taken at its last token (the appended </s>).

    CLIPModel's own text pooling takes the position of the largest token id when eos_token_id is 2 (a legacy of
    the original CLIP vocabulary), which for this tokenizer would be an arbitrary word; so pooling is explicit."""
    hidden = model.text_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (N, T, D)
    last = attention_mask.sum(1) - 1
    return F.normalize(model.text_projection(hidden[torch.arange(len(last)), last]), dim=-1)


def contrastive_loss(model: CLIPModel, input_ids, attention_mask, pixel_values, negative_ids, negative_mask,
                     negative_valid) -> torch.Tensor:
    """CLIP's symmetric InfoNCE over a batch of B pairs, with B hard negative captions (``negative_valid`` (B,):
    which differ from their positive): image-to-text picks among 2B captions, text-to-image among B images."""
    text = _embed_text(model, input_ids, attention_mask)  # (B, P)
    image = F.normalize(model.visual_projection(model.vision_model(pixel_values=pixel_values).pooler_output), dim=-1)
    scale = model.logit_scale.exp()
    logits = scale * image @ text.t()  # (B, B)
    negatives = scale * image @ _embed_text(model, negative_ids, negative_mask).t()  # (B, B)
    negatives = negatives.masked_fill(~negative_valid[None, :], float("-inf"))
    targets = torch.arange(len(logits))
    return (F.cross_entropy(torch.cat([logits, negatives], dim=1), targets) + F.cross_entropy(logits.t(), targets)) / 2


def pretrain_clip(tokenizer, seed: int, num_scenes: int, steps: int, batch_size: int = 64, lr: float = 1e-3,
                  config: CLIPConfig | None = None, progress: bool = True) -> tuple[CLIPVisionModel, list[float]]:
    """Contrastive pretraining on ``num_scenes`` scenes of split ``seed``; returns the vision tower and losses."""
    torch.manual_seed(seed)
    config = config or clip_config(tokenizer)
    model = CLIPModel(config)
    data = [pair for index in range(num_scenes) for pair in pairs(seed, index)]
    pixels = torch.tensor(np.stack([p for p, _, _ in data]))

    # positives and negatives padded together to the longest caption of all (not to the text tower's 96 positions)
    encoded = tokenizer([c + tokenizer.eos_token for _, c, _ in data] + [n + tokenizer.eos_token for _, _, n in data],
                        padding="longest", truncation=True, max_length=config.text_config.max_position_embeddings,
                        return_tensors="pt")
    tokens = {k: v[: len(data)] for k, v in encoded.items()}
    negatives = {k: v[len(data) :] for k, v in encoded.items()}
    valid = torch.tensor([c != n for _, c, n in data])

    def step_loss(generator):
        rows = torch.randperm(len(data), generator=generator)[:batch_size]
        return contrastive_loss(model, tokens["input_ids"][rows], tokens["attention_mask"][rows], pixels[rows],
                                negatives["input_ids"][rows], negatives["attention_mask"][rows], valid[rows])

    losses = fit(model, step_loss, steps, lr, seed, weight_decay=0.1, betas=(0.9, 0.98), warmup_ratio=0.05,
                 desc="tiny CLIP", progress=progress)
    return model.vision_model, losses  # a CLIPVisionModel, in eval mode
