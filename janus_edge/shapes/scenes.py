"""The shapes scenes: a white background with one coloured shape, its caption and three questions.

Grammar (tools and tests rely on these exact words):
    caption   `a {color} {shape} in the {position}`
    questions `What color is the shape?` -> color, `What shape is it?` -> shape, `Where is the shape?` -> position
Colours, shapes and positions are below; a position is a cell of the 3x3 grid. Size, exact placement and the
shade of the colour vary a little (seeded). HELD_OUT lists 12 of the 108 (colour, shape, position) triples that
training never sees; every colour, shape and position on its own is still seen.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COLORS = {"red": (220, 30, 30), "green": (30, 160, 40), "blue": (30, 60, 220), "yellow": (235, 200, 20)}
SHAPES = ("circle", "square", "triangle")
# row-major 3x3 grid: index // 3 is the row (top, middle, bottom), index % 3 the column (left, middle, right)
POSITIONS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
QUESTIONS = {"color": "What color is the shape?", "shape": "What shape is it?", "position": "Where is the shape?"}
BACKGROUND = (255, 255, 255)
SIZE = 32  # pixels: the shapes model's image size


def _held_out() -> tuple:
    colors, out = list(COLORS), []
    for i in range(12):  # i % 4 and i % 3 make the 12 (colour, shape) pairs distinct
        out.append((colors[i % 4], SHAPES[i % 3], POSITIONS[(5 * i + 2) % 9]))
    return tuple(out)


HELD_OUT = _held_out()


@dataclass(frozen=True)
class Scene:
    color: str
    shape: str
    position: str

    @property
    def triple(self) -> tuple:
        return (self.color, self.shape, self.position)

    @property
    def caption(self) -> str:
        return caption(self.color, self.shape, self.position)

    def answer(self, attribute: str) -> str:
        return {"color": self.color, "shape": self.shape, "position": self.position}[attribute]


def caption(color: str, shape: str, position: str) -> str:
    return f"a {color} {shape} in the {position}"


def parse_caption(text: str) -> Scene:
    """`a {color} {shape} in the {position}` -> Scene; ValueError on anything else."""
    words = text.strip().split(" ", 3)
    if len(words) == 4 and words[0] == "a" and words[3].startswith("in the "):
        color, shape, position = words[1], words[2], words[3][len("in the "):]
        if color in COLORS and shape in SHAPES and position in POSITIONS:
            return Scene(color, shape, position)
    raise ValueError(f"not a shapes caption: {text!r}")


def all_triples() -> list:
    return [(c, s, p) for c in COLORS for s in SHAPES for p in POSITIONS]


def train_triples() -> list:
    held = set(HELD_OUT)
    return [t for t in all_triples() if t not in held]


def cell_center(position: str, size: int = SIZE) -> tuple[float, float]:
    i = POSITIONS.index(position)
    cell = size / 3
    return ((i % 3 + 0.5) * cell, (i // 3 + 0.5) * cell)


def draw(scene: Scene, rng: np.random.Generator | None = None, size: int = SIZE):
    """The scene as an RGB PIL image; `rng` jitters size, placement and shade (None: the canonical picture)."""
    from PIL import Image, ImageDraw

    jit = (lambda lo, hi: float(rng.uniform(lo, hi))) if rng is not None else (lambda lo, hi: 0.0)
    cell = size / 3
    side = cell * (0.72 + jit(-0.1, 0.1))
    cx, cy = cell_center(scene.position, size)
    cx, cy = cx + jit(-0.08, 0.08) * cell, cy + jit(-0.08, 0.08) * cell
    shade = np.clip(np.asarray(COLORS[scene.color]) + np.asarray([jit(-12, 12) for _ in range(3)]), 0, 255)
    fill = tuple(int(round(v)) for v in shade)
    img = Image.new("RGB", (size, size), BACKGROUND)
    d = ImageDraw.Draw(img)
    x0, y0, x1, y1 = cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2
    if scene.shape == "circle":
        d.ellipse([x0, y0, x1, y1], fill=fill)
    elif scene.shape == "square":
        s = side * 0.9  # about the circle's area
        d.rectangle([cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2], fill=fill)
    elif scene.shape == "triangle":
        d.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=fill)
    else:
        raise ValueError(f"unknown shape {scene.shape!r}")
    return img


def sample_scenes(n: int, seed: int, triples: list | None = None) -> list[Scene]:
    """n scenes drawn uniformly (seeded) from `triples` (default: the training triples)."""
    triples = triples if triples is not None else train_triples()
    rng = np.random.default_rng(seed)
    return [Scene(*triples[i]) for i in rng.integers(0, len(triples), n)]


def scene_images(scenes: list[Scene], seed: int, size: int = SIZE) -> np.ndarray:
    """uint8 [n, size, size, 3] pictures of `scenes`, jittered from one seeded generator."""
    rng = np.random.default_rng(seed)
    return np.stack([np.asarray(draw(s, rng, size)) for s in scenes])
