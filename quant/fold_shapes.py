"""Fold the shape arithmetic the torch exporter writes into every decoder layer of the `lm` graph.

`view(rows, seq, -1, D)` and rotary's `x[..., : x.shape[-1] // 2]` export as Shape -> Gather -> (Div, Cast,
Unsqueeze) -> Concat -> Reshape / Slice chains, about 25 nodes per layer that ONNX Runtime cannot constant-fold
because the graph's `rows` / `seq` / `past` dims are dynamic (Pro-1B: ~600 such nodes per decode step, each a kernel
launch of a few microseconds; the profile's Shape / Gather / Unsqueeze / Concat rows). This pass evaluates those
chains symbolically from the graph's own shape information (onnx shape inference, dims named by the graph inputs):

- a value every element of which is known (a static dim such as head_dim, or arithmetic on them) becomes a constant;
- a Reshape target made of known dims and the data's own dynamic dims at the same position becomes a constant
  with 0 ("copy this dim", allowzero = 0) at those positions and at most one -1.

The graph's I/O, its arithmetic on tensors and its outputs do not change (tests compare the outputs); only int64 shape
values computed at run time become initializers. Nodes left without consumers are removed.
"""
from __future__ import annotations

import numpy as np

INT_TYPES = {6: np.int32, 7: np.int64}  # TensorProto.INT32, INT64
FLOAT_TYPES = {1: np.float32, 11: np.float64}


class _Sym:
    """A dynamic dim: equal to another _Sym only when both came from the same named dim (or the same unnamed dim of
    the same tensor)."""

    def __init__(self, name: str):
        self.name = name

    def __eq__(self, other) -> bool:
        return isinstance(other, _Sym) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)


def _dims(vi) -> list | None:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    out = []
    for i, d in enumerate(t.shape.dim):
        if d.HasField("dim_value"):
            out.append(int(d.dim_value))
        elif d.dim_param:
            out.append(_Sym(d.dim_param))
        else:
            out.append(_Sym(f"?{vi.name}:{i}"))
    return out


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            from onnx import helper

            return helper.get_attribute_value(a)
    return default


def _concrete(v) -> bool:
    return v is not None and all(not isinstance(x, _Sym) for x in np.ravel(np.asarray(v, dtype=object)))


class _Eval:
    def __init__(self, model):
        from onnx import numpy_helper, shape_inference

        inferred = shape_inference.infer_shapes(model, strict_mode=False)
        g = inferred.graph
        self.shapes = {vi.name: _dims(vi) for vi in (*g.value_info, *g.input, *g.output)}
        self.val: dict[str, np.ndarray] = {}  # symbolic values (object arrays) of small int tensors
        self.elem: dict[str, int] = {vi.name: vi.type.tensor_type.elem_type for vi in (*g.value_info, *g.input,
                                                                                         *g.output)}
        for t in model.graph.initializer:
            if t.data_type in INT_TYPES and np.prod(t.dims, dtype=np.int64) <= 64 and t.data_location != 1:
                self.val[t.name] = numpy_helper.to_array(t).astype(object)
            self.elem[t.name] = t.data_type

    def get(self, name):
        return self.val.get(name)

    def node(self, n) -> np.ndarray | None:  # noqa: C901 - one small case per op
        from onnx import numpy_helper

        ins = [self.get(i) if i else None for i in n.input]
        op = n.op_type
        if op == "Constant":
            t = _attr(n, "value")
            if t is not None and t.data_type in (*INT_TYPES, *FLOAT_TYPES) and np.prod(t.dims, dtype=np.int64) <= 64:
                return numpy_helper.to_array(t).astype(object)
            return None
        if op == "Shape":
            dims = self.shapes.get(n.input[0])
            if dims is None:
                return None
            start, end = _attr(n, "start", 0), _attr(n, "end", None)
            return np.array(dims[start:end] if end is not None else dims[start:], dtype=object)
        if op in ("Gather",) and ins[0] is not None and _concrete(ins[1]) and _attr(n, "axis", 0) == 0:
            return np.asarray(ins[0], dtype=object)[np.asarray(ins[1], dtype=np.int64)]
        if op == "Unsqueeze" and ins[0] is not None and np.ndim(ins[0]) == 0:
            return np.array([ins[0].item() if hasattr(ins[0], "item") else ins[0]], dtype=object)
        if op == "Squeeze" and ins[0] is not None and np.size(ins[0]) == 1:
            return np.array(np.ravel(ins[0])[0], dtype=object)
        if op == "Concat" and all(x is not None for x in ins) and _attr(n, "axis") == 0:
            return np.concatenate([np.atleast_1d(x) for x in ins]).astype(object)
        if op == "Cast" and ins[0] is not None:
            to = _attr(n, "to")
            if not _concrete(ins[0]):
                return ins[0] if to in INT_TYPES else None
            if to in INT_TYPES:
                return np.asarray(ins[0], dtype=np.float64).astype(np.int64).astype(object)
            if to in FLOAT_TYPES:
                return np.asarray(ins[0], dtype=np.float64).astype(object)
            return None
        if op in ("Add", "Sub", "Mul", "Div") and len(ins) == 2 and _concrete(ins[0]) and _concrete(ins[1]):
            a, b = np.asarray(ins[0]), np.asarray(ins[1])
            floats = any(isinstance(x, float) for x in (*np.ravel(a), *np.ravel(b)))
            a, b = (a.astype(np.float64), b.astype(np.float64)) if floats else (a.astype(np.int64), b.astype(np.int64))
            if op == "Div" and not floats:
                return (np.trunc(a / b)).astype(np.int64).astype(object)
            return {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}[op](a, b).astype(object)
        return None


