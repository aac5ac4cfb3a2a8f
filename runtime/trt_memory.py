"""`janus-edge memory BUNDLE`: the device memory a bundle (or engines dir) needs, from its manifest alone.

    weights      the manifest's per-graph weight bytes (exact: what the export/quantize counted from the graphs)
    text table   the text-embedding table (read on the host; on a Jetson host and GPU share the same memory)
    KV cache     2 x layers x rows x kv_heads x final length x head_dim x cache dtype bytes (exact: what the
                 runtime allocates once per request)
    activations  an estimate of the largest transient of one call: the lm at prefill (attention scores in fp32 for
                 one layer + the hidden/MLP tensors alive at once, MLP width ~2.75 x hidden as in Janus-Pro), the
                 image logits, and the VQ decoder's largest feature maps; TensorRT's own workspace comes on top
                 (capped by `build --workspace-mb`)
Totals per request kind: t2i with n=1 and n=max images (2n CFG rows, prompt + image tokens), chat with one image.
Runs without onnx, tensorrt or a GPU (a Jetson can size a bundle before building).
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np

from janus_edge import contract as C
from janus_edge.errors import BundleError

from . import trt_engines as E

MIB = 2**20
MLP_RATIO = 2.75  # Janus-Pro-1B 5632/2048; Pro-7B 11008/4096 = 2.69
VQ_CHANNELS = 128  # the VQ decoder's widest stage at full resolution (Janus VQ-16: 128 channels)


def _es(dtype: str | None) -> int:
    return np.dtype(dtype or "float32").itemsize


def kv_bytes(d: C.ModelDims, rows: int, length: int, dtype: str) -> int:
    return 2 * d.num_layers * rows * d.num_kv_heads * length * d.head_dim * _es(dtype)


def activation_bytes(d: C.ModelDims, rows: int, seq: int, past: int, dtype: str, n_images: int) -> int:
    es = _es(dtype)
    scores = rows * d.num_heads * seq * past * 4
    hidden = rows * seq * d.hidden_size * es * 8 + rows * seq * int(MLP_RATIO * d.hidden_size) * es * 3
    logits = max(rows * d.image_vocab_size, d.vocab_size) * 4
    vq = n_images * 3 * d.image_size * d.image_size * VQ_CHANNELS * es
    return max(scores + hidden + logits, vq)


def request_totals(d: C.ModelDims, dt: str, cache_dt: str, resident: int, lim: E.Limits) -> dict:
    """Per request kind: rows, cache length, KV, activations and the total with `resident` bytes (weights + text
    table). Shared by `report` (a bundle on disk) and scripts/jetson-memory-table (model shapes on paper)."""
    t2i_prompt = 64
    kinds = {
        "t2i n=1": (2, t2i_prompt, t2i_prompt + d.num_image_tokens, 1),
        f"t2i n={lim.max_images}": (lim.max_rows, t2i_prompt, t2i_prompt + d.num_image_tokens, lim.max_images),
        "chat, 1 image": (1, min(lim.max_prompt_len, d.num_image_tokens + 64),  # no VQ decode in chat
                          min(lim.max_prompt_len, d.num_image_tokens + 64) + lim.max_new_tokens, 0),
    }
    out = {}
    for k, (rows, seq, length, n) in kinds.items():
        kv = kv_bytes(d, rows, length, cache_dt)
        act = activation_bytes(d, rows, seq, length, dt, n)
        out[k] = {"rows": rows, "cache_len": length, "kv_mib": round(kv / MIB, 1),
                  "activations_mib": round(act / MIB, 1), "total_mib": round((resident + kv + act) / MIB, 1)}
    return out


def report(path: str, max_images: int = 4, max_prompt_len: int | None = None, max_new_tokens: int = 512) -> dict:
    try:
        m = C.load_manifest(path)
    except C.ContractError as e:
        raise BundleError(str(e)) from None
    d, dt = m.dims, m.dtype
    cache_dt = getattr(m, "kv_cache_dtype", None) or dt
    if os.path.isfile(os.path.join(path, E.ENGINES_JSON)):
        lim = E.meta_limits(E.read_meta(path))
    else:
        lim = E.plan_limits(d, max_images, max_prompt_len, max_new_tokens)
    weights = {g: int(e.weight_bytes) for g, e in m.graphs.items() if getattr(e, "target", "any") != "ort"}
    te = m.text_embedding
    table = int(np.prod(te.get("shape", [d.vocab_size, d.hidden_size]))) * _es(te.get("dtype", dt))
    w_total = sum(weights.values())
    requests = request_totals(d, dt, cache_dt, w_total + table, lim)
    return {"bundle": os.path.abspath(path), "dtype": dt, "kv_cache_dtype": cache_dt,
            "precision": {g: e.precision for g, e in m.graphs.items()},
            "weights_mib": {g: round(b / MIB, 1) for g, b in weights.items()},
            "weights_total_mib": round(w_total / MIB, 1), "text_table_mib": round(table / MIB, 1),
            "requests": requests}


def run_cli(bundle: str, max_images: int = 4, max_prompt_len: int | None = None, max_new_tokens: int = 512,
            as_json: bool = False) -> int:
    r = report(bundle, max_images, max_prompt_len, max_new_tokens)
    if as_json:
        print(json.dumps(r, indent=2))
        return 0
    prec = sorted(set(r["precision"].values()))
    print(f"{r['bundle']}: {'/'.join(prec)} graphs, {r['dtype']} activations, {r['kv_cache_dtype']} KV cache")
    print(f"  weights      {r['weights_total_mib']:9.1f} MiB  (" +
          ", ".join(f"{g} {b:.1f}" for g, b in r["weights_mib"].items()) + ")")
    print(f"  text table   {r['text_table_mib']:9.1f} MiB  (host; shared memory on a Jetson)")
    for k, q in r["requests"].items():
        print(f"  {k:14s} KV {q['kv_mib']:8.1f} MiB ({q['rows']} rows x {q['cache_len']})  activations ~"
              f"{q['activations_mib']:.1f} MiB  total {q['total_mib']:.1f} MiB")
    print("  (+ TensorRT workspace and the CUDA context, ~0.3-1 GiB; on a Jetson the OS and desktop share the memory)",
          file=sys.stderr)
    return 0
