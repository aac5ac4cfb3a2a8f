"""The graph rewrites every quantization mode shares (int8, int4, fp8), in one module they all import: the Gemm ->
MatMul (+ float bias Add) rewrite, the opset-21 conversion, and the small node/initializer edits they are made of."""
from __future__ import annotations

import numpy as np

from . import graphio

OPSET = 21  # the default-domain opset of int4 / fp8 / fp16-int8 graphs (block-wise and fp16-scale Q/DQ need it)


def attr(node, name: str, default=None):
    from onnx import helper

    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def replace_init(model, t, arr: np.ndarray) -> None:
    from onnx import numpy_helper

    new = graphio.put(numpy_helper.from_array(arr.astype(graphio.np_dtype(t.data_type)), t.name))
    model.graph.initializer.remove(t)
    model.graph.initializer.append(new)


def insert_before(model, node, new_nodes: list) -> None:
    idx = list(model.graph.node).index(node)
    for k, nn in enumerate(new_nodes):
        model.graph.node.insert(idx + k, nn)


def to_opset21(model):
    """Convert the default-domain opset to 21 (ReduceMean/ReduceSum axes become inputs, ...)."""
    from onnx import version_converter

    cur = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if cur is not None and cur >= OPSET:
        return model
    return version_converter.convert_version(model, OPSET)


def gemms_to_matmul(model) -> int:
    """Rewrite each weight Gemm (constant 2-D B used once, transA 0, constant or no bias C) into MatMul(A, B') [+ Add
    (C)] with B' = alpha * (B^T if transB else B) as a [K, N] initializer and C' = beta * C, before the Q/DQ insertion.
    The weight then takes the MatMul path (per-channel axis 1, ORT's MatMulIntegerToFloat, TensorRT-parseable) and the
    bias stays float in the Add: one graph form for TensorRT and ORT (an INT32 bias DequantizeLinear, ORT's QGemm
    form, is not TensorRT-parseable). The MatMul keeps the Gemm's node name (keep_float names, sensitivity tables);
    its output keeps the Gemm's output name when there is no bias, else the Add's does. B' is held inline until the
    quantized copy replaces it (or save() streams it): the source weight is read once, nothing dead is written.
    Returns the number of Gemms rewritten."""
    from onnx import helper, numpy_helper

    inits = graphio.initializers(model)
    uses: dict[str, int] = {}
    for n in model.graph.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    done = 0
    for n in list(model.graph.node):
        if n.op_type != "Gemm" or attr(n, "transA", 0) != 0 or n.input[1] not in inits:
            continue
        bt = inits[n.input[1]]
        c = n.input[2] if len(n.input) > 2 and n.input[2] else None
        alpha, beta = float(attr(n, "alpha", 1.0)), float(attr(n, "beta", 1.0))
        if len(bt.dims) != 2 or uses[bt.name] != 1 or (c is not None and beta != 1.0 and
                                                       (c not in inits or uses[c] != 1)):
            continue  # shared / non-constant operands: left a Gemm (weight_groups then leaves it float or as is)
        w = graphio.array(bt)
        w = w.T if attr(n, "transB", 0) else w
        if alpha != 1.0:
            w = w.astype(np.float32) * alpha
        model.graph.initializer.remove(bt)
        model.graph.initializer.append(numpy_helper.from_array(
            np.ascontiguousarray(w.astype(graphio.np_dtype(bt.data_type))), bt.name))
        if c is not None and beta != 1.0:
            replace_init(model, inits[c], graphio.array(inits[c]).astype(np.float32) * beta)
        y = n.output[0]
        mm_out = y if c is None else y + "_matmul"
        nodes = [helper.make_node("MatMul", [n.input[0], bt.name], [mm_out], name=n.name)]
        if c is not None:
            nodes.append(helper.make_node("Add", [mm_out, c], [y], name=n.name + "_bias"))
        insert_before(model, n, nodes)
        model.graph.node.remove(n)
        done += 1
    return done
