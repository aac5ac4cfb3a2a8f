"""The live preview of images being drawn: one colour per VQ code, made once from the VQ decoder, then per update
only a table lookup over the tokens so far (a mosaic of grid cells) and a tiny PNG that the browser upscales.
No VQ decode per update: the cost is measured per update (`PreviewStream`) against the decode step.

The table: for a small codebook (<= UNIFORM_MAX codes) each code is decoded as a uniform token grid and its colour
is the mean of that image; a larger one is decoded as grids of distinct codes (V / T decodes: 29 for Janus's 16384
codes, 8 for the tiny model's 512, where one decode per code took 66 s here), each code's colour the mean of the
middle of its cell (neighbours bleed in a little).
The table is cached under $XDG_CACHE_HOME/janus-edge/, keyed by the VQ decoder's sha256.
"""
from __future__ import annotations

import base64
import io
import math
import os
import time

import numpy as np

UNIFORM_MAX = 256
BATCH = 8  # VQ decodes per call while the table is made


def grid_side(num_image_tokens: int) -> int:
    g = math.isqrt(num_image_tokens)
    if g * g != num_image_tokens:
        raise ValueError(f"image tokens {num_image_tokens} do not form a square grid")
    return g


def _cache_path(bundle) -> str | None:
    m = bundle.manifest
    sha = m.files.get(m.graphs["vq_decoder"].file)
    if not sha:
        return None
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "janus-edge", f"preview-colours-{sha[:24]}.npy")


def _decode(pipe, codes: np.ndarray) -> np.ndarray:
    """codes [b, T] -> pixels [b, H, W, 3] uint8."""
    return np.stack([np.asarray(im) for im in pipe.decode_tokens(codes)])


def _uniform_table(pipe) -> np.ndarray:
    d = pipe.dims
    V, T = d.image_vocab_size, d.num_image_tokens
    out = np.zeros((V, 3), np.uint8)
    for a in range(0, V, BATCH):
        codes = np.repeat(np.arange(a, min(a + BATCH, V), dtype=np.int64)[:, None], T, 1)
        out[a:a + len(codes)] = _decode(pipe, codes).mean((1, 2)).round()
    return out


def _mosaic_table(pipe) -> np.ndarray:
    d = pipe.dims
    V, T = d.image_vocab_size, d.num_image_tokens
    g = grid_side(T)
    all_codes = np.arange(-(-V // T) * T, dtype=np.int64) % V  # whole grids; the last one wraps around
    out = np.zeros((V, 3), np.uint8)
    grids = all_codes.reshape(-1, T)
    for a in range(0, len(grids), BATCH):
        px = _decode(pipe, grids[a:a + BATCH])
        b, H = px.shape[0], px.shape[1]
        c = H // g
        q = max(c // 4, 0)  # the middle half of each cell
        cells = px.reshape(b, g, c, g, c, 3)[:, :, q:c - q, :, q:c - q].mean((2, 4)).reshape(b * T, 3)
        out[grids[a:a + BATCH].reshape(-1)] = cells.round()
    return out


def colour_table(pipe, cache: bool = True) -> np.ndarray:
    """[image_vocab_size, 3] uint8: the colour each VQ code draws."""
    path = _cache_path(pipe.bundle) if cache else None
    if path and os.path.isfile(path):
        t = np.load(path)
        if t.shape == (pipe.dims.image_vocab_size, 3):
            return t
    t = _uniform_table(pipe) if pipe.dims.image_vocab_size <= UNIFORM_MAX else _mosaic_table(pipe)
    if path:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp.npy"
        np.save(tmp, t)
        os.replace(tmp, path)
    return t


def mosaic(table: np.ndarray, tokens: np.ndarray, num_image_tokens: int) -> np.ndarray:
    """tokens [n, k] (the first k of each image) -> RGBA [n, g, g, 4] uint8; cells not drawn yet are transparent."""
    g = grid_side(num_image_tokens)
    n, k = tokens.shape
    out = np.zeros((n, num_image_tokens, 4), np.uint8)
    out[:, :k, :3] = table[tokens]
    out[:, :k, 3] = 255
    return out.reshape(n, g, g, 4)


def png_data_uri(rgba: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def preview_html(table: np.ndarray, tokens: np.ndarray, num_image_tokens: int, px: int = 192) -> str:
    """The preview element: one upscaled mosaic per image; data-tokens says how many tokens each shows."""
    k = tokens.shape[1]
    imgs = "".join(f'<img class="je-mosaic" src="{png_data_uri(m)}" width="{px}" height="{px}" '
                   f'style="image-rendering:pixelated;background:#ddd;margin:2px" alt="preview {i}">'
                   for i, m in enumerate(mosaic(table, tokens, num_image_tokens)))
    return f'<div id="je-preview-state" data-tokens="{k}">{imgs}</div>'


class PreviewStream:
    """The page's preview schedule over a request's steps: `add(step tokens [n])` returns the preview's HTML when a
    row of tokens is complete, or None. A row's update is skipped when it would take the preview past `budget` of the
    decode's wall time so far (a fast model draws rows faster than they are worth showing; the image follows anyway).
    Keeps the figures: steps, ms per step, preview updates, ms per update, the preview's share of the decode."""

    def __init__(self, table: np.ndarray | None, num_image_tokens: int, budget: float = 0.01):
        self.table, self.T, self.budget = table, num_image_tokens, budget
        self.g = grid_side(num_image_tokens)
        self.got: list[np.ndarray] = []
        self.marks: list[float] = []
        self.updates, self.seconds = 0, 0.0

    def add(self, tok: np.ndarray) -> str | None:
        self.got.append(tok)
        self.marks.append(time.perf_counter())
        k = len(self.got)
        if self.table is None or k % self.g:
            return None
        last = self.seconds / self.updates if self.updates else 0.0  # what the next update will likely cost
        if self.seconds + last > self.budget * self.decode_s:
            return None
        t0 = time.perf_counter()
        html = preview_html(self.table, np.stack(self.got, 1), self.T)
        self.seconds += time.perf_counter() - t0
        self.updates += 1
        return html

    @property
    def decode_s(self) -> float:
        return self.marks[-1] - self.marks[0] if self.marks else 0.0

    def figures(self) -> dict:
        steps = len(self.marks)
        if steps < 2:
            return {"summary": "(no per-step timing: the server returns the images at once)"}
        step_ms = 1e3 * self.decode_s / (steps - 1)
        per = 1e3 * self.seconds / max(self.updates, 1)
        share = 100 * self.seconds / self.decode_s if self.decode_s > 0 else float("nan")
        return {"steps": steps, "step_ms": step_ms, "preview_updates": self.updates, "preview_ms_per_update": per,
                "preview_share_pct": share,
                "summary": f"{steps} steps, {step_ms:.2f} ms/step; preview {self.updates} updates at {per:.3f} ms "
                           f"each = {share:.2f}% of the decode"}
