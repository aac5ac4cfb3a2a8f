"""ORT backend memory settings: graphs run once per request (vision, VQ) open without the CPU arena, so their large
activations go back to the system after each call; the per-step graphs keep it."""
from __future__ import annotations


def test_one_shot_graphs_open_without_arena(tiny_bundle):
    from janus_edge.runtime.bundle import Bundle
    from janus_edge.runtime.ort_backend import OrtBackend

    b = Bundle(tiny_bundle, OrtBackend(threads=1))
    arena = {g: b.graph(g).session.get_session_options().enable_cpu_mem_arena
             for g in ("vq_decoder", "vision", "vq_encoder", "lm", "gen_head", "gen_embed")}
    assert arena == {"vq_decoder": False, "vision": False, "vq_encoder": False, "lm": True, "gen_head": True,
                     "gen_embed": True}


def test_fp16_graphs_open_with_the_low_memory_options(tiny_bundle_fp16, tiny_bundle):
    """An fp16 bundle's graphs open with verify's memory-saving options (runtime/ort_backend.py low_memory_fp16:
    no constant folding of the fp32 weight copies, priority order, no arena); an fp32 bundle keeps the optimizer."""
    import onnxruntime as ort

    from janus_edge.runtime.bundle import Bundle
    from janus_edge.runtime.ort_backend import OrtBackend

    def opts(bundle, g):
        so = Bundle(bundle, OrtBackend(threads=1)).graph(g).session.get_session_options()
        return so.graph_optimization_level, so.execution_order, so.enable_cpu_mem_arena

    low = (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.ExecutionOrder.PRIORITY_BASED, False)
    for g in ("lm", "gen_head", "vq_decoder"):
        assert opts(tiny_bundle_fp16, g) == low, g
    assert opts(tiny_bundle, "lm") == (ort.GraphOptimizationLevel.ORT_ENABLE_ALL, ort.ExecutionOrder.DEFAULT, True)


def _status_mb(field: str) -> float:
    return int(open("/proc/self/status").read().split(f"{field}:")[1].split()[0]) / 1024


def test_runtime_fp16_graph_holds_one_fp32_weight_copy(tmp_path):
    """The runtime's session of an fp16 graph (OrtBackend.open, precision float16) keeps one fp32 weight copy alive
    at a time: 16 MatMuls of 8 MB fp16 weights, peak RSS growth while running < 1.4x the weights. The runtime's
    fp32 options (graph optimizations on) fold every weight's Cast into a kept fp32 copy: ~3x and more."""
    import gc
    import os

    import numpy as np
    import pytest

    pytest.importorskip("onnx")
    from graph_helpers import fp16_matmul_chain

    from janus_edge.contract import GraphSpec, TensorSpec
    from janus_edge.runtime.ort_backend import OrtBackend

    if not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak RSS")
    path = str(tmp_path / "m.onnx")
    x, weights = fp16_matmul_chain(path)
    spec = GraphSpec("lm", (TensorSpec("x", "float16", ("n", 2048)),), (TensorSpec(x, "float16", ("n", 2048)),))
    backend, feeds = OrtBackend(threads=1), {"x": np.ones((2, 2048), np.float16)}
    backend.open(path, spec, precision="float16").run(feeds)  # warm-up: ORT's first-run allocations
    gc.collect()
    with open("/proc/self/clear_refs", "w") as fh:  # peak RSS (VmHWM) := current RSS
        fh.write("5")
    before = _status_mb("VmRSS")
    graph = backend.open(path, spec, precision="float16")
    for _ in range(3):
        graph.run(feeds)
    grew = (_status_mb("VmHWM") - before) * 2**20
    assert grew < 1.4 * weights, grew / weights
