"""quant/fold_shapes.py on the tiny preset's lm graph: the export's per-layer shape arithmetic becomes constants, the
outputs stay bit-identical at every (rows, seq, past), and quantize applies it to lm."""
from __future__ import annotations

import os

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from graph_helpers import lm_feeds as _feeds, lm_graph as _lm  # noqa: E402








def _count(m, ops):
    return sum(n.op_type in ops for n in m.graph.node)


def test_fold_keeps_outputs_and_removes_shape_nodes(tiny_bundle, tmp_path):
    from janus_edge.quant.fold_shapes import fold_shapes

    path, e = _lm(tiny_bundle)
    m = onnx.load(path)
    before = _count(m, ("Shape", "Gather", "Unsqueeze", "Concat"))
    r = fold_shapes(m)
    assert r["reshapes"] >= 3 * 2 and r["constants"] > 0 and r["removed"] > 0  # q/k/v views of both layers
    assert _count(m, ("Shape", "Gather", "Unsqueeze", "Concat")) < before * 0.8
    onnx.checker.check_model(m)
    folded = str(tmp_path / "lm_folded.onnx")
    onnx.save(m, folded)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    a = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(folded, so, providers=["CPUExecutionProvider"])
    for rows, seq, past in ((2, 1, 64), (8, 1, 40), (2, 5, 16), (1, 7, 7), (4, 1, 1)):
        f = _feeds(e, rows, seq, past)
        for x, y in zip(a.run(None, f), b.run(None, f)):
            assert x.shape == y.shape and np.array_equal(x, y), (rows, seq, past)


def test_quantize_folds_lm(tiny_bundle, tmp_path):
    from janus_edge.quant.api import QuantOptions, quantize_bundle

    out = quantize_bundle(tiny_bundle, str(tmp_path / "q"), QuantOptions(mode="int4", method="rtn", graphs="lm",
                                                                          report=False, progress=False))
    path, e = _lm(out)
    assert e["quantization"]["shapes_folded"]["reshapes"] >= 6
    src = onnx.load(_lm(tiny_bundle)[0], load_external_data=False)
    q = onnx.load(path, load_external_data=False)
    assert _count(q, ("Shape",)) < _count(src, ("Shape",))