def _reshape_target(data_dims, target) -> np.ndarray | None:
    """A constant Reshape shape for a partly dynamic target: 0 where it repeats the data's dim at that position."""
    if data_dims is None:
        return None
    out, unknown = [], 0
    for i, x in enumerate(np.ravel(target)):
        if not isinstance(x, _Sym):
            out.append(int(x))
        elif i < len(data_dims) and data_dims[i] == x:
            out.append(0)
        else:
            out.append(-1)
            unknown += 1
    if unknown > 1 or (unknown == 1 and -1 in [int(x) for x in np.ravel(target) if not isinstance(x, _Sym)]):
        return None
    return np.array(out, np.int64)


def fold_shapes(model, max_passes: int = 4) -> dict:
    """Fold in place (until nothing changes: a folded Reshape gives shape inference its output's rank);
    returns counts {'constants': ..., 'reshapes': ..., 'removed': ..., 'passes': ...}."""
    total = {"constants": 0, "reshapes": 0, "removed": 0, "passes": 0}
    for _ in range(max_passes):
        r = _fold_once(model)
        total = {k: total[k] + r.get(k, 1) for k in total}
        if not (r["constants"] or r["reshapes"] or r["removed"]):
            break
    return total


def _fold_once(model) -> dict:
    from onnx import numpy_helper

    ev = _Eval(model)
    consts, reshapes = 0, 0
    new_inits = []
    for n in model.graph.node:
        v = ev.node(n)
        if v is not None and len(n.output) == 1:
            ev.val[n.output[0]] = v
        if n.op_type == "Reshape" and _attr(n, "allowzero", 0) == 0:
            tgt = ev.get(n.input[1])
            if tgt is not None and not _concrete(tgt):
                shape = _reshape_target(ev.shapes.get(n.input[0]), tgt)
                if shape is not None:
                    name = f"{n.name or n.output[0]}/folded_shape"
                    new_inits.append(numpy_helper.from_array(shape, name))
                    n.input[1] = name
                    reshapes += 1
    # every consumed value that is fully known and computed by a non-Constant node becomes an initializer
    producers = {o: n for n in model.graph.node for o in n.output}
    init_names = {t.name for t in model.graph.initializer}
    replaced: dict[str, str] = {}
    for n in model.graph.node:
        for i, name in enumerate(n.input):
            p = producers.get(name)
            if p is None or p.op_type == "Constant" or name in init_names:
                continue
            v = ev.get(name)
            if not _concrete(v):
                continue
            dtype = INT_TYPES.get(ev.elem.get(name)) or FLOAT_TYPES.get(ev.elem.get(name))
            if dtype is None:
                continue
            if name not in replaced:
                replaced[name] = f"{name}/folded"
                new_inits.append(numpy_helper.from_array(np.asarray(np.asarray(v, dtype=object).tolist(), dtype=dtype), replaced[name]))
                consts += 1
            n.input[i] = replaced[name]
    model.graph.initializer.extend(new_inits)
    removed = _remove_dead(model)
    return {"constants": consts, "reshapes": reshapes, "removed": removed}


def _remove_dead(model) -> int:
    keep_out = {o.name for o in model.graph.output}
    removed = 0
    while True:
        used = {i for n in model.graph.node for i in n.input} | keep_out
        dead = [n for n in model.graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            model.graph.node.remove(n)
        removed += len(dead)
    used = {i for n in model.graph.node for i in n.input}
    for t in [t for t in model.graph.initializer if t.name not in used and t.name.endswith("/folded_shape")]:
        model.graph.initializer.remove(t)
    return removed
