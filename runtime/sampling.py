"""Token sampling on the host, the numpy twin of the CUDA `cfg_sample` kernel: one definition, bit-exact on both.

API (also what the scheduler uses: one `SeededSampler` per request, so a request's tokens depend only on its seed):

    rng = SeededSampler(seed)                       # seed: int in [0, 2**64); None -> a fresh random seed
    tokens = sample(logits, cfg, rng, step)         # logits [rows, V] -> int64 [rows]; row r is image r
    tokens = sample(logits, cfg, rng, step, images=[3])   # rows that are images 3.. of a request (batch slices)

The draw for (seed, step, image) is Philox4x32-10 (runtime/philox.py), the same number the GPU kernel uses; with
the same logits the CPU and the GPU pick the same token. The definition (native/include/janus_edge/sampling_math.h
has the same functions for the CUDA kernel and the host library):

1. l = logits as float32; NaN -> -inf, +inf -> FLT_MAX (the decode loops raise on non-finite logits before this).
   With CFG (the kernel's has_uncond; `cfg_combine` here): l = u + w * (c - u) in float32.
2. Order: by l descending, ties by the lower token id (a strict total order: the 64-bit key `order_keys`).
3. Greedy (temperature 0, or one that rounds to 0 in float32, or top_k == 1): the first token in that order,
   i.e. numpy's argmax of the logits.
4. Weights: w = floor(exp_f32((l - l_max) / T) * 2**31) as integers (exp_f32: a fixed polynomial in float32 ops,
   no fused multiply-add, so every platform gets the same bits); the top token weighs 2**31; a token under 2**-31
   of the top token's probability weighs 0 (never drawn). A tiny T sends every non-top token to weight 0.
5. top-k: keep the k first tokens in the order (exactly k, ties broken by id: top_k = 1 is greedy).
6. top-p: over the top-k tokens in the order, keep token i iff the kept weight before it is < p * W (W: their total,
   float64, exact below 2**53): the smallest prefix whose mass reaches p (the first token always stays; p = 1 keeps
   every token of nonzero weight; a prefix landing exactly on p stops there).
7. Draw: r = draw_u32(seed, step, image) (uint32); K = total kept weight; t = floor(r * K / 2**32) (exact integer
   arithmetic); the token is the kept token j, in token-id order, with C_j <= t < C_j + w_j (C: kept weight of lower
   ids). Only tokens of nonzero weight can be drawn. If every logit is -inf the result is token 0.

Seeded outputs changed once with this version (Philox replaced numpy's Generator); greedy outputs did not.
"""
from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from janus_edge.errors import InputError, NumericalError

from .philox import check_seed, draw_u32

FLT_MAX = np.float32(np.finfo(np.float32).max)
WEIGHT_ONE = 2 ** 31                       # the top token's weight
_F = np.float32
# exp_f32 constants (Cephes expf): log2(e), ln2 split in a short high part and a low part, polynomial on |r| <= ln2/2
LOG2E, LN2_HI, LN2_LO = _F(1.44269504088896341), _F(0.693359375), _F(-2.12194440e-4)
EXP_POLY = tuple(_F(c) for c in (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2,
                                 1.6666665459e-1, 5.0000001201e-1))
EXP_CUTOFF = _F(-64.0)                     # exp_f32(x) = 0 below (far below the smallest nonzero weight)


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None

    def validate(self) -> "SamplingConfig":
        if not np.isfinite(self.temperature) or self.temperature < 0:
            raise InputError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k is not None and (int(self.top_k) != self.top_k or self.top_k < 1):
            raise InputError(f"top-k must be an integer >= 1, got {self.top_k}")
        if self.top_p is not None and not (0 < self.top_p <= 1):
            raise InputError(f"top-p must be in (0, 1], got {self.top_p}")
        return self

    @property
    def greedy(self) -> bool:
        return _F(self.temperature) == 0 or self.top_k == 1


class SeededSampler:
    """A request's random stream: Philox4x32-10 keyed by `seed`, counted by (step, image, draw). Holds no state
    besides the seed, so draws never depend on call order or on what else is batched."""

    def __init__(self, seed: int | None = None):
        try:
            self.seed = secrets.randbits(64) if seed is None else check_seed(seed)
        except (TypeError, ValueError) as e:
            raise InputError(str(e)) from None

    def u32(self, step: int, images, draw: int = 0) -> np.ndarray:
        return draw_u32(self.seed, step, images, draw)

    def __repr__(self) -> str:
        return f"SeededSampler(seed={self.seed})"


def check_finite(logits: np.ndarray, where: str) -> None:
    if not np.isfinite(logits).all():
        bad = "NaN" if np.isnan(logits).any() else "inf"
        raise NumericalError(f"{bad} in {where} logits: the model's outputs are not finite "
                             "(a broken checkpoint, or fp16 overflow)")


# ---- the per-element math (twins of sampling_math.h) -----------------------------------------------------------
def sanitize(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits).astype(np.float32)
    return np.where(np.isnan(x), _F(-np.inf), np.minimum(x, FLT_MAX))


def cfg_combine(cond: np.ndarray, uncond: np.ndarray, w: float) -> np.ndarray:
    """u + w * (c - u) in float32 (the kernel's has_uncond path), inputs sanitized first."""
    c, u, wf = sanitize(cond), sanitize(uncond), _F(w)
    with np.errstate(over="ignore", invalid="ignore"):
        return sanitize(u + wf * (c - u))


