"""ShapeEval: reads a shapes picture back into (colour, shape, position), written from the scene definition
(scenes.py), never from a model; numpy only.

- every pixel goes to its nearest palette colour, white included (the background);
- the colour is the most frequent non-white one (by pixel count);
- the pixels of that colour: their centroid's 3x3 grid cell is the position, and the share of their bounding box
  they fill is the shape (square ~1, circle ~pi/4, triangle ~1/2).
Scoring: a generated picture counts when every attribute its prompt states is right; a chat answer counts when it
is exactly the scene's word (surrounding spaces and a final full stop aside, case-insensitive).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .scenes import BACKGROUND, COLORS, POSITIONS, Scene

_NAMES = ["white", *COLORS]
_PALETTE = np.asarray([BACKGROUND, *COLORS.values()], np.float32)
# fill ratio of the bounding box: square 1.0, circle pi/4 = 0.785, triangle 0.5; cut half-way between
SQUARE_ABOVE, TRIANGLE_BELOW = 0.89, 0.64
MIN_PIXELS = 6  # fewer pixels of the winning colour: nothing found


@dataclass(frozen=True)
class Detection:
    color: str | None
    shape: str | None
    position: str | None
    pixels: int  # pixels of the detected colour
    fill: float  # their share of their bounding box

    @property
    def found(self) -> bool:
        return self.color is not None

    def scene(self) -> Scene | None:
        return Scene(self.color, self.shape, self.position) if self.found else None


def _array(image) -> np.ndarray:
    a = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {a.shape}")
    return a.astype(np.float32)


def nearest_colors(image) -> np.ndarray:
    """[H, W] index into ["white", red, green, blue, yellow] of each pixel's nearest palette colour."""
    a = _array(image)
    d = ((a[:, :, None, :] - _PALETTE[None, None]) ** 2).sum(-1)
    return d.argmin(-1)


def shape_of(fill: float) -> str:
    return "square" if fill >= SQUARE_ABOVE else ("triangle" if fill < TRIANGLE_BELOW else "circle")


def detect(image) -> Detection:
    """The scene a picture shows (None fields when no coloured shape is found)."""
    idx = nearest_colors(image)
    h, w = idx.shape
    counts = np.bincount(idx.ravel(), minlength=len(_NAMES))
    counts[0] = 0
    best = int(counts.argmax())
    if counts[best] < MIN_PIXELS:
        return Detection(None, None, None, int(counts[best]), 0.0)
    ys, xs = np.nonzero(idx == best)
    cx, cy = (xs.mean() + 0.5) / w, (ys.mean() + 0.5) / h
    col, row = min(int(cx * 3), 2), min(int(cy * 3), 2)
    box = (xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1)
    fill = len(xs) / box
    return Detection(_NAMES[best], shape_of(fill), POSITIONS[3 * row + col], len(xs), float(fill))


def image_correct(image, scene: Scene) -> dict:
    """Which attributes of `scene` the picture shows: {color, shape, position, all} -> bool."""
    d = detect(image)
    out = {"color": d.color == scene.color, "shape": d.shape == scene.shape, "position": d.position == scene.position}
    out["all"] = all(out.values())
    return out


def normalize_answer(text: str) -> str:
    return " ".join(text.strip().rstrip(".").lower().split())


def answer_correct(answer: str, expected: str) -> bool:
    return normalize_answer(answer) == expected


__all__ = ["Detection", "detect", "image_correct", "answer_correct", "normalize_answer", "nearest_colors"]
