"""An fp32 ONNX graph turned into the fp16 graph that torch's fp16 trace of the same module gives.

Why: the VQ graphs are convolutions over 384x384 images, and torch's fp16 `conv2d` on the CPU takes minutes per
layer (one 128-channel layer of Pro-7B's VQ decoder: > 114 s, 6 s in fp32), so their fp16 trace took hours. Tracing
them in fp32 and converting the graph gives the same graph in seconds: tests/test_export_stream.py checks, on the
tiny preset, that the converted graph has the fp16 trace's nodes, the same initializer and constant data (every
float rounded once to fp16, as the fp16 trace rounds the weights) and outputs within fp16 rounding of it.

The rule is the fp16 trace's: every float32 tensor of the graph (inputs, outputs, initializers, Constant /
ConstantOfShape values) becomes float16, except those whose only uses are inputs ONNX defines as float32 whatever
the data type (Resize's `scales`). A Cast to float32 inside the graph is an upcast the model asked for (softmax in
fp32, say) that this rule would silently drop: such graphs are refused, and keep their fp16 trace.
"""
from __future__ import annotations

import numpy as np

FP32_ONLY_INPUTS = {("Resize", 2)}  # (op type, input index) that stays float32 in an fp16 graph


class NotConvertible(ValueError):
    pass


def _fp16_tensor(t) -> None:
    """A float32 TensorProto (inline data) rewritten in place as float16."""
    from onnx import TensorProto, numpy_helper

    arr = numpy_helper.to_array(t).astype(np.float16)
    t.ClearField("float_data")
    t.ClearField("raw_data")
    t.data_type = TensorProto.FLOAT16
    t.raw_data = arr.tobytes()


def convert_to_fp16(model) -> None:
    """Rewrite the in-memory ModelProto `model` (initializers loaded, no subgraphs) as its fp16 graph, in place."""
    from onnx import TensorProto

    g = model.graph
    uses: dict[str, list] = {}
    for node in g.node:
        if any(a.type in (a.GRAPH, a.GRAPHS) for a in node.attribute):
            raise NotConvertible(f"node {node.name} ({node.op_type}) has a subgraph")
        if node.op_type == "Cast" and any(a.name == "to" and a.i == TensorProto.FLOAT for a in node.attribute):
            raise NotConvertible(f"node {node.name} casts to float32 on purpose")
        for k, i in enumerate(node.input):
            uses.setdefault(i, []).append((node.op_type, k))

    def keep(name: str) -> bool:
        return bool(uses.get(name)) and all(u in FP32_ONLY_INPUTS for u in uses[name])

    for t in g.initializer:
        if t.data_type == TensorProto.FLOAT and not keep(t.name):
            if t.data_location == TensorProto.EXTERNAL:
                raise NotConvertible(f"initializer {t.name} is in external data (load it first)")
            _fp16_tensor(t)
    for node in g.node:
        if node.op_type not in ("Constant", "ConstantOfShape"):
            continue
        for a in node.attribute:
            if a.name == "value" and a.t.data_type == TensorProto.FLOAT and not keep(node.output[0]):
                _fp16_tensor(a.t)
            elif a.name in ("value_float", "value_floats"):
                raise NotConvertible(f"node {node.name} has a {a.name} attribute")
    for v in (*g.input, *g.output, *g.value_info):
        tt = v.type.tensor_type
        if tt.elem_type == TensorProto.FLOAT and not keep(v.name):
            tt.elem_type = TensorProto.FLOAT16


def convert_file(src: str, out: str) -> None:
    """`src` (an fp32 graph of inline weights) -> `out`, its fp16 graph; checked by ONNX's strict type inference."""
    import onnx

    model = onnx.load(src)
    convert_to_fp16(model)
    onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)  # raises on a type mismatch
    onnx.save(model, out)


__all__ = ["NotConvertible", "convert_to_fp16", "convert_file"]
