"""Token sampling on the host: temperature, top-k, top-p; greedy when temperature == 0.

Rows are independent (one per image, or the one chat row). The draw uses one uniform number per row from the
request's seeded generator, by inverse CDF over the kept tokens in descending-probability order, so a seed fixes
the tokens.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from janus_edge.errors import InputError, NumericalError


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
        return self.temperature == 0


def check_finite(logits: np.ndarray, where: str) -> None:
    if not np.isfinite(logits).all():
        bad = "NaN" if np.isnan(logits).any() else "inf"
        raise NumericalError(f"{bad} in {where} logits: the model's outputs are not finite "
                             "(a broken checkpoint, or fp16 overflow)")


def sample(logits: np.ndarray, cfg: SamplingConfig, rng: np.random.Generator | None) -> np.ndarray:
    """logits [rows, V] -> token ids [rows] (int64)."""
    if cfg.greedy:
        return logits.argmax(-1).astype(np.int64)
    x = logits.astype(np.float64) / cfg.temperature
    if cfg.top_k is not None and cfg.top_k < x.shape[-1]:
        kth = np.partition(x, -cfg.top_k, axis=-1)[:, -cfg.top_k][:, None]
        x = np.where(x >= kth, x, -np.inf)
    order = np.argsort(-x, axis=-1, kind="stable")
    xs = np.take_along_axis(x, order, -1)
    p = np.exp(xs - xs[:, :1])
    p /= p.sum(-1, keepdims=True)
    cdf = np.cumsum(p, -1)
    if cfg.top_p is not None and cfg.top_p < 1:
        # keep the smallest prefix whose mass reaches top_p (the first token always stays)
        keep = (cdf - p) < cfg.top_p
        p = np.where(keep, p, 0.0)
        p /= p.sum(-1, keepdims=True)
        cdf = np.cumsum(p, -1)
    u = rng.random(x.shape[0])[:, None] if rng is not None else np.random.default_rng().random(x.shape[0])[:, None]
    idx = np.minimum((cdf < u * cdf[:, -1:]).sum(-1), x.shape[-1] - 1)
    # never land on a zero-probability token through rounding
    while True:
        chosen = np.take_along_axis(p, idx[:, None], -1)[:, 0]
        bad = chosen <= 0
        if not bad.any():
            break
        idx = np.where(bad, idx - 1, idx)
    return np.take_along_axis(order, idx[:, None], -1)[:, 0].astype(np.int64)
