"""Image pre- and post-processing as the official Janus processor does it (no torch)."""
from __future__ import annotations

import os
import struct
import warnings

import numpy as np

from janus_edge.errors import InputError

RESAMPLE = {"bicubic": 3, "bilinear": 2, "nearest": 0, "lanczos": 1}


def load_image(src):
    """A path or a PIL image -> the 8-bit RGB image the model sees; a file PIL cannot decode is an InputError.

    A file is read as transformers' `image_utils.load_image` (and the official Janus `load_pil_images`) read it:
    the first frame of an animation, EXIF orientation applied, then PIL's `convert("RGB")` (alpha dropped;
    grey, palette and CMYK expanded; 32-bit int and float values clipped to 0..255). A PIL image is treated the
    same way (so a path and `Image.open(path)` give the same answer). One deliberate difference: 16-bit grey (PIL
    modes I;16*, or I from a PNG) is scaled to 8 bits (v / 257), where PIL's convert clips it at 255 and turns most
    pixels white. Files over PIL's decompression-bomb limit (`PIL.Image.MAX_IMAGE_PIXELS`) are refused unread."""
    from PIL import Image

    if isinstance(src, Image.Image):
        try:
            return _to_rgb(src)
        except DECODE_ERRORS as e:
            raise InputError(f"not a readable image: the given PIL image ({_why(e)})") from None
    if not isinstance(src, (str, os.PathLike)):
        raise InputError(f"expected an image path or a PIL.Image, got {type(src).__name__}")
    path = os.fspath(src)
    if not os.path.isfile(path):
        raise InputError(f"image is not a file: {path}" if os.path.exists(path) else f"image not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # over the limit: refuse, not warn
            with Image.open(path) as img:
                return _to_rgb(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InputError(f"image too large: {path} ({_why(e)}); PIL refuses images over PIL.Image.MAX_IMAGE_PIXELS "
                         f"= {Image.MAX_IMAGE_PIXELS} pixels: raise it to accept this one") from None
    except DECODE_ERRORS as e:
        raise InputError(f"not a readable image: {path} ({_why(e)})") from None


def _to_rgb(img):
    from PIL import ImageOps

    img.load()  # the first frame; a truncated or corrupt file fails here
    fmt = img.format
    img = ImageOps.exif_transpose(img)
    if img.mode.startswith("I;16") or (img.mode == "I" and fmt == "PNG"):  # 16-bit grey (older PIL: mode I)
        from PIL import Image

        a = np.asarray(img).astype(np.float64)
        img = Image.fromarray(np.clip(np.rint(a / 257), 0, 255).astype(np.uint8))
    return img.convert("RGB")


# What PIL raises on a file it cannot decode (UnidentifiedImageError is an OSError).
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, struct.error)


def _why(e: BaseException) -> str:
    return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"


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
