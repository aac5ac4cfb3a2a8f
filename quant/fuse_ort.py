"""ONNX-Runtime-only rewrites of the `lm` graph (`--target ort`): fewer, larger kernels per decode step.

A Pro-1B int4 decode step runs ~1,400 ORT kernels; besides the 168 MatMulNBits, each costs a few to ~20 us of
dispatch (profile: ~25 ms of an 84 ms step outside the weight matmuls). This pass removes the per-layer glue that ORT's
own optimizer leaves in place:

- `rotary`: the exported rotate_half pattern on q and k (Slice, Slice, Neg, Concat, Mul, Mul, Add; ORT turns the
  slices into a Split, 6 kernels each) becomes one `com.microsoft.RotaryEmbedding` (interleaved 0, BNSH input).
  Its cos/sin "caches" are the step's own cos/sin rows (computed once per step by the exported graph, [rows*seq,
  head/2]) with arange(rows*seq) as position ids: the same values the exported graph multiplies by, no table of
  every position (nothing added to the weights, no position limit); only the kernel's float rounding differs.
- `skip_norm`: residual Add + the exported RMSNorm (Pow, ReduceMean, Add, Sqrt, Div, Mul, Mul; ORT fuses it into
  SimplifiedLayerNormalization but leaves the Add) becomes one `com.microsoft.SkipSimplifiedLayerNormalization`
  whose 4th output is the residual sum the next layer reads.
- `shared_shapes` (not run by default): shape values that fold_shapes cannot make constant (they depend on the
  dynamic rows / seq / past dims) but that are the same in every layer (e.g. `past` from Shape(past_key.i), [rows, seq, -1] for the o_proj
  input) are computed once: later layers read the first layer's value (exact: the dims are the graph inputs' named
  dims, which ORT's I/O binding makes equal across layers).

Measured (Pro-1B int4 `--target ort --kv-dtype float16`, lm graph alone, rows 2, past 300, 2 threads, A and B
interleaved call by call): rotary + skip_norm 0.92-0.97x the unfused step; adding shared_shapes, or folding the
o_proj reshapes through ORT's symbolic shape inference, made it 1.09-1.20x (slower, though the optimized graph has
~520 fewer kernels than the unfused one: not explained yet; ORT's execution order is the first suspect).

Tried and dropped: one QuantizeLinear shared by q/k/v in the int8 QDQ form (same input and scale) stops ORT's QDQ
fusion (240 DequantizeLinear + fp32 MatMul in the optimized Pro-1B graph instead of MatMulIntegerToFloat); merging
q/k/v (gate/up) MatMulNBits along N measured no faster at 2 rows (microbenchmark, this CPU).

All rewrites keep the graph's I/O and run only for `--target ort` (the contrib ops are ONNX-Runtime-only; the manifest
entry is marked `target: "ort"`). `fuse_lm(model)` returns the counts recorded in the manifest's
`quantization["fused_ort"]`.
"""
from __future__ import annotations

import numpy as np

MS = "com.microsoft"


class _G:
    """Producer / consumer / constant lookups over a graph (rebuilt after each rewrite pass)."""

    def __init__(self, model):
        from onnx import numpy_helper

        g = model.graph
        self.model = model
        self.prod = {o: n for n in g.node for o in n.output if o}
        self.cons: dict[str, list] = {}
        for n in g.node:
            for i in n.input:
                self.cons.setdefault(i, []).append(n)
        self.inits = {t.name: t for t in g.initializer}
        self._np = numpy_helper

    def const(self, name: str) -> np.ndarray | None:
        """The value of an initializer or a Constant node's output (small tensors only), else None."""
        if name in self.inits:
            t = self.inits[name]
            if t.data_location == 1 or np.prod(t.dims, dtype=np.int64) > 4096:
                return None
            return self._np.to_array(t)
        p = self.prod.get(name)
        if p is not None and p.op_type == "Constant":
            for a in p.attribute:
                if a.name == "value":
                    return self._np.to_array(a.t)
        return None

    def op(self, name: str, op_type: str):
        p = self.prod.get(name)
        return p if p is not None and p.op_type == op_type else None


