"""Graphs exported without their weights in memory.

The graph module is traced with its weights as extra graph inputs, fed zero placeholders of the right shape and
dtype that all share one buffer (the size of the largest weight), so the trace costs almost no weight memory.
The weight inputs then become initializers, read from the checkpoint one tensor at a time (cast to the bundle
dtype) and written
straight into NAME.onnx.data (or into the proto for small graphs). A weight whose only use is a Transpose (how the
exporter writes nn.Linear) is stored transposed and the Transpose dropped: the same graph, initializers and outputs
as the in-memory export, whose constant folding does the same (tests/test_export_stream.py checks it).
Used for the LM-side graphs (lm, lm_head, gen_head, gen_embed: linear layers, norms, embeddings), which hold nearly
all the weights; vision and the VQ graphs (under 1.3 GB in fp32 for Pro-7B) are materialised and traced as usual.

`gather_external`: torch writes one file per tensor for graphs over 2 GB; they are concatenated into NAME.onnx.data
by file copies, never loaded.
"""
from __future__ import annotations

import os
import warnings

import numpy as np
import torch
from torch import nn

STREAMED = ("lm", "lm_head", "gen_head", "gen_embed")
ALIGN = 4096  # page-aligned tensors in the data file, so a reader may mmap them
INLINE_BELOW = 1024  # bytes: smaller tensors stay in the proto, as onnx.save_model(size_threshold=1024) does


def _weight_slots(module: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """(name in the graph module, owning submodule, attribute) of each parameter, in named_parameters order."""
    out = []
    for name, _ in module.named_parameters():
        owner_name, _, attr = name.rpartition(".")
        out.append((name, module.get_submodule(owner_name), attr))
    return out


def trace_with_weight_inputs(module: nn.Module, args: tuple, path: str, export_kwargs: dict) -> list[str]:
    """torch.onnx.export of `module` with each parameter replaced by a graph input (named as the parameter);
    returns those names. The module's parameters (meta tensors are fine) are put back afterwards."""
    slots = _weight_slots(module)
    saved = [(owner, attr, owner._parameters[attr]) for _, owner, attr in slots]
    holders = _placeholders([p for _, _, p in saved])
    cls_forward = type(module).forward
    n = len(slots)

    def forward(*a):
        for (owner, attr, _), w in zip(saved, a[len(a) - n:]):
            object.__setattr__(owner, attr, w)
        return cls_forward(module, *a[:len(a) - n])

    for owner, attr, _ in saved:
        del owner._parameters[attr]
    module.forward = forward
    try:
        names = [s[0] for s in slots]
        kw = dict(export_kwargs, input_names=[*export_kwargs["input_names"], *names])
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (*args, *holders), path, dynamo=False, **kw)
    finally:
        del module.forward
        for owner, attr, p in saved:
            owner.__dict__.pop(attr, None)
            owner._parameters[attr] = p
    return names


def _placeholders(params: list) -> list[torch.Tensor]:
    """Zero tensors of the params' shapes and dtypes, all views of one buffer per dtype (the size of the largest):
    distinct tensors for the tracer, contiguous for fast kernels (stride-0 views made fp16 matmuls 80x slower)."""
    size: dict = {}
    for p in params:
        size[p.dtype] = max(size.get(p.dtype, 0), p.numel())
    bufs = {dt: torch.zeros(n, dtype=dt) for dt, n in size.items()}
    return [bufs[p.dtype][:p.numel()].view(p.shape) for p in params]


def _np_dtype(elem_type: int):
    from onnx import helper

    return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))


