"""The residual-stream rotation folded into the lm graph (quant/rotate.py): exact in fp32 with an orthogonal matrix,
wrong with a non-orthogonal one; and each new INT4 method's error on a trained layer below round-to-nearest's."""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest

from janus_edge.quant import rotate as R


def _feeds(sess, rows=2, seq=5, past=3, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for i in sess.get_inputs():
        shape = [{"batch": rows, "rows": rows, "seq": seq, "past": past}.get(d, d) if isinstance(d, str) else d
                 for d in i.shape]
        shape = [rows if k == 0 and isinstance(d, str) else d for k, d in enumerate(shape)]
        if i.name == "position_ids":
            out[i.name] = np.tile(np.arange(past, past + seq, dtype=np.int64), (rows, 1))
        elif i.name == "inputs_embeds":
            out[i.name] = rng.standard_normal((rows, seq, shape[-1])).astype(np.float32)
        else:  # past K/V [rows, heads, past, head_dim]
            out[i.name] = rng.standard_normal([rows, shape[1], past, shape[3]]).astype(np.float32)
    return out


def _run(model, feeds):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in s.get_outputs()], s.run(None, feeds))), s


def _lm(tiny_bundle):
    """The tiny lm graph in memory, its RMSNorm weights (ones at init) set to seeded values, so folding them counts."""
    from onnx import numpy_helper

    model = onnx.load(os.path.join(tiny_bundle, "lm.onnx"))
    rng = np.random.default_rng(1)
    for t in model.graph.initializer:
        if "norm" in t.name and len(t.dims) == 1:
            t.CopyFrom(numpy_helper.from_array(rng.uniform(0.5, 1.5, t.dims[0]).astype(np.float32), t.name))
    return model


def _rel(a, b):
    return float(np.abs(a - b).max() / np.abs(a).max())


@pytest.mark.parametrize("orthogonal", [True, False])
def test_rotated_fp32_graph_equals_the_original(tiny_bundle, orthogonal):
    model = _lm(tiny_bundle)
    import onnxruntime as ort

    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = _feeds(s)
    ref, _ = _run(model, feeds)
    dim = feeds["inputs_embeds"].shape[-1]
    Q = R.rotation(dim, seed=3)
    assert np.allclose(Q @ Q.T, np.eye(dim), atol=1e-12)
    if not orthogonal:  # a near-orthogonal matrix (5% off one direction) must break the equality
        Q = Q @ np.diag(np.r_[1.05, np.ones(dim - 1)])
    rot = _lm(tiny_bundle)
    info = R.rotate_lm(rot, matrix=Q)["info"]
    assert info["norms_folded"] == info["residual_writers"] > 0  # two norms and two residual writers per layer
    got, _ = _run(rot, feeds)
    err = max(_rel(ref[k], got[k]) for k in ref)
    if orthogonal:
        assert err < 2e-5, err  # hidden_states and every present K/V
    else:
        assert err > 1e-3, err


def test_rotation_is_orthogonal_for_both_size_kinds():
    for dim in (64, 576, 2048):
        Q = R.rotation(dim)
        assert np.allclose(Q.T @ Q, np.eye(dim), atol=1e-10)
        assert np.abs(Q).max() < 0.5  # spread: no channel kept as it was
