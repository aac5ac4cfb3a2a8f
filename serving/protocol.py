"""The served models' tensors (one table: config.pbtxt is written from it, the models parse with it)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from janus_edge.errors import InputError


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str  # Triton config type (TYPE_STRING, TYPE_INT32, ...)
    dims: tuple
    optional: bool = True
    doc: str = ""


SAMPLING = (
    Tensor("TEMPERATURE", "TYPE_FP32", (1,), doc="0 = greedy (default 1 for t2i, 0 for chat)"),
    Tensor("TOP_K", "TYPE_INT32", (1,), doc="keep the k most likely tokens (absent: off)"),
    Tensor("TOP_P", "TYPE_FP32", (1,), doc="nucleus mass in (0, 1] (absent: off)"),
    Tensor("SEED", "TYPE_INT64", (1,), doc="a request's tokens depend only on its seed (absent: random)"),
)
T2I_IN = (Tensor("PROMPT", "TYPE_STRING", (1,), optional=False),
          Tensor("N", "TYPE_INT32", (1,), doc="images (default 1)"),
          Tensor("CFG", "TYPE_FP32", (1,), doc="classifier-free guidance weight >= 1 (default 5)"), *SAMPLING)
CHAT_IN = (Tensor("KIND", "TYPE_STRING", (1,), doc='"chat" (default), "t2i" (as the t2i model) or "stats"'),
           Tensor("QUESTION", "TYPE_STRING", (1,)),
           Tensor("IMAGE", "TYPE_STRING", (-1,), doc="encoded images (PNG/JPEG bytes)"),
           Tensor("MAX_NEW_TOKENS", "TYPE_INT32", (1,), doc="default 256"),
           Tensor("PROMPT", "TYPE_STRING", (1,)), Tensor("N", "TYPE_INT32", (1,)), Tensor("CFG", "TYPE_FP32", (1,)),
           *SAMPLING)


def t2i_out(num_image_tokens: int) -> tuple:
    return (Tensor("IMAGES", "TYPE_STRING", (-1,), doc="PNG bytes, one per image"),
            Tensor("TOKENS", "TYPE_INT64", (-1, num_image_tokens), doc="image tokens [n, T]"))


def chat_out(num_image_tokens: int) -> tuple:
    return (Tensor("TEXT", "TYPE_STRING", (1,), doc="the next piece of the answer"),
            *t2i_out(num_image_tokens), Tensor("STATS", "TYPE_STRING", (1,), doc="scheduler counters (JSON)"))


# ---- parsing (numpy arrays as Triton gives them -> Python values; the engine validates ranges) ---------------------
def _one(inp: dict, name: str, cast, default=None):
    a = inp.get(name)
    if a is None:
        return default
    a = np.asarray(a).reshape(-1)
    if a.size != 1:
        raise InputError(f"{name} must hold one value, got {a.size}")
    v = a[0]
    if cast is str:
        if isinstance(v, (bytes, np.bytes_)):
            try:
                return bytes(v).decode("utf-8")
            except UnicodeDecodeError:
                raise InputError(f"{name} is not UTF-8 text") from None
        return str(v)
    return cast(v.item() if hasattr(v, "item") else v)


def kind_of(inp: dict) -> str:
    kind = _one(inp, "KIND", str, None)
    if kind is None:
        kind = "t2i" if "PROMPT" in inp and "QUESTION" not in inp else "chat"
    if kind not in ("chat", "t2i", "stats"):
        raise InputError(f'KIND must be "chat", "t2i" or "stats", got {kind!r}')
    return kind


def _sampling(inp: dict, temperature: float) -> dict:
    return {"temperature": _one(inp, "TEMPERATURE", float, temperature), "top_k": _one(inp, "TOP_K", int),
            "top_p": _one(inp, "TOP_P", float), "seed": _one(inp, "SEED", int)}


def t2i_args(inp: dict) -> dict:
    prompt = _one(inp, "PROMPT", str)
    if prompt is None:
        raise InputError("PROMPT is required")
    return {"prompt": prompt, "n": _one(inp, "N", int, 1), "cfg_weight": _one(inp, "CFG", float, 5.0),
            **_sampling(inp, 1.0)}


def chat_args(inp: dict) -> dict:
    q = _one(inp, "QUESTION", str)
    if q is None:
        raise InputError("QUESTION is required")
    images = [bytes(b) for b in np.asarray(inp["IMAGE"]).reshape(-1)] if "IMAGE" in inp else []
    return {"question": q, "images": images, "max_new_tokens": _one(inp, "MAX_NEW_TOKENS", int, 256),
            **_sampling(inp, 0.0)}
