"""The bandwidth floor of one decode step: the bytes it must read, divided by the measured bandwidth.

bytes = weights of the graphs a step runs (manifest `weight_bytes`: gen_embed + lm + gen_head for an image token,
lm + lm_head for a text token) + the KV-cache bytes a step must read. The cache term counts the VALID prefix
(2 x layers x rows x kv_heads x head_dim x itemsize x filled positions, averaged over the steps timed): what an
attention that reads only the filled positions reads. The bytes of reading the whole preallocated cache every
step (what a masked attention over the full buffer reads) are reported next to it as `*_full_cache`.
"""
from __future__ import annotations

import os

import numpy as np

T2I_GRAPHS = ("gen_embed", "lm", "gen_head")
CHAT_GRAPHS = ("lm", "lm_head")


def graph_weight_bytes(manifest, bundle_dir: str, graph: str) -> tuple[int, str]:
    """(bytes, source): the manifest's `weight_bytes`, or the graph's file sizes for bundles that lack it."""
    e = manifest.graphs[graph]
    if e.weight_bytes:
        return int(e.weight_bytes), "manifest weight_bytes"
    files = [e.file, *e.external_data]
    return sum(os.path.getsize(os.path.join(bundle_dir, f)) for f in files), "file sizes (no weight_bytes)"


def kv_bytes_per_position(dims, rows: int, itemsize: int) -> int:
    """K and V of every layer for one position of every row."""
    return 2 * dims.num_layers * rows * dims.num_kv_heads * dims.head_dim * itemsize


def kv_valid_bytes(dims, rows: int, itemsize: int, prompt_len: int, step_indices) -> float:
    """Average over the timed decode steps of the valid-prefix cache bytes. Decode step k (1-based) feeds the token
    at position prompt_len + k - 1, so its attention reads prompt_len + k positions (the filled prefix + itself)."""
    k = np.asarray(list(step_indices), dtype=np.float64)
    return float(kv_bytes_per_position(dims, rows, itemsize) * (prompt_len + k).mean())


def floor(weight_bytes: int, kv_bytes: float, kv_full_bytes: float, bandwidth_gbps: float, p50_ms: float) -> dict:
    bw = bandwidth_gbps * 1e9
    total, total_full = weight_bytes + kv_bytes, weight_bytes + kv_full_bytes
    floor_ms = total / bw * 1e3
    floor_full_ms = total_full / bw * 1e3
    return {"weight_bytes_per_step": int(weight_bytes), "kv_bytes_per_step": int(round(kv_bytes)),
            "kv_bytes_per_step_full_cache": int(round(kv_full_bytes)), "bytes_per_step": int(round(total)),
            "floor_ms": round(floor_ms, 4), "floor_ratio": round(p50_ms / floor_ms, 4),
            "floor_ms_full_cache": round(floor_full_ms, 4), "floor_ratio_full_cache": round(p50_ms / floor_full_ms, 4),
            "achieved_gbps": round(total / (p50_ms * 1e-3) / 1e9, 3)}
