"""Image pre- and post-processing as the official Janus processor does it (no torch)."""
from __future__ import annotations

import os

import numpy as np

from janus_edge.errors import InputError

RESAMPLE = {"bicubic": 3, "bilinear": 2, "nearest": 0, "lanczos": 1}


def load_image(src):
    """A PIL image from a path or a PIL image, EXIF orientation applied, in RGB (any mode or size accepted)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if isinstance(src, (str, os.PathLike)):
        if not os.path.isfile(src):
            raise InputError(f"image not found: {src}")
        try:
            img = Image.open(src)
            img.load()
        except (UnidentifiedImageError, OSError) as e:
            raise InputError(f"not a readable image: {src} ({type(e).__name__})") from None
    elif isinstance(src, Image.Image):
        img = src
    else:
        raise InputError(f"expected an image path or a PIL.Image, got {type(src).__name__}")
    return ImageOps.exif_transpose(img).convert("RGB")


def preprocess(img, cfg: dict, dtype: str = "float32") -> np.ndarray:
    """RGB PIL image -> [3, size, size]: longer side resized to size (bicubic), padded to a square with the
    mean colour, rescaled to [0, 1], normalised with mean/std."""
    size, min_size = int(cfg["size"]), int(cfg.get("min_size", 14))
    w, h = img.size
    scale = size / max(w, h)
    nw, nh = max(round(w * scale), min_size), max(round(h * scale), min_size)
    img = img.resize((nw, nh), resample=RESAMPLE[cfg.get("resample", "bicubic")])
    a = np.asarray(img, dtype=np.float32).transpose(2, 0, 1)  # [3, nh, nw]
    side = max(nw, nh)
    out = np.empty((3, side, side), np.float32)
    out[:] = np.asarray(cfg["background_color"], np.float32)[:, None, None]
    top, left = (side - nh) // 2, (side - nw) // 2
    out[:, top:top + nh, left:left + nw] = a
    mean = np.asarray(cfg["image_mean"], np.float32)[:, None, None]
    std = np.asarray(cfg["image_std"], np.float32)[:, None, None]
    out = (out * np.float32(cfg.get("rescale_factor", 1 / 255)) - mean) / std
    return out.astype(dtype)


def to_pil(pixels: np.ndarray) -> list:
    """[n, H, W, 3] in [-1, 1] -> PIL images: clip((x + 1) / 2 * 255)."""
    from PIL import Image

    x = np.clip((pixels.astype(np.float32) + 1) / 2 * 255, 0, 255).astype(np.uint8)
    return [Image.fromarray(im) for im in x]
