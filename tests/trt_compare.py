"""Greedy-token comparison of an engine run against the ORT reference, tolerant of near ties only (test helper).

Greedy decoding amplifies any rounding difference once two logits are close: the first flipped token changes every
later step. So tokens must be equal up to the first step where they differ, and there the reference's top-2 logits
must be within a stated margin (a tie a rounding difference may flip); that image is not compared after it.
"""
from __future__ import annotations

import numpy as np

# the largest top-2 gap a rounding difference may flip: fp32 engines (TF32 off) ~1e-5 relative; fp16 ~1e-3 of |logit|
MARGIN = {"float32": 1e-3, "float16": 5e-2}


def top2_gap(logits: np.ndarray) -> np.ndarray:
    """[n, V] -> [n]: largest minus second-largest logit per row."""
    part = np.partition(np.asarray(logits, np.float64), -2, axis=-1)
    return part[..., -1] - part[..., -2]


def greedy_divergence(want: np.ndarray, got: np.ndarray, ref_logits: list[np.ndarray], margin: float) -> str | None:
    """want/got: tokens [n, T]; ref_logits[t]: the reference's (CFG-combined) logits [n, V] at step t.
    None when the runs agree as described above, else the first unexplained difference."""
    want, got = np.asarray(want), np.asarray(got)
    if want.shape != got.shape:
        return f"token shapes differ: {want.shape} vs {got.shape}"
    for img in range(want.shape[0]):
        diff = np.flatnonzero(want[img] != got[img])
        if diff.size == 0:
            continue
        t = int(diff[0])
        gap = float(top2_gap(ref_logits[t][img:img + 1])[0])
        if gap > margin:
            return (f"image {img} step {t}: token {got[img, t]} instead of {want[img, t]}, but the reference's top-2 "
                    f"gap is {gap:.3g} > margin {margin:g}")
    return None