def weights_to_initializers(path: str, out: str, keys: dict, source, external: bool, log=None) -> int:
    """Turn the weight inputs of the graph at `path` into initializers read from `source` (keys: input name ->
    checkpoint key), folding Transpose-only uses; write the graph to `out` (+ `out`.data when `external`).
    Returns the weight bytes written."""
    import onnx
    from onnx import TensorProto

    model = onnx.load(path)
    g = model.graph
    uses: dict[str, list] = {}
    for node in g.node:
        for i in node.input:
            uses.setdefault(i, []).append(node)
    data_name = os.path.basename(out) + ".data"
    fh = open(os.path.join(os.path.dirname(out), data_name), "wb") if external else None
    drop, total = set(), 0
    try:
        for inp in [i for i in g.input if i.name in keys]:
            elem = inp.type.tensor_type.elem_type
            t = source.get(keys[inp.name], torch.float32 if elem == TensorProto.FLOAT else torch.float16)
            consumers, name = uses.get(inp.name, []), inp.name
            if consumers and all(_is_2d_transpose(c) for c in consumers) and t.dim() == 2:
                t, name = t.t().contiguous(), f"{inp.name}.T"
                for c in consumers:
                    drop.add(id(c))
                    _rename_uses(g, c.output[0], name)
            arr = t.numpy()
            if arr.dtype != _np_dtype(elem):
                raise RuntimeError(f"{keys[inp.name]}: {arr.dtype} for a {_np_dtype(elem)} graph input")
            g.initializer.append(_tensor(name, arr, fh, data_name))
            total += arr.nbytes
            del t, arr
    finally:
        if fh:
            fh.close()
    kept = [n for n in g.node if id(n) not in drop]
    del g.node[:]
    g.node.extend(kept)
    inputs = [i for i in g.input if i.name not in keys]
    del g.input[:]
    g.input.extend(inputs)
    onnx.save(model, out)
    return total


def _is_2d_transpose(node) -> bool:
    perm = [list(a.ints) for a in node.attribute if a.name == "perm"]
    return node.op_type == "Transpose" and perm in ([[1, 0]], [])


def _rename_uses(g, old: str, new: str) -> None:
    for node in g.node:
        for k, i in enumerate(node.input):
            if i == old:
                node.input[k] = new
    for o in g.output:
        if o.name == old:
            raise RuntimeError(f"a transposed weight is a graph output ({old})")


def _tensor(name: str, arr: np.ndarray, fh, data_name: str):
    from onnx import TensorProto, helper

    t = TensorProto(name=name, dims=list(arr.shape), data_type=helper.np_dtype_to_tensor_dtype(arr.dtype))
    if fh is None or arr.nbytes < INLINE_BELOW:
        t.raw_data = np.ascontiguousarray(arr).tobytes()
        return t
    offset = _aligned(fh)
    fh.write(memoryview(np.ascontiguousarray(arr)).cast("B"))
    _set_external(t, data_name, offset, arr.nbytes)
    return t


def _aligned(fh) -> int:
    pos = fh.tell()
    pad = -pos % ALIGN
    if pad:
        fh.write(b"\0" * pad)
    return pos + pad


def _set_external(t, location: str, offset: int, length: int) -> None:
    from onnx import TensorProto

    t.data_location = TensorProto.EXTERNAL
    del t.external_data[:]
    for k, v in (("location", location), ("offset", str(offset)), ("length", str(length))):
        e = t.external_data.add()
        e.key, e.value = k, v


def gather_external(src: str, out: str) -> int:
    """Copy the graph at `src` to `out` with every tensor of INLINE_BELOW bytes or more in one `out`.data: tensors
    torch wrote to per-tensor files beside `src` (graphs over 2 GB) by file copies, never loaded; tensors inside
    the proto moved out. Returns the initializers' bytes."""
    import onnx

    model = onnx.load(src, load_external_data=False)
    data_name = os.path.basename(out) + ".data"
    base, total = os.path.dirname(src), 0
    with open(os.path.join(os.path.dirname(out), data_name), "wb") as fh:
        for t in model.graph.initializer:
            total += int(np.prod(t.dims)) * _np_dtype(t.data_type).itemsize
            if t.data_location == onnx.TensorProto.EXTERNAL:
                info = {e.key: e.value for e in t.external_data}
                offset = _aligned(fh)
                with open(os.path.join(base, info["location"]), "rb") as f:
                    f.seek(int(info.get("offset", 0)))
                    copied = _copy(f, fh, int(info["length"]) if "length" in info else None)
                _set_external(t, data_name, offset, copied)
            elif t.HasField("raw_data") and len(t.raw_data) >= INLINE_BELOW:
                offset = _aligned(fh)
                fh.write(t.raw_data)
                _set_external(t, data_name, offset, len(t.raw_data))
                t.ClearField("raw_data")
    onnx.save(model, out)
    return total


def _copy(src, dst, length: int | None, chunk: int = 64 << 20) -> int:
    done = 0
    while length is None or done < length:
        buf = src.read(chunk if length is None else min(chunk, length - done))
        if not buf:
            break
        dst.write(buf)
        done += len(buf)
    return done


__all__ = ["STREAMED", "trace_with_weight_inputs", "weights_to_initializers", "gather_external"]
