"""KV-cache precision of the `lm` graph: an fp16 or int8 cache for an fp32 graph.

The graph's `past_key.i` / `past_value.i` inputs and `new_key.i` / `new_value.i` outputs become float16; a Cast to
float32 follows each past input and a Cast to float16 precedes each new output, so the arithmetic inside stays as
it was (attention scores, softmax and the weighted sum in fp32) and only the stored cache is rounded. The runtime
allocates the cache at the dtype the manifest's `lm` I/O records (contract `graph_specs(cache_dtype=...)`), and the
manifest's `kv_cache_dtype` says it. Half the bytes per cached position: the Pro-1B t2i cache at its final length is
471 MB in fp32, 236 MB in fp16 per image.

int8 (`apply_int8`): static scales per KV head and channel (head_dim), one [kv_heads, head_dim] table per layer and
K/V, from the calibrated absmax of the fp graph's `new_key.i` / `new_value.i` outputs (quant/calib.py records them
over the same t2i / chat / text runs as the weight statistics) / 127. Past inputs: Cast(int8 -> fp32) * scale; new
outputs: Round(x / scale), Clip to [-127, 127], Cast to int8 (values past the calibrated range saturate). No extra
graph inputs, so the runtime needs nothing but the int8 buffers the manifest's I/O declares: a quarter of the fp32
cache's bytes (Pro-1B image: 118 MB). Keys are rotated (RoPE) before they are stored, so a per-channel scale follows
the rotary pairs' magnitudes; per-token scales would need a scale tensor beside every cache buffer (not done).
ONNX Runtime only: TensorRT targets are refused (quant/api.py).
"""
from __future__ import annotations

import numpy as np

from janus_edge import contract as C

ONNX_TYPES = {"float32": 1, "float16": 10}  # TensorProto.FLOAT, FLOAT16
INT8 = 3  # TensorProto.INT8
QMAX = 127.0


def cache_names(num_layers: int) -> tuple[list[str], list[str]]:
    pk, pv, nk, nv = C.lm_cache_names(num_layers)
    return pk + pv, nk + nv


def _layers(entry: C.GraphEntry) -> int:
    return sum(1 for t in entry.inputs if t["name"].startswith("past_key."))


def apply(model, dtype: str, entry: C.GraphEntry):
    """Give the lm graph a `dtype` cache (float16 on a float32 graph); returns the model."""
    from onnx import helper

    if dtype not in ONNX_TYPES:
        raise ValueError(f"unsupported KV-cache dtype {dtype!r}")
    past, new = cache_names(_layers(entry))
    inner = {vi.name: vi.type.tensor_type.elem_type for vi in (*model.graph.input, *model.graph.output)}
    want = ONNX_TYPES[dtype]
    first, last = [], []
    for name in past:
        if inner[name] == want:
            continue
        f = f"{name}/as_compute"
        for n in model.graph.node:
            for i, x in enumerate(n.input):
                if x == name:
                    n.input[i] = f
        first.append(helper.make_node("Cast", [name], [f], name=f"/kv_cache/{name}/Cast", to=inner[name]))
    for name in new:
        if inner[name] == want:
            continue
        f = f"{name}/computed"
        for n in model.graph.node:
            for seq in (n.input, n.output):
                for i, x in enumerate(seq):
                    if x == name:
                        seq[i] = f
        last.append(helper.make_node("Cast", [f], [name], name=f"/kv_cache/{name}/Cast", to=want))
    nodes = _before_first_use(first, list(model.graph.node)) + last
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    for vi in (*model.graph.input, *model.graph.output):
        if vi.name in past or vi.name in new:
            vi.type.tensor_type.elem_type = want
    return model


def int8_scales(absmax: dict, num_layers: int) -> dict:
    """{new_key.i / new_value.i: float32 [kv_heads, head_dim] scale} from the calibrated absmax tables."""
    _, new = cache_names(num_layers)
    missing = [n for n in new if n not in absmax]
    if missing:
        raise ValueError(f"no calibration statistics for the KV cache outputs {missing[:3]} (int8 KV cache)")
    return {n: np.maximum(np.asarray(absmax[n], np.float32), 1e-6) / np.float32(QMAX) for n in new}


