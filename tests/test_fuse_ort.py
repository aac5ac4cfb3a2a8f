"""quant/fuse_ort.py on the tiny preset's lm graph (`--target ort`): RotaryEmbedding and
SkipSimplifiedLayerNormalization run in ORT's optimized graph (and the exported patterns do not), shape values are
shared across layers, the outputs stay equal to the unfused graph to float rounding, quantize records the fusion and
the bundle runs through Pipeline."""
from __future__ import annotations

import os
from collections import Counter

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from graph_helpers import lm_feeds as _feeds, lm_graph as _lm  # noqa: E402

from janus_edge.quant.api import QuantOptions, quantize_bundle  # noqa: E402

LAYERS = 2  # tiny preset


def _q(src, out, **kw):
    return quantize_bundle(src, str(out), QuantOptions(force=True, progress=False, report=False, mode="int4",
                                                       method="clip", graphs="lm", **kw))


@pytest.fixture(scope="module")
def bundles(tiny_bundle, tmp_path_factory):
    d = tmp_path_factory.mktemp("fuse")
    return (_q(tiny_bundle, d / "any", kv_dtype="float16"),
            _q(tiny_bundle, d / "ort", target="ort", kv_dtype="float16"))





def _optimized_ops(path, tmp_path) -> Counter:
    """Op counts of the graph ONNX Runtime actually runs (the runtime's session options)."""
    from janus_edge.runtime.ort_backend import OrtBackend

    so = OrtBackend(threads=1).options()
    so.log_severity_level = 3
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    m = onnx.load(str(tmp_path / "optimized.onnx"), load_external_data=False)
    return Counter(n.op_type for n in m.graph.node)





def test_optimized_graph_runs_the_fused_kernels(bundles, tmp_path):
    plain, fused = bundles
    a, b = _optimized_ops(_lm(plain)[0], tmp_path), _optimized_ops(_lm(fused)[0], tmp_path)
    assert b["RotaryEmbedding"] == 2 * LAYERS and a["RotaryEmbedding"] == 0  # q and k of every layer
    assert b["Neg"] == 0 and a["Neg"] == 2 * LAYERS  # rotate_half is gone
    # residual Add + RMSNorm: post-attention of every layer, input norm of layers 1.., the final norm
    assert b["SkipSimplifiedLayerNormalization"] == 2 * LAYERS
    assert b["SimplifiedLayerNormalization"] == 1  # the first layer's input norm (no residual yet)
    assert b["MatMulNBits"] == a["MatMulNBits"] == 7 * LAYERS
    assert sum(b.values()) < 0.9 * sum(a.values())  # 140 -> 120 kernels for 2 layers


