"""Philox4x32-10 (Salmon et al., SC'11; Random123), vectorised in numpy: the one random generator of janus-edge.

The CUDA kernels (native/include/janus_edge/sampling_math.h) compute the same function, so a draw is the same
number on the CPU and on the GPU. The stream layout (shared with the kernels, see `draw_u32`):

    key     = (seed & 0xffffffff, seed >> 32)                      seed: an integer in [0, 2**64)
    counter = (step & 0xffffffff, step >> 32, image, draw)         step: decode step, image: image index in the batch
    draw    = word 0 of philox4x32_10(counter, key)                 one uint32; words 1..3 are unused

so a draw depends on (seed, step, image, draw) and on nothing else (not on batch composition or call order).
Checked against Random123's known-answer vectors (tests/test_philox.py).
"""
from __future__ import annotations

import numpy as np

_MASK = np.uint64(0xFFFFFFFF)
_M0, _M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)   # round multipliers
_W0, _W1 = np.uint64(0x9E3779B9), np.uint64(0xBB67AE85)   # Weyl key increments
_S32 = np.uint64(32)


def _u64(a) -> np.ndarray:
    arr = np.asarray(a)
    if arr.dtype.kind not in "ui":
        raise TypeError(f"philox words must be integers, got {arr.dtype}")
    return np.atleast_1d(arr).astype(np.uint64) & _MASK


def philox4x32(ctr, key, rounds: int = 10) -> np.ndarray:
    """ctr: 4 uint32 words (each an array, broadcast together), key: 2 words -> uint32 [..., 4].

    Random123's philox4x32_R: each round is two 32x32->64 multiplies (hi/lo) in a Feistel-like mix; the key is
    bumped by the Weyl constants between rounds. All arithmetic in uint64 masked to 32 bits (no overflow warnings).
    """
    c0, c1, c2, c3 = (_u64(c) for c in ctr)
    k0, k1 = (_u64(k) for k in key)
    for r in range(rounds):
        if r:
            k0, k1 = (k0 + _W0) & _MASK, (k1 + _W1) & _MASK
        p0, p1 = _M0 * c0, _M1 * c2   # < 2**64: exact in uint64
        c0, c1, c2, c3 = ((p1 >> _S32) ^ c1 ^ k0, p1 & _MASK, (p0 >> _S32) ^ c3 ^ k1, p0 & _MASK)
    out = np.broadcast_arrays(c0, c1, c2, c3)
    return np.stack(out, -1).astype(np.uint32)


def check_seed(seed) -> int:
    s = int(seed)
    if isinstance(seed, bool) or s != seed or not 0 <= s < 2**64:
        raise ValueError(f"seed must be an integer in [0, 2**64), got {seed!r}")
    return s


def draw_u32(seed: int, step, image, draw=0) -> np.ndarray:
    """The uint32 draw for (seed, step, image, draw); step/image/draw broadcast (arrays of ints >= 0)."""
    s = check_seed(seed)
    st = np.atleast_1d(np.asarray(step, np.int64))
    if (st < 0).any():
        raise ValueError("step must be >= 0")
    st = st.astype(np.uint64)
    ctr = (st & _MASK, st >> _S32, np.asarray(image, np.int64), np.asarray(draw, np.int64))
    return philox4x32(ctr, (s & 0xFFFFFFFF, s >> 32))[..., 0]


def u01(words) -> np.ndarray:
    """uint32 -> float32 uniform in [0, 1): the top 24 bits times 2**-24 (exact in float32 and float64)."""
    return (np.asarray(words, np.uint32) >> np.uint32(8)).astype(np.float32) * np.float32(2.0 ** -24)
