"""An int4 lm graph run as ORT segments + libjanus_edge_cpu's GEMM (runtime/cpu_split.py) against the same graph in
plain ONNX Runtime: the cut is complete (every int4 weight MatMul native, 4 waves a layer), the outputs agree within
float summation order, `bind` writes what `run` returns, and JANUS_EDGE_CPU_KERNELS=0 turns it off. Tiny preset,
int4 with a small calibration; whole pictures through it: tests/test_shapes_quant.py (the default path there).
"""
from __future__ import annotations

import os

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from graph_feeds import random_feeds  # noqa: E402
from native_libs import load_or_skip  # noqa: E402
from test_quant import SMALL_CALIB, _q  # noqa: E402

from janus_edge.runtime import cpu_split  # noqa: E402
from janus_edge.runtime.bundle import Bundle  # noqa: E402
from janus_edge.runtime.cpu_kernels import load_cpu_lib  # noqa: E402
from janus_edge.runtime.ort_backend import OrtBackend, OrtGraph  # noqa: E402

@pytest.fixture(scope="module")
def int4_fp32_cache(tiny_bundle, tmp_path_factory):
    load_or_skip(load_cpu_lib, "CPU kernel library")
    return _q(tiny_bundle, tmp_path_factory.mktemp("q") / "int4", mode="int4", extra=SMALL_CALIB)


def _lm(bundle_dir, native: bool, monkeypatch):
    monkeypatch.setenv(cpu_split.ENV, "1" if native else "0")
    b = Bundle(bundle_dir, OrtBackend(threads=2))
    return b, b.graph("lm")


def test_the_cut_takes_every_int4_weight(int4_fp32_cache, monkeypatch):
    b, g = _lm(int4_fp32_cache, True, monkeypatch)
    assert isinstance(g, cpu_split.SplitGraph)
    layers = b.dims.num_layers
    assert len(g.plan.matmuls) == 7 * layers                    # q k v o gate up down
    waves = [st for st in g.plan.steps if isinstance(st, list)]
    assert [len(w) for w in waves] == [3, 1, 2, 1] * layers
    model = onnx.load(os.path.join(int4_fp32_cache, "lm.onnx"), load_external_data=False)
    left = {n.op_type for st in g.plan.steps if isinstance(st, cpu_split.Segment) for n in st.nodes}
    assert "MatMul" in left                                      # attention's QK^T and PV stay in ORT
    n_dq = sum(n.op_type == "DequantizeLinear" for n in model.graph.node)
    assert n_dq == 7 * layers and "DequantizeLinear" not in left


def test_split_equals_plain_ort(int4_fp32_cache, monkeypatch):
    _, plain = _lm(int4_fp32_cache, False, monkeypatch)
    _, split = _lm(int4_fp32_cache, True, monkeypatch)
    assert isinstance(plain, OrtGraph)
    feeds = random_feeds(plain.spec, past=16, seed=3)
    want, got = plain.run(feeds), split.run(feeds)
    assert set(got) == set(want)
    for name, w in want.items():
        scale = float(np.abs(w).max())
        assert got[name].shape == w.shape and got[name].dtype == w.dtype
        # the same int8 activation quantization; only the float summation order differs (~1e-6 of the scale)
        assert np.abs(got[name] - w).max() <= 1e-4 * scale, name


def test_bind_writes_what_run_returns(int4_fp32_cache, monkeypatch):
    _, split = _lm(int4_fp32_cache, True, monkeypatch)
    feeds = random_feeds(split.spec, past=8, seed=4)
    want = split.run(feeds)
    outs = {n: np.full_like(v, np.nan) for n, v in want.items()}
    run = split.bind(feeds, outs)
    run()
    for n, v in want.items():
        assert np.array_equal(outs[n], v), n
    assert split.calls == 2 and split.kernels()["JanusEdgeQ4Gemm"] == 2 * len(split.plan.matmuls)


def test_pictures_through_the_split_match_plain_ort(int4_fp32_cache, monkeypatch):
    from janus_edge import Pipeline

    toks = {}
    for native in (False, True):
        monkeypatch.setenv(cpu_split.ENV, "1" if native else "0")
        p = Pipeline.from_bundle(int4_fp32_cache, threads=2)
        assert isinstance(p.bundle.graph("lm"), cpu_split.SplitGraph) is native
        toks[native] = p.generate_image("a red fox in snow", temperature=0, seed=0).tokens
    assert toks[True].shape == toks[False].shape
    assert np.mean(toks[True] == toks[False]) >= 0.9


def test_fp32_graphs_are_not_split(tiny_bundle, monkeypatch):
    _, g = _lm(tiny_bundle, True, monkeypatch)
    assert isinstance(g, OrtGraph)
