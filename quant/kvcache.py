"""KV-cache precision of the `lm` graph: an fp16 cache for an fp32 graph.

The graph's `past_key.i` / `past_value.i` inputs and `new_key.i` / `new_value.i` outputs become float16; a Cast to
float32 follows each past input and a Cast to float16 precedes each new output, so the arithmetic inside stays as
it was (attention scores, softmax and the weighted sum in fp32) and only the stored cache is rounded. The runtime
allocates the cache at the dtype the manifest's `lm` I/O records (contract `graph_specs(cache_dtype=...)`), and the
manifest's `kv_cache_dtype` says it. Half the bytes per cached position: the Pro-1B t2i cache at its final length is
471 MB in fp32, 236 MB in fp16 per image.
"""
from __future__ import annotations

from janus_edge import contract as C

ONNX_TYPES = {"float32": 1, "float16": 10}  # TensorProto.FLOAT, FLOAT16


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
