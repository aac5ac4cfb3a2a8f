"""True AWQ (Lin et al. 2023) on the `lm` graph: per-input-channel scales searched on calibrated activations, folded
into the op that produces the activation, then the activation-weighted clip search (int4.py `awq-clip`).

For a linear y = x W whose input x comes from an op we can rescale exactly: x' = x / s, W' = diag(s) W gives the
same y in fp32, while channels with large activations get finer INT4 steps. s = m^alpha (m: the calibrated RMS of
each input channel, normalised so max(s) * min(s) = 1), alpha from a grid in [0, 1] chosen per group by the output
error on the calibration samples, sum over the group's linears of |X W - (X / s) dq(diag(s) W)|^2 (alpha 0 = no
scaling, so the search never does worse than the plain method on the calibration rows). Where 1/s is folded:
- q, k, v (one group, one input): the input_layernorm weight; gate, up: the post_attention_layernorm weight;
- down_proj: the columns of the same layer's up_proj (down's input is act(gate) * up).
o_proj is left as it is (its input is the attention output; with grouped-query attention v's columns are shared
by several heads, so a per-channel scale of o's input cannot be folded into v exactly in general).
"""
from __future__ import annotations

import numpy as np

from . import graphio

ALPHAS = tuple(np.round(np.linspace(0.0, 1.0, 11), 2))


def _dq(w: np.ndarray, block: int, stats: dict | None) -> np.ndarray:
    from .int4_weights import quantize_weight

    q, s = quantize_weight(w.astype(np.float32), block, 4, "awq-clip" if stats else "clip", stats)
    return (q.reshape(-1, block, q.shape[1]) * s[:, None, :]).reshape(q.shape)


def search_scales(X: np.ndarray, weights: list[np.ndarray], block: int, alphas=ALPHAS) -> tuple[np.ndarray, float]:
    """The per-input-channel scale s [K] (and its alpha) minimising the group's output error on samples X [n, K]."""
    X = X.astype(np.float32)
    m = np.sqrt((X.astype(np.float64) ** 2).mean(0)) + 1e-8
    refs = [X @ w.astype(np.float32) for w in weights]
    best = (None, None, np.inf)
    for a in alphas:
        s = m ** a
        s = s / np.sqrt(s.max() * s.min())
        Xs = X / s.astype(np.float32)
        st = {"mean_sq": (Xs.astype(np.float64) ** 2).mean(0).astype(np.float32)}
        err = sum(float(((Xs @ _dq(w * s[:, None], block, st)) - r).astype(np.float64).__pow__(2).sum())
                  for w, r in zip(weights, refs))
        if err < best[2]:
            best = (s, float(a), err)
    return best[0], best[1]


def _set(model, inits: dict, name: str, arr: np.ndarray) -> None:
    from onnx import numpy_helper

    model.graph.initializer.remove(inits[name])
    inits[name] = graphio.put(numpy_helper.from_array(np.ascontiguousarray(arr), name))
    model.graph.initializer.append(inits[name])


def apply_awq(model, calib, graph: str, block_size: int) -> dict:
    """Search and fold the scales in place. Returns {activation name: s} (the int4 rewrite divides that input's
    calibration statistics by s) plus "info"."""
    from .int4_weights import _stats_for, block_for, layer_of
    from .rotate import _norm_muls

    inits = graphio.initializers(model)
    readers: dict[str, list] = {}
    producer = {o: n for n in model.graph.node for o in n.output}
    for n in model.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    out, alphas = {}, {}

    def group(act, mms):
        st = _stats_for(calib, graph, act)
        if not st or st.get("samples") is None or not len(st["samples"]):
            return None
        ws = [graphio.array(inits[c.input[1]]) for c in mms]
        block = block_for(ws[0].shape[0], block_size)
        if block is None:
            return None
        s, a = search_scales(st["samples"], ws, block)
        for c, w in zip(mms, ws):
            _set(model, inits, c.input[1], (w * s[:, None]).astype(w.dtype))
        out[act], alphas[mms[0].name] = s, a
        return s

    for n, wname, _ in _norm_muls(model, inits):
        mms = [c for c in readers.get(n.output[0], []) if c.op_type == "MatMul" and c.input[1] in inits
               and layer_of(c.name)[0] in ("q", "k", "v", "gate", "up")]
        if not mms:
            continue
        s = group(n.output[0], mms)
        if s is not None:
            w = graphio.array(inits[wname])
            _set(model, inits, wname, (w / s).astype(w.dtype))
    ups = {layer_of(n.name)[1]: n for n in model.graph.node if layer_of(n.name)[0] == "up"}
    for n in list(model.graph.node):
        kind, idx = layer_of(n.name)
        if kind != "down" or n.input[1] not in inits or idx not in ups:
            continue
        mul, up = producer.get(n.input[0]), ups[idx]
        if mul is None or mul.op_type != "Mul" or up.output[0] not in mul.input or len(readers[up.output[0]]) != 1:
            continue  # not act(gate) * up: nothing to fold into
        s = group(n.input[0], [n])
        if s is not None:
            w = graphio.array(inits[up.input[1]])
            _set(model, inits, up.input[1], (w / s[None, :]).astype(w.dtype))
    out["info"] = {"groups": len(alphas), "alpha_mean": round(float(np.mean(list(alphas.values()))), 3)
                   if alphas else None, "alphas": alphas}
    return out


def scale_stats(st: dict | None, s: np.ndarray) -> dict | None:
    """Calibration statistics of an input after x' = x / s."""
    if st is None:
        return None
    new = {"mean_sq": (st["mean_sq"] / s ** 2).astype(np.float32)}
    if st.get("hessian") is not None:
        new["hessian"] = (st["hessian"] / np.outer(s, s)).astype(np.float32)
    return new