def order_keys(l: np.ndarray) -> np.ndarray:
    """float32 [..., V] -> uint64 keys: larger key = earlier in the order (value desc, then lower id)."""
    b = np.ascontiguousarray(l, np.float32).view(np.uint32)
    b = np.where(b == np.uint32(0x80000000), np.uint32(0), b)                    # -0 == +0
    k = np.where(b & np.uint32(0x80000000), ~b, b | np.uint32(0x80000000)).astype(np.uint64)
    ids = np.arange(l.shape[-1], dtype=np.uint64)
    return (k << np.uint64(32)) | (np.uint64(0xFFFFFFFF) - ids)


def exp_f32(x: np.ndarray) -> np.ndarray:
    """exp for x <= 0 in float32 ops only (no FMA): the same bits as je_expf on the host and the GPU."""
    x = np.asarray(x, np.float32)
    live = x > EXP_CUTOFF
    xs = np.where(live, x, _F(0))
    n = np.floor(xs * LOG2E + _F(0.5))
    r = xs - n * LN2_HI
    r = r - n * LN2_LO
    p = EXP_POLY[0]
    for c in EXP_POLY[1:]:
        p = p * r + c
    e = (p * r) * r + r + _F(1)
    scale = ((n.astype(np.int32) + 127) << 23).astype(np.int32).view(np.float32)
    return np.where(live, e * scale, _F(0))


def weights(l: np.ndarray, l_max: np.float32, temperature: np.float32) -> np.ndarray:
    """uint64 weights floor(exp_f32((l - l_max) / T) * 2**31) (step 4)."""
    with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
        x = (l - _F(l_max)) / _F(temperature)
        e = exp_f32(x)
    w = (e * _F(WEIGHT_ONE)).astype(np.uint64)
    return np.minimum(w, np.uint64(WEIGHT_ONE))


def draw_target(r: int, total: int) -> int:
    """floor(r * total / 2**32) for r < 2**32, total < 2**48, in uint64-sized pieces (as the kernel does)."""
    hi, lo = total >> 32, total & 0xFFFFFFFF
    return r * hi + ((r * lo) >> 32)


def top_p_keep(sorted_w: np.ndarray, p: float) -> np.ndarray:
    """Weights in order -> bool mask of the kept prefix (step 6)."""
    before = np.cumsum(sorted_w) - sorted_w
    keep = before.astype(np.float64) < float(p) * float(sorted_w.sum())
    keep[:1] = True
    return keep


def kept_mask(l: np.ndarray, cfg: SamplingConfig) -> tuple[np.ndarray, np.ndarray]:
    """One sanitized float32 row [V] (not greedy, max finite) -> (kept tokens after top-k and top-p, weights)."""
    V = l.shape[0]
    w = weights(l, l.max(), _F(cfg.temperature))
    kept = np.ones(V, bool)
    if (cfg.top_k is None or cfg.top_k >= V) and (cfg.top_p is None or cfg.top_p >= 1):
        return kept, w
    keys = order_keys(l)
    if cfg.top_k is not None and cfg.top_k < V:
        kept = keys >= np.partition(keys, V - cfg.top_k)[V - cfg.top_k]
    if cfg.top_p is not None and cfg.top_p < 1:
        idx = np.flatnonzero(kept)
        order = idx[np.argsort(keys[idx])[::-1]]
        kept = np.zeros(V, bool)
        kept[order[top_p_keep(w[order], cfg.top_p)]] = True
    return kept, w


def sample_row(l: np.ndarray, cfg: SamplingConfig, r: int) -> int:
    """One sanitized float32 row [V] and its uint32 draw -> token id (steps 2-7)."""
    top = int(np.argmax(l))                 # == argmax of order_keys(l)
    if cfg.greedy or l[top] == -np.inf:
        return top
    kept, w = kept_mask(l, cfg)
    wk = np.where(kept, w, np.uint64(0))
    total = int(wk.sum())
    if total == 0:
        return top
    csum = np.cumsum(wk)
    return int(np.searchsorted(csum, np.uint64(draw_target(int(r), total)), side="right"))


def sample(logits: np.ndarray, cfg: SamplingConfig, rng: SeededSampler | None, step: int = 0,
           images: Sequence[int] | None = None) -> np.ndarray:
    """logits [rows, V] -> token ids [rows] (int64). Row r is image `images[r]` (default r) of the request; `step`
    counts the request's decode steps. rng None: a fresh random seed (only matters when not greedy)."""
    x = sanitize(logits)
    if x.ndim != 2:
        raise InputError(f"logits must be [rows, vocab], got shape {x.shape}")
    if cfg.greedy:
        return x.argmax(-1).astype(np.int64)   # the first token in the order (argmax takes the lowest id of ties)
    if rng is not None and not isinstance(rng, SeededSampler):
        raise TypeError(f"rng must be a SeededSampler (runtime/sampling.py), got {type(rng).__name__}")
    rng = rng if rng is not None else SeededSampler()
    ims = np.arange(x.shape[0]) if images is None else np.asarray(images, np.int64)
    words = rng.u32(step, ims)
    return np.array([sample_row(row, cfg, int(r)) for row, r in zip(x, words)], np.int64)