def _attr(node, name, default=None):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _scalar(v) -> float | None:
    return float(np.ravel(v)[0]) if v is not None and np.size(v) == 1 else None


# ---- rotary ------------------------------------------------------------------------------------------------------
def _split_mul(g: _G, mul, is_rot) -> tuple[str, str] | None:
    """(tensor input, other input) of a Mul whose one side satisfies is_rot(name)."""
    if mul is None or mul.op_type != "Mul":
        return None
    a, b = mul.input
    if is_rot(a):
        return a, b
    if is_rot(b):
        return b, a
    return None


def _half_slice(g: _G, name: str, x: str, first: bool, head: int) -> bool:
    """name = Slice(x)[..., :head/2] (first) or [..., head/2:] along the last axis."""
    s = g.op(name, "Slice")
    if s is None or s.input[0] != x or len(s.input) < 4:
        return False
    st, en, ax = (g.const(i) for i in s.input[1:4])
    steps = g.const(s.input[4]) if len(s.input) > 4 and s.input[4] else 1
    if st is None or en is None or ax is None or _scalar(steps) != 1:
        return False
    st, en, ax = _scalar(st), _scalar(en), _scalar(ax)
    if ax not in (-1, 3):
        return False
    return (st == 0 and en == head // 2) if first else (st == head // 2 and en >= head)


def _match_rotary(g: _G, add, head: int):
    """Add(Mul(x, cos), Mul(Concat(Neg(x[..., h/2:]), x[..., :h/2]), sin)) -> (x, cos, sin) or None."""
    if add.op_type != "Add" or len(add.input) != 2:
        return None
    for ia, ib in ((0, 1), (1, 0)):
        m_rot = g.op(add.input[ib], "Mul")
        pair = _split_mul(g, m_rot, lambda n: g.op(n, "Concat") is not None)
        if pair is None:
            continue
        cat, sin = g.prod[pair[0]], pair[1]
        if _attr(cat, "axis") not in (-1, 3) or len(cat.input) != 2:
            continue
        neg = g.op(cat.input[0], "Neg")
        if neg is None:
            continue
        x = g.prod.get(neg.input[0]).input[0] if neg.input[0] in g.prod else None
        m_cos = g.op(add.input[ia], "Mul")
        pc = _split_mul(g, m_cos, lambda n: n == x)
        if x is None or pc is None:
            continue
        if _half_slice(g, neg.input[0], x, False, head) and _half_slice(g, cat.input[1], x, True, head):
            return x, pc[1], sin
    return None


def _step_caches(model, cos: str, sin: str, head: int, tag: str) -> tuple[list, str, str, str]:
    """Nodes turning the step's own cos/sin ([rows, 1, seq, head], computed once per step by the exported graph) into
    RotaryEmbedding caches [rows*seq, head/2] indexed by arange(rows*seq) as position ids: the exact values the
    exported arithmetic multiplies by, no table of all positions. -> (nodes, cos_cache, sin_cache, position ids)."""
    from onnx import helper, numpy_helper

    p = f"rotary{tag}/"
    consts = {"half_lo": [0], "half_hi": [head // 2], "last": [-1], "flat": [-1, head // 2], "zero": 0, "one": 1}
    model.graph.initializer.extend(numpy_helper.from_array(np.array(v, np.int64), p + k) for k, v in consts.items())
    nodes = []
    outs = []
    for name, src in (("cos", cos), ("sin", sin)):
        nodes.append(helper.make_node("Slice", [src, p + "half_lo", p + "half_hi", p + "last"], [p + name + "_half"],
                                      name=p + name + "_half"))
        nodes.append(helper.make_node("Reshape", [p + name + "_half", p + "flat"], [p + name + "_cache"],
                                      name=p + name + "_cache"))
        outs.append(p + name + "_cache")
    nodes += [helper.make_node("Size", ["position_ids"], [p + "n"], name=p + "n"),
              helper.make_node("Range", [p + "zero", p + "n", p + "one"], [p + "range"], name=p + "range"),
              helper.make_node("Shape", ["position_ids"], [p + "pid_shape"], name=p + "pid_shape"),
              helper.make_node("Reshape", [p + "range", p + "pid_shape"], [p + "pid"], name=p + "pid")]
    return nodes, outs[0], outs[1], p + "pid"


def fuse_rotary(model, head: int) -> int:
    """rotate_half patterns -> com.microsoft.RotaryEmbedding (see the module doc); returns how many."""
    from onnx import helper

    g = _G(model)
    found = [(n, r) for n in model.graph.node if n.op_type == "Add" for r in [_match_rotary(g, n, head)] if r]
    caches: dict[tuple[str, str], tuple[str, str, str]] = {}
    for add, (x, cos, sin) in found:
        if (cos, sin) not in caches:
            nodes, cn, sn, pid = _step_caches(model, cos, sin, head, str(len(caches)))
            idx = list(model.graph.node).index(add)
            for k, n in enumerate(nodes):
                model.graph.node.insert(idx + k, n)
            caches[(cos, sin)] = (cn, sn, pid)
        cn, sn, pid = caches[(cos, sin)]
        rot = helper.make_node("RotaryEmbedding", [x, pid, cn, sn], list(add.output),
                               name=f"{add.name}/RotaryEmbedding", domain=MS, interleaved=0)
        _replace(model, add, rot)
    return len(found)


# ---- skip + RMSNorm ----------------------------------------------------------------------------------------------
def _match_rms(g: _G, mul1):
    """The exported RMSNorm ending in mul1 = Mul(w, Cast(Mul(xc, Div(1, Sqrt(Add(ReduceMean(Pow(xc, 2)), eps))))))
    with xc = Cast(x, float) or x -> (x, w, eps) or None (float32 graphs only)."""
    if mul1.op_type != "Mul":
        return None
    for iw, ic in ((0, 1), (1, 0)):
        w = mul1.input[iw]
        cast1 = g.op(mul1.input[ic], "Cast")
        if w not in g.inits or cast1 is None or _attr(cast1, "to") != 1:
            continue
        mul = g.op(cast1.input[0], "Mul")
        if mul is None:
            continue
        for jx, jd in ((0, 1), (1, 0)):
            div = g.op(mul.input[jd], "Div")
            if div is None or _scalar(g.const(div.input[0])) != 1.0:
                continue
            sq = g.op(div.input[1], "Sqrt")
            add = g.op(sq.input[0], "Add") if sq is not None else None
            if add is None:
                continue
            rm, eps = g.op(add.input[0], "ReduceMean"), _scalar(g.const(add.input[1]))
            pw = g.op(rm.input[0], "Pow") if rm is not None else None
            xc = mul.input[jx]
            if pw is None or eps is None or pw.input[0] != xc or _scalar(g.const(pw.input[1])) != 2.0:
                continue
            axes = g.const(rm.input[1]) if len(rm.input) > 1 else _attr(rm, "axes")
            if axes is None or list(np.ravel(axes)) != [-1] or _attr(rm, "keepdims", 1) != 1:
                continue
            c0 = g.op(xc, "Cast")
            x = c0.input[0] if c0 is not None and _attr(c0, "to") == 1 else xc
            return x, w, eps
    return None


def fuse_skip_norm(model) -> int:
    """Residual Add + RMSNorm -> com.microsoft.SkipSimplifiedLayerNormalization; returns how many."""
    from onnx import helper

    if any(i.name == "inputs_embeds" and i.type.tensor_type.elem_type != 1 for i in model.graph.input):
        return 0  # the pattern check assumes a float32 residual stream
    count = 0
    for mul1 in [n for n in model.graph.node if n.op_type == "Mul"]:
        g = _G(model)
        r = _match_rms(g, mul1)
        if r is None:
            continue
        x, w, eps = r
        add = g.op(x, "Add")
        if add is None or any(i in g.inits or g.const(i) is not None for i in add.input) or \
                any(o.name == x for o in model.graph.output):
            continue
        total = f"{x}/skip_sum"
        outs = [mul1.output[0], "", "", total]
        node = helper.make_node("SkipSimplifiedLayerNormalization", [add.input[0], add.input[1], w], outs,
                                name=f"{mul1.name}/SkipSimplifiedLayerNorm", domain=MS, epsilon=eps)
        model.graph.node.remove(mul1)
        for n in model.graph.node:  # every reader of the residual sum reads the fused node's 4th output
            for i, v in enumerate(n.input):
                if v == x:
                    n.input[i] = total
        _replace(model, add, node)
        count += 1
    return count


# ---- shape values shared across layers ------------------------------------------------------------------------------
def share_shapes(model) -> int:
    """Later layers read the first node's output where two shape values are equal by the graph inputs' named dims."""
    from .fold_shapes import _Eval, _Sym

    ev = _Eval(model)
    named = {d.dim_param for i in model.graph.input for d in i.type.tensor_type.shape.dim if d.dim_param}
    first: dict[tuple, str] = {}
    rename: dict[str, str] = {}
    for n in model.graph.node:
        for i, v in enumerate(n.input):
            if v in rename:
                n.input[i] = rename[v]
        val = ev.node(n)
        if val is None or len(n.output) != 1 or n.op_type == "Constant":
            continue
        ev.val[n.output[0]] = val
        flat = list(np.ravel(np.asarray(val, dtype=object)))
        if not any(isinstance(s, _Sym) for s in flat) or any(isinstance(s, _Sym) and s.name not in named
                                                             for s in flat):
            continue
        key = (np.shape(val),
               tuple(s.name if isinstance(s, _Sym) else int(s) for s in flat), _out_type(n))
        if key[-1] is None:
            continue
        if key in first:
            rename[n.output[0]] = first[key]
        else:
            first[key] = n.output[0]
    outs = {o.name for o in model.graph.output}
    return len([k for k in rename if k not in outs])


def _out_type(n):
    """int64 for the ops that make shape values from Shape (None: unknown, not shared)."""
    if n.op_type in ("Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Slice", "Add", "Sub", "Mul", "Div"):
        return 7
    if n.op_type == "Cast":
        return _attr(n, "to")
    return None


# ---- driver --------------------------------------------------------------------------------------------------------
def _replace(model, old, new) -> None:
    """new takes old's place in the node list (its inputs are ready there)."""
    nodes = model.graph.node
    idx = list(nodes).index(old)
    nodes.remove(old)
    nodes.insert(idx, new)


def _ms_opset(model) -> None:
    from onnx import helper

    if not any(o.domain == MS for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS, 1))


def _head_dim(model) -> int | None:
    for i in model.graph.input:
        if i.name.startswith("past_key."):
            d = i.type.tensor_type.shape.dim[-1]
            return int(d.dim_value) if d.HasField("dim_value") else None
    return None


DEFAULT_PASSES = ("rotary", "skip_norm")  # shared_shapes: exact but measured slower (module doc)


def fuse_lm(model, passes: tuple[str, ...] = DEFAULT_PASSES) -> dict:
    """Apply the rewrites in place; returns {pass: count, 'nodes_before': .., 'nodes_after': ..}."""
    from .fold_shapes import _remove_dead

    out = {"nodes_before": len(model.graph.node)}
    head = _head_dim(model)
    if "shared_shapes" in passes:
        out["shared_shapes"] = share_shapes(model)
        _remove_dead(model)
    if "rotary" in passes and head:
        out["rotary"] = fuse_rotary(model, head)
        _remove_dead(model)
    if "skip_norm" in passes:
        out["skip_norm"] = fuse_skip_norm(model)
        _remove_dead(model)
    if out.get("rotary") or out.get("skip_norm"):
        _ms_opset(model)
    out["nodes_after"] = len(model.graph.node)
    return out