def test_fused_outputs_match_the_unfused_graph(bundles):
    plain, fused = bundles
    (pa, e), (pb, _) = _lm(plain), _lm(fused)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    a = ort.InferenceSession(pa, so, providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(pb, so, providers=["CPUExecutionProvider"])
    names = [o.name for o in a.get_outputs()]
    for rows, seq, past in ((2, 1, 64), (8, 1, 40), (2, 5, 16), (1, 7, 7), (4, 1, 1), (2, 3, 0)):
        f = _feeds(e, rows, seq, past)
        for n, x, y in zip(names, a.run(None, f), b.run(None, f)):
            x, y = x.astype(np.float32), y.astype(np.float32)
            assert x.shape == y.shape, n
            tol = 2e-3 * np.abs(x).max() if x.dtype == np.float32 and n.startswith("new_") else 1e-4 * np.abs(x).max()
            assert np.abs(x - y).max() <= max(tol, 1e-5), (n, rows, seq, past, np.abs(x - y).max())


def test_manifest_records_the_fusion_and_pipeline_runs(bundles):
    from janus_edge.runtime.pipeline import Pipeline

    plain, fused = bundles
    _, e = _lm(fused)
    r = e["quantization"]["fused_ort"]
    assert e["target"] == "ort" and r["rotary"] == 2 * LAYERS and r["skip_norm"] == 2 * LAYERS
    assert r["nodes_after"] < r["nodes_before"]
    assert "fused_ort" not in _lm(plain)[1]["quantization"] and _lm(plain)[1]["target"] == "any"
    a, b = (np.asarray(Pipeline.from_bundle(x, threads=1).generate_image("a cat", temperature=0.0, seed=0,
                                                                         decode=False).tokens) for x in bundles)
    assert a.shape == b.shape and (a == b).mean() >= 0.9  # greedy image tokens (float rounding may flip a few)


def test_shared_shapes_is_exact(tiny_bundle):
    """The shared-shape pass alone changes no output bit (it only re-points equal int64 shape values)."""
    from janus_edge.quant.fold_shapes import fold_shapes
    from janus_edge.quant.fuse_ort import fuse_lm

    path, e = _lm(tiny_bundle)
    m = onnx.load(path)
    fold_shapes(m)
    ref = m.SerializeToString()
    r = fuse_lm(m, passes=("shared_shapes",))
    assert r["nodes_after"] < r["nodes_before"]
    so = ort.SessionOptions()
    so.log_severity_level = 3
    a = ort.InferenceSession(ref, so, providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    for rows, seq, past in ((2, 1, 64), (2, 5, 16), (4, 1, 1)):
        f = _feeds(e, rows, seq, past)
        for x, y in zip(a.run(None, f), b.run(None, f)):
            assert np.array_equal(x, y)


def test_int8_target_ort_keeps_the_integer_matmuls(tiny_bundle, tmp_path):
    """int8 (QDQ) `--target ort`: the same fusions, and ORT still runs every weight MatMul as an integer kernel."""
    small = {"calib": {"n_prompts": 2, "image_steps": 4, "n_chats": 1, "chat_tokens": 2, "text_file": None}}
    out = quantize_bundle(tiny_bundle, str(tmp_path / "q8"), QuantOptions(
        force=True, progress=False, report=False, mode="int8", graphs="lm", target="ort", extra=small))
    path, e = _lm(out)
    ops = _optimized_ops(path, tmp_path)
    assert e["target"] == "ort" and e["quantization"]["fused_ort"]["rotary"] == 2 * LAYERS
    assert ops["RotaryEmbedding"] == 2 * LAYERS and ops["SkipSimplifiedLayerNormalization"] == 2 * LAYERS
    integer = ops["MatMulIntegerToFloat"] + ops["MatMulNBits"]
    assert integer == 7 * LAYERS and ops["DequantizeLinear"] == 0, ops


def test_shared_shapes_keeps_distinct_dims():
    """Only values equal by named dims are shared: Shape(x)[1] (seq) twice -> once, Shape(y)[1] (past) kept."""
    from onnx import TensorProto, helper, numpy_helper

    from janus_edge.quant.fuse_ort import share_shapes

    one = numpy_helper.from_array(np.array(1, np.int64), "one")
    ax = numpy_helper.from_array(np.array([0], np.int64), "ax")
    nodes = []
    for src in ("x", "y", "x2"):
        nodes += [helper.make_node("Shape", [src], [f"{src}_s"]),
                  helper.make_node("Gather", [f"{src}_s", "one"], [f"{src}_g"], axis=0),
                  helper.make_node("Unsqueeze", [f"{src}_g", "ax"], [f"{src}_u"])]
    nodes.append(helper.make_node("Concat", ["x_u", "y_u", "x2_u"], ["out"], axis=0))
    ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["rows", d]) for n, d in
           (("x", "seq"), ("y", "past"), ("x2", "seq"))]
    g = helper.make_graph(nodes, "g", ins, [helper.make_tensor_value_info("out", TensorProto.INT64, [3])], [one, ax])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    assert share_shapes(m) == 3  # x2's Shape, Gather, Unsqueeze read x's
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {"x": np.zeros((2, 3), np.float32), "y": np.zeros((2, 5), np.float32), "x2": np.zeros((2, 3), np.float32)}
    assert s.run(None, feeds)[0].tolist() == [3, 5, 3]
