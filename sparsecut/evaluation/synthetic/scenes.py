"""Synthetic scenes: coloured shapes on a 3x3 grid and, sometimes, a short printed text.

Everything is a pure function of a ``numpy.random.Generator``: the same seed gives the same scene and the same
image bytes. A ``Layout`` fixes the geometry; the model sees a half-size low-res view (text there is a blur) and
four half-image crops at full resolution (text there is legible): reading needs the high-res views.

| layout | image | cell | view | half-widths (small, large) | a 16-px patch of the view |
|---|---|---|---|---|---|
| ``thirds-128`` (the first family's) | 128 px | 42.7 px | 64 px | 9, 17 | straddles cells (4 x 4 patches) |
| ``cells-96`` (the default: the shipped family's) | 96 px | 32 px | 48 px | 7, 13 | is exactly one cell (3 x 3 patches) |
| ``cells-96-anchored`` | as ``cells-96`` | | | | |

In ``cells-96-anchored`` the text is always printed at the top-left corner of its cell (elsewhere anywhere in the
cell on the 8-px glyph grid): the k-th character then sits in the same high-res patch and slot of its cell in every
scene, so reading is a copy from fixed places rather than a search for where the text starts. The same seed draws
the same scenes in both, up to where the text sits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from .font import GLYPH_HEIGHT, draw_text

GRID = 3
SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = {
    "red": (210, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 70, 210),
    "yellow": (230, 200, 30),
    "purple": (140, 60, 170),
    "orange": (240, 130, 30),
}
SIZES = ("small", "large")
ROWS, COLUMNS = ("top", "middle", "bottom"), ("left", "center", "right")
WORDS = ("CAT", "DOG", "SUN", "BOX", "MAP", "KEY", "CUP", "PEN", "HAT", "BUS", "FOX", "OWL")
TEXT_ADVANCE = 8  # glyph advance in pixels at full resolution (two glyphs per 16-px patch of a high-res crop)
TEXT_COLOUR = (20, 20, 20)


@dataclass(frozen=True)
class Layout:
    """A scene's geometry: the image's side and each size's half-width in pixels; the 3 x 3 grid of cells, the
    low-res view (half the image) and the 2 x 2 full-resolution crops (half-image tiles) follow from it."""

    name: str
    image_size: int
    half_widths: tuple[int, int]  # small, large
    text_anchored: bool = False  # text at its cell's top-left corner instead of anywhere in the cell

    @property
    def cell(self) -> float:
        return self.image_size / GRID

    @property
    def view(self) -> int:
        return self.image_size // 2

    def half_width(self, size: str) -> int:
        return self.half_widths[SIZES.index(size)]


LAYOUTS = {layout.name: layout for layout in (Layout("thirds-128", 128, (9, 17)), Layout("cells-96", 96, (7, 13)),
                                              Layout("cells-96-anchored", 96, (7, 13), text_anchored=True))}
DEFAULT_LAYOUT = LAYOUTS["cells-96"]  # the shipped family's


def layout_named(name: str) -> Layout:
    if name not in LAYOUTS:
        raise ValueError(f"unknown scene layout {name!r}; choose from {', '.join(LAYOUTS)}.")
    return LAYOUTS[name]


@dataclass(frozen=True)
class Shape:
    shape: str
    colour: str
    size: str
    cell: tuple[int, int]  # (row, column) in the 3x3 grid
    center: tuple[int, int]  # (x, y) in pixels

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Text:
    text: str  # digits or a capital word; "" for an illegible scribble
    cell: tuple[int, int]
    origin: tuple[int, int]  # top-left (x, y), multiples of TEXT_ADVANCE
    length: int  # glyphs drawn

    @property
    def legible(self) -> bool:
        return bool(self.text)


@dataclass(frozen=True)
class Scene:
    shapes: tuple[Shape, ...]
    text: Text | None
    background: tuple[int, int, int]
    layout: Layout = DEFAULT_LAYOUT


def position_name(cell: tuple[int, int]) -> str:
    """'top left', 'middle center' is said 'center', 'middle left' is 'left', ..."""
    row, column = ROWS[cell[0]], COLUMNS[cell[1]]
    if row == "middle":
        return "center" if column == "center" else column
    return row if column == "center" else f"{row} {column}"


def _cell_box(cell, layout: Layout) -> tuple[int, int, int, int]:
    (r, c), side = cell, layout.cell
    return int(round(c * side)), int(round(r * side)), int(round((c + 1) * side)), int(round((r + 1) * side))


def sample_scene(rng: np.random.Generator, min_shapes: int = 1, max_shapes: int = 5, text_probability: float = 0.5,
                 scribble_probability: float = 0.2, layout: Layout = DEFAULT_LAYOUT) -> Scene:
    """A random scene: 1-5 shapes in distinct cells, distinct (colour, shape) pairs, maybe one text."""
    cells = [(r, c) for r in range(GRID) for c in range(GRID)]
    order = rng.permutation(len(cells))
    count = int(rng.integers(min_shapes, max_shapes + 1))
    kinds = [(s, c) for s in SHAPES for c in COLOURS]
    picks = rng.choice(len(kinds), size=count, replace=False)
    shapes = []
    for k, pick in enumerate(picks):
        shape, colour = kinds[pick]
        size = ("small", "large")[int(rng.integers(2))]
        x0, y0, x1, y1 = _cell_box(cells[order[k]], layout)
        half = layout.half_width(size)
        jitter = max(0, (min(x1 - x0, y1 - y0) - 2 * half) // 2 - 2)
        cx = (x0 + x1) // 2 + int(rng.integers(-jitter, jitter + 1))
        cy = (y0 + y1) // 2 + int(rng.integers(-jitter, jitter + 1))
        shapes.append(Shape(shape, colour, size, cells[order[k]], (cx, cy)))
    text = None
    if rng.random() < text_probability and count < len(cells):
        cell = cells[order[count]]
        if rng.random() < 0.5:
            content = str(int(rng.integers(10, 100)))
        else:
            content = WORDS[int(rng.integers(len(WORDS)))]
        x0, y0, x1, y1 = _cell_box(cell, layout)
        width = len(content) * TEXT_ADVANCE
        xs = [x for x in range(x0, x1 - width + 1) if x % TEXT_ADVANCE == 0]
        ys = [y for y in range(y0, y1 - GLYPH_HEIGHT + 1) if y % TEXT_ADVANCE == 0]
        origin = (int(rng.choice(xs)), int(rng.choice(ys)))  # drawn either way: the rest of the scene stays the same
        if layout.text_anchored:
            origin = (xs[0], ys[0])
        scribble = rng.random() < scribble_probability
        text = Text("" if scribble else content, cell, origin, len(content))
    shade = int(rng.integers(225, 250))
    return Scene(tuple(shapes), text, (shade, shade, int(rng.integers(225, 250))), layout)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: Shape, layout: Layout) -> None:
    cx, cy = shape.center
    h = layout.half_width(shape.size)
    fill = COLOURS[shape.colour]
    if shape.shape == "circle":
        draw.ellipse((cx - h, cy - h, cx + h, cy + h), fill=fill)
    elif shape.shape == "square":
        draw.rectangle((cx - h, cy - h, cx + h, cy + h), fill=fill)
    elif shape.shape == "triangle":
        draw.polygon([(cx, cy - h), (cx - h, cy + h), (cx + h, cy + h)], fill=fill)
    else:  # cross
        t = max(2, h // 3)
        draw.rectangle((cx - h, cy - t, cx + h, cy + t), fill=fill)
        draw.rectangle((cx - t, cy - h, cx + t, cy + h), fill=fill)


def render(scene: Scene, seed: int = 0) -> Image.Image:
    """The scene as a square RGB image of its layout's size. ``seed`` only shapes illegible scribbles."""
    side = scene.layout.image_size
    image = Image.new("RGB", (side, side), scene.background)
    draw = ImageDraw.Draw(image)
    for shape in scene.shapes:
        _draw_shape(draw, shape, scene.layout)
    canvas = np.array(image)
    if scene.text is not None:
        x, y = scene.text.origin
        if scene.text.legible:
            for k, ch in enumerate(scene.text.text):
                draw_text(canvas, ch, x + k * TEXT_ADVANCE, y, TEXT_COLOUR)
        else:  # a scribble: as much ink as text, no glyph
            rng = np.random.default_rng(seed)
            for k in range(scene.text.length):
                mask = rng.random((GLYPH_HEIGHT, 5)) < 0.45
                canvas[y : y + GLYPH_HEIGHT, x + k * TEXT_ADVANCE : x + k * TEXT_ADVANCE + 5][mask] = TEXT_COLOUR
    return Image.fromarray(canvas)
