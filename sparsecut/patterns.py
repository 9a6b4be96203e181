"""Shortcut patterns: which ViT layer feeds which LLM layer (paper §3.2, Table 3, Fig. 2).

A pattern is a sorted list of ``(vit_layer, llm_layer)`` pairs. Layer numbers follow the paper:
ViT layer ``i`` in ``1..L_v`` is ``hidden_states[i]`` of the HF vision model (0 is the patch
embeddings), LLM layer ``j`` in ``1..L_t`` is the j-th decoder layer, and a shortcut ``(i, j)``
adds its adapter output to the visual positions of the hidden state *entering* layer ``j``.

Named patterns, for ``n`` shortcuts (default 8, the paper's):

- ViT ends: evenly spaced with LLaVA's penultimate layer as the deepest,
  ``i_k = (L_v - 1) - floor(k * L_v / n)``; for 24 layers and n = 8: 23, 20, ..., 2.
  Dense patterns use every ViT layer, ``L_v .. 1`` (24 shortcuts for CLIP-ViT-L, as the paper).
- LLM ends: ``uniform`` spreads them from layer 1, ``j_k = 1 + floor(k * L_t / n)`` (every 4th of
  32, every 5th of 40; 1, 5, 10, 14, 19, 23, 28, 32 for 36); ``bottom`` packs them into layers
  ``1..n``; ``top`` into the top ``n`` layers.
- Order: ``U-shape`` pairs the deepest ViT end with the lowest LLM end (the paper's default);
  ``aligned`` (reverse) pairs shallow with shallow.
- ``deepstack``: the LLaVA input shortcut plus ``n - 1`` taps from evenly spaced intermediate ViT
  layers into LLM layers 2, 3, ... in aligned order, as DeepStack / Qwen3-VL do (default n = 4).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

Shortcut = tuple[int, int]  # (vit_layer, llm_layer), both 1-based as in the paper

DEFAULT_NUM_SHORTCUTS = 8  # paper §4.1
DEFAULT_DEEPSTACK_SHORTCUTS = 4  # one input shortcut + three taps, as Qwen3-VL

# name -> (density, distribution, order); "llava" and "deepstack" are built by hand below.
_GRID_PATTERNS: dict[str, tuple[str, str, str]] = {
    "dense-bottom": ("dense", "bottom", "u-shape"),
    "dense-uniform": ("dense", "uniform", "u-shape"),
    "sparse-uniform": ("sparse", "uniform", "u-shape"),
    "sparse-bottom": ("sparse", "bottom", "u-shape"),
    "sparse-top": ("sparse", "top", "u-shape"),
    "sparse-reverse-uniform": ("sparse", "uniform", "aligned"),
}
PATTERN_NAMES: tuple[str, ...] = ("llava", *_GRID_PATTERNS, "deepstack")

EXPLICIT_RE = re.compile(  # "i:j,i:j,...": an explicit list of shortcuts
    r"^\s*\d+\s*:\s*\d+\s*(,\s*\d+\s*:\s*\d+\s*)*,?\s*$")


def _allowed() -> str:
    return f"one of {', '.join(PATTERN_NAMES)}, or an explicit list such as '23:1,20:5,17:9'"


def validate_shortcuts(shortcuts, vision_layers: int, llm_layers: int) -> list[Shortcut]:
    """Check a list of (vit_layer, llm_layer) pairs and return it sorted; raise ``ValueError`` naming the problem."""
    pairs = [tuple(int(x) for x in pair) for pair in shortcuts]
    if not pairs:
        raise ValueError("A shortcut pattern needs at least one shortcut; got an empty pattern.")
    for pair in pairs:
        if len(pair) != 2:
            raise ValueError(f"A shortcut is a (vit_layer, llm_layer) pair; got {pair}.")
    seen: set[Shortcut] = set()
    for vit, llm in pairs:
        if not 1 <= vit <= vision_layers:
            raise ValueError(
                f"Shortcut ({vit}, {llm}): ViT layer {vit} is out of range; the vision tower has layers 1..{vision_layers} "
                "(0 is the patch embeddings, which no shortcut may start from)."
            )
        if not 1 <= llm <= llm_layers:
            raise ValueError(
                f"Shortcut ({vit}, {llm}): LLM layer {llm} is out of range; the language model has layers 1..{llm_layers}."
            )
        if (vit, llm) in seen:
            raise ValueError(f"Shortcut ({vit}, {llm}) appears twice; each (vit_layer, llm_layer) pair may appear once.")
        seen.add((vit, llm))
    return sorted(pairs)


def parse_pattern_string(text: str) -> list[Shortcut]:
    """Parse ``"23:1,20:5"`` into ``[(20, 5), (23, 1)]`` (unvalidated against model depth)."""
    if not EXPLICIT_RE.match(text):
        raise ValueError(f"Unknown shortcut pattern {text!r}; expected {_allowed()}.")
    return [tuple(int(x) for x in item.split(":")) for item in text.split(",") if item.strip()]


def _vit_ends(density: str, vision_layers: int, n: int) -> list[int]:
    """ViT ends from deepest to shallowest."""
    if density == "dense":
        return list(range(vision_layers, 0, -1))
    return [(vision_layers - 1) - (k * vision_layers) // n for k in range(n)]


def _llm_ends(distribution: str, llm_layers: int, n: int) -> list[int]:
    """LLM ends from lowest to highest."""
    if distribution == "uniform":
        return [1 + (k * llm_layers) // n for k in range(n)]
    if n > llm_layers:
        raise ValueError(
            f"A {distribution}-skewed pattern packs its {n} shortcuts into {n} consecutive LLM layers, "
            f"but the language model has only {llm_layers}; use fewer shortcuts or a uniform pattern."
        )
    if distribution == "bottom":
        return list(range(1, n + 1))
    return list(range(llm_layers - n + 1, llm_layers + 1))


def _check_count(name: str, n: int, low: int, high: int) -> None:
    if not low <= n <= high:
        raise ValueError(f"Pattern {name!r} takes between {low} and {high} shortcuts for this model; got num_shortcuts={n}.")


def make_pattern(name: str, vision_layers: int, llm_layers: int, num_shortcuts: int | None = None) -> list[Shortcut]:
    """Build a shortcut pattern by name (or explicit ``"i:j,..."`` string) for a ViT of ``vision_layers``
    layers and an LLM of ``llm_layers`` layers. Returns a sorted list of ``(vit_layer, llm_layer)``."""
    if not isinstance(name, str):
        raise ValueError(f"A pattern is a name or an explicit string; got {type(name).__name__}. Allowed: {_allowed()}.")
    if vision_layers < 2 or llm_layers < 1:
        raise ValueError(f"Need a ViT with >= 2 layers and an LLM with >= 1 layer; got {vision_layers} and {llm_layers}.")
    key = name.strip().lower()
    if key == "llava":
        if num_shortcuts not in (None, 1):
            raise ValueError(f"Pattern 'llava' has exactly one shortcut; got num_shortcuts={num_shortcuts}.")
        return [(vision_layers - 1, 1)]
    if key == "deepstack":
        n = DEFAULT_DEEPSTACK_SHORTCUTS if num_shortcuts is None else num_shortcuts
        n = min(n, vision_layers - 1, llm_layers) if num_shortcuts is None else n
        _check_count(key, n, 1, min(vision_layers - 1, llm_layers))
        taps = [(k * (vision_layers - 1)) // n for k in range(1, n)]  # shallow to deep
        return validate_shortcuts([(vision_layers - 1, 1)] + [(i, 2 + k) for k, i in enumerate(taps)], vision_layers, llm_layers)
    if key in _GRID_PATTERNS:
        density, distribution, order = _GRID_PATTERNS[key]
        if density == "dense":
            if num_shortcuts not in (None, vision_layers):
                raise ValueError(
                    f"Dense patterns take one shortcut from every ViT layer ({vision_layers}); got num_shortcuts={num_shortcuts}."
                )
            n = vision_layers
        else:
            n = min(DEFAULT_NUM_SHORTCUTS, vision_layers - 1, llm_layers) if num_shortcuts is None else num_shortcuts
            _check_count(key, n, 1, vision_layers - 1)
        vit = _vit_ends(density, vision_layers, n)
        llm = _llm_ends(distribution, llm_layers, n)
        if order == "aligned":
            vit = vit[::-1]
        return validate_shortcuts(zip(vit, llm), vision_layers, llm_layers)
    pairs = parse_pattern_string(name)
    if num_shortcuts is not None:
        raise ValueError("num_shortcuts applies to named patterns only, not to an explicit list.")
    return validate_shortcuts(pairs, vision_layers, llm_layers)


@dataclass(frozen=True)
class PatternSummary:
    """The three factors of §3.2 for one pattern."""

    order: str  # "U-shape", "aligned", "single", or "mixed"
    distribution: str  # "uniform", "bottom", "top", or "custom"
    density: float  # shortcuts / ViT layers
    num_shortcuts: int


def summarize(shortcuts: list[Shortcut], vision_layers: int, llm_layers: int) -> PatternSummary:
    """Classify a pattern by connection order, connection-end distribution and density (§3.2)."""
    pairs = validate_shortcuts(shortcuts, vision_layers, llm_layers)
    n = len(pairs)
    order = "single"
    if n > 1:
        u_shape = aligned = True
        for a in range(n):
            for b in range(a + 1, n):
                (i1, j1), (i2, j2) = pairs[a], pairs[b]
                if i1 == i2 or j1 == j2:
                    continue
                u_shape &= (i1 > i2) == (j1 < j2)
                aligned &= (i1 > i2) == (j1 > j2)
        order = "U-shape" if u_shape and not aligned else "aligned" if aligned and not u_shape else "mixed"
    ends = sorted(j for _, j in pairs)
    distribution = "custom"
    for name in ("uniform", "bottom", "top"):
        try:
            if ends == sorted(_llm_ends(name, llm_layers, n)):
                distribution = name
                break
        except ValueError:
            continue
    return PatternSummary(order=order, distribution=distribution, density=n / vision_layers, num_shortcuts=n)


def format_pattern(shortcuts: list[Shortcut]) -> str:
    """The explicit string form, deepest ViT layer first: ``"23:1,20:5"``; ``parse_pattern_string`` inverts it."""
    return ",".join(f"{i}:{j}" for i, j in sorted(shortcuts, key=lambda p: (-p[0], p[1])))


def _a(number: int) -> str:
    """The article before a layer count said aloud: "an 8-layer", "an 11-layer", "an 18-layer", "an 80-layer"; "a 24-layer"."""
    return "an" if str(number).startswith("8") or number in (11, 18) else "a"


def describe(shortcuts: list[Shortcut], vision_layers: int, llm_layers: int) -> str:
    """One paragraph stating the pattern's order, distribution and density (§3.2), then its pairs."""
    s = summarize(shortcuts, vision_layers, llm_layers)
    kind = "sparse" if s.num_shortcuts < vision_layers else "dense"
    order = {
        "U-shape": "U-shape order (deeper ViT layers feed shallower LLM layers)",
        "aligned": "aligned-depth order (deeper ViT layers feed deeper LLM layers)",
        "single": "a single connection",
        "mixed": "mixed order (neither U-shape nor aligned)",
    }[s.order]
    dist = {
        "uniform": "LLM ends spread uniformly",
        "bottom": "LLM ends skewed to the bottom layers",
        "top": "LLM ends skewed to the top layers",
        "custom": "a custom LLM-end distribution",
    }[s.distribution]
    return (
        f"{s.num_shortcuts} shortcut(s) between {_a(vision_layers)} {vision_layers}-layer ViT and {_a(llm_layers)} "
        f"{llm_layers}-layer LLM: {order}; "
        f"{dist}; density {s.num_shortcuts}/{vision_layers} = {s.density:.2f} ({kind}). "
        f"Pairs (ViT:LLM): {format_pattern(shortcuts)}."
    )