def apply_int8(model, entry: C.GraphEntry, scales: dict):
    """Give the lm graph an int8 cache with the static `scales` (int8_scales); returns the model."""
    from onnx import helper, numpy_helper

    layers = _layers(entry)
    past, new = cache_names(layers)
    pairs = dict(zip(past, new))  # past_key.i -> new_key.i (the same layer and K/V share one scale)
    inner = {vi.name: vi.type.tensor_type.elem_type for vi in (*model.graph.input, *model.graph.output)}
    np_t = {1: np.float32, 10: np.float16}
    first, last, inits = [], [], []
    for name in new:
        s = scales[name]
        t = np_t[inner[name]]
        inits.append(numpy_helper.from_array(s.reshape(1, s.shape[0], 1, s.shape[1]).astype(t),
                                             f"/kv_cache/{name}/scale"))
    lim = [numpy_helper.from_array(np.array(v, np_t[inner[new[0]]]), f"/kv_cache/{k}") for k, v in
           (("qmin", -QMAX), ("qmax", QMAX))]
    for name in past:
        sc, f, c = f"/kv_cache/{pairs[name]}/scale", f"{name}/as_compute", f"{name}/as_float"
        _rename_inputs(model, name, f)
        first += [helper.make_node("Cast", [name], [c], name=f"/kv_cache/{name}/Cast", to=inner[name]),
                  helper.make_node("Mul", [c, sc], [f], name=f"/kv_cache/{name}/Dequant")]
    for name in new:
        sc, f, p = f"/kv_cache/{name}/scale", f"{name}/computed", f"/kv_cache/{name}"
        for n in model.graph.node:
            for seq in (n.input, n.output):
                for i, x in enumerate(seq):
                    if x == name:
                        seq[i] = f
        last += [helper.make_node("Div", [f, sc], [p + "/scaled"], name=p + "/Div"),
                 helper.make_node("Round", [p + "/scaled"], [p + "/rounded"], name=p + "/Round"),
                 helper.make_node("Clip", [p + "/rounded", "/kv_cache/qmin", "/kv_cache/qmax"], [p + "/clipped"],
                                  name=p + "/Clip"),
                 helper.make_node("Cast", [p + "/clipped"], [name], name=p + "/Cast", to=INT8)]
    nodes = _before_first_use_chain(first, list(model.graph.node)) + last
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(inits + lim)
    for vi in (*model.graph.input, *model.graph.output):
        if vi.name in past or vi.name in new:
            vi.type.tensor_type.elem_type = INT8
    return model


def _rename_inputs(model, old: str, new: str) -> None:
    for n in model.graph.node:
        for i, x in enumerate(n.input):
            if x == old:
                n.input[i] = new


def _before_first_use_chain(pairs: list, nodes: list) -> list:
    """`pairs` = [Cast, Mul, Cast, Mul, ...]: each Cast + Mul placed right before the first reader of the Mul's
    output (as _before_first_use does for the fp16 casts)."""
    by_out = {pairs[i + 1].output[0]: pairs[i:i + 2] for i in range(0, len(pairs), 2)}
    out, placed = [], set()
    for n in nodes:
        for i in n.input:
            c = by_out.get(i)
            if c is not None and i not in placed:
                out += c
                placed.add(i)
        out.append(n)
    return [x for o, c in by_out.items() if o not in placed for x in c] + out


def _before_first_use(casts: list, nodes: list) -> list:
    """Each past-cache Cast right before the first node that reads its output (its layer's attention), not all at
    the graph's start: ONNX Runtime runs nodes in this order, and 48 fp32 copies of the cache live at once from the
    start cost as much memory as the fp32 cache the fp16 one replaces (Pro-1B int4 image: 1.71 GB peak RSS with the
    casts first, vs 1.63 GB for the fp32 cache)."""
    by_out = {c.output[0]: c for c in casts}
    out, placed = [], set()
    for n in nodes:
        for i in n.input:
            c = by_out.get(i)
            if c is not None and i not in placed:
                out.append(c)
                placed.add(i)
        out.append(n)
    return [c for o, c in by_out.items() if o not in placed] + out


def io_json(entry: C.GraphEntry, dtype: str) -> tuple[list[dict], list[dict]]:
    """The lm entry's inputs/outputs with the cache tensors at `dtype`."""
    past, new = cache_names(_layers(entry))
    names = set(past) | set(new)
    fix = lambda ts: [{**t, "dtype": dtype} if t["name"] in names else dict(t) for t in ts]  # noqa: E731
    return fix(entry.inputs), fix(entry.outputs)
