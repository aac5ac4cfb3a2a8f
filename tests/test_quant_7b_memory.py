"""What a Pro-7B quantize needs, at tiny scale: an fp16 source bundle quantizes (int4 scales in the MatMul's dtype,
fused by ORT), initializers are read one at a time (peak RSS ~ one tensor, not the graph), wide weights are done in
column chunks, and the report scope (--report full | graphs | none) is a QuantOptions field."""
from __future__ import annotations

import gc
import json
import os
from types import SimpleNamespace

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from janus_edge.quant import graphio, int4, int4_weights  # noqa: E402
from janus_edge.quant.api import QuantOptions, quantize_bundle, report_scope  # noqa: E402


def _status_mb(field: str) -> float:
    return int(open("/proc/self/status").read().split(f"{field}:")[1].split()[0]) / 1024


def _fp16_chain(path: str, n: int, k: int) -> int:
    """n MatMuls of fp16 [k, k] weights in external data; returns the weight bytes."""
    rng, nodes, inits, x = np.random.default_rng(0), [], [], "x"
    for i in range(n):
        inits.append(numpy_helper.from_array((rng.standard_normal((k, k), dtype=np.float32) * 0.02)
                                             .astype(np.float16), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"h{i}"], name=f"/layers.{i}/mlp/up_proj/MatMul"))
        x = f"h{i}"
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["n", k])],
                          [helper.make_tensor_value_info(x, TensorProto.FLOAT16, ["n", k])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path, save_as_external_data=True,
              location=os.path.basename(path) + ".data", size_threshold=1024)
    return n * k * k * 2


def test_int4_of_an_external_fp16_graph_reads_one_weight_at_a_time(tmp_path):
    """graphio.Store + quantize_int4 over 64 fp16 weights of 2 MB (128 MB): peak RSS growth stays under 0.35x the
    weights (a memory map of the source kept every touched page resident: >= 1x, which on Pro-7B's lm is 13 GB)."""
    if not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak RSS")
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    weights = _fp16_chain(str(src / "lm.onnx"), 64, 1024)
    opts = SimpleNamespace(method="rtn", block_size=128, int8_layers=(), target="any", progress=False)
    gc.collect()
    with open("/proc/self/clear_refs", "w") as fh:  # peak RSS (VmHWM) := current RSS
        fh.write("5")
    before = _status_mb("VmRSS")
    with graphio.Store(str(src), str(dst / "lm.onnx")) as store:
        model, entry = int4.quantize_int4(graphio.load(str(src / "lm.onnx")), "lm", None, opts)
        files = store.save(model)
    grew = (_status_mb("VmHWM") - before) * 2**20
    assert entry["matmuls_int4"] == 64 and files == ["lm.onnx.data"]
    assert grew < 0.35 * weights, grew / weights
    # the written graph is the fp16 form ORT runs: fp16 scales, fused into MatMulNBits
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    s = ort.InferenceSession(str(dst / "lm.onnx"), so, providers=["CPUExecutionProvider"])
    assert s.run(None, {"x": np.ones((2, 1024), np.float16)})[0].dtype == np.float16
    ops = [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx"), load_external_data=False).graph.node]
    assert ops.count("MatMulNBits") == 64 and "MatMul" not in ops and "DequantizeLinear" not in ops


def test_wide_weights_quantized_in_column_chunks_equal_whole(monkeypatch):
    rng = np.random.default_rng(1)
    w = (rng.standard_normal((256, 96), dtype=np.float32) * 0.05).astype(np.float16)
    stats = {"mean_sq": rng.random(256).astype(np.float32) + 0.1}
    whole = int4_weights.quantize_weight(w, 128, 4, "awq-clip", stats)
    monkeypatch.setattr(int4_weights, "COLUMN_CHUNK", 256 * 20)  # 20 columns per pass: 5 passes, the last one short
    calls = []
    real = int4_weights._quantize_columns
    monkeypatch.setattr(int4_weights, "_quantize_columns", lambda *a: calls.append(a[0].shape) or real(*a))
    chunked = int4_weights.quantize_weight(w, 128, 4, "awq-clip", stats)
    assert len(calls) == 5 and calls[-1] == (256, 16)
    np.testing.assert_array_equal(whole[0], chunked[0])
    np.testing.assert_array_equal(whole[1], chunked[1])


def test_report_scope_is_an_option():
    assert report_scope(QuantOptions()) == "text"  # the default: per graph + text per domain (no image/chat decode)
    assert report_scope(QuantOptions(report="graphs")) == "graphs"
    assert report_scope(QuantOptions(report=False)) == "none" and report_scope(QuantOptions(report=True)) == "full"
    assert report_scope(QuantOptions(extra={"report": {"e2e": False}})) == "graphs"  # the older way still works


def test_fp16_bundle_int4_with_per_graph_report(tiny_bundle_fp16, tmp_path):
    """The Pro-7B recipe on the tiny preset: fp16 source, int4 clip (no calibration), --report graphs."""
    import onnxruntime as ort

    from janus_edge.runtime.bundle import Bundle
    from janus_edge.runtime.ort_backend import OrtBackend
    from janus_edge.runtime.pipeline import Pipeline

    out = quantize_bundle(tiny_bundle_fp16, str(tmp_path / "q"), QuantOptions(mode="int4", method="clip",
                                                                             report="graphs", progress=False))
    rep = json.load(open(os.path.join(out, "quant_report.json")))
    assert rep["scope"] == "graphs" and "text" not in rep and "image" not in rep
    for g in ("lm", "gen_head", "lm_head"):
        assert rep["graphs"][g]["precision"] == "int4" and rep["graphs"][g]["cosine_min"] > 0.9, g
    b = Bundle(out, OrtBackend(threads=1))
    so = b.graph("lm").session.get_session_options()  # quantized: the optimizer (MatMulNBits fusion) stays on
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    r = Pipeline(b).generate_image("a red cube", n=1, cfg_weight=5.0, temperature=1.0, seed=0)
    assert r.tokens.shape == (1, b.dims.num_image_tokens)


def test_cli_refuses_an_unknown_report_scope(tiny_bundle_fp16, tmp_path, cli, one_error_line):
    code, out, err = cli("quantize", tiny_bundle_fp16, "--mode", "int4", "--report", "some", "--out",
                         str(tmp_path / "q"))
    assert code == 2 and "report scope" in one_error_line(err)
    assert not os.path.exists(tmp_path / "q")


@pytest.mark.parametrize("mode", ["int8", "fp8"])
def test_fp16_bundle_int8_and_fp8_scales_in_fp16(mode, tiny_bundle_fp16, tmp_path):
    """Calibrated modes of an fp16 bundle: the smoothing constants and every Q/DQ scale are fp16 (the type of the
    tensors they meet; fp32 ones made an lm that ORT refused to load), the graph is at opset 21, and it runs."""
    from janus_edge.runtime.bundle import Bundle
    from janus_edge.runtime.ort_backend import OrtBackend
    from janus_edge.runtime.pipeline import Pipeline

    calib = {"n_prompts": 2, "image_steps": 4, "n_chats": 1, "chat_tokens": 4, "text_file": None}
    out = quantize_bundle(tiny_bundle_fp16, str(tmp_path / "q"), QuantOptions(mode=mode, report="graphs",
                                                                             progress=False, extra={"calib": calib}))
    m = onnx.load(os.path.join(out, "lm.onnx"), load_external_data=False)
    assert next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) == 21
    types = {t.name: t.data_type for t in m.graph.initializer}
    qdq = [n for n in m.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq and {types[n.input[1]] for n in qdq} == {TensorProto.FLOAT16}
    assert {t for t in types.values() if t in (TensorProto.FLOAT, TensorProto.FLOAT16)} == {TensorProto.FLOAT16}
    rep = json.load(open(os.path.join(out, "quant_report.json")))
    for g in ("lm", "gen_head", "lm_head"):
        assert rep["graphs"][g]["precision"] == mode and rep["graphs"][g]["cosine_min"] > 0.97, g
    p = Pipeline(Bundle(out, OrtBackend(threads=1)))
    assert p.generate_image("a red cube", temperature=0, decode=False).tokens.shape == (1, p.dims.num_image_tokens)
    assert len(list(p.chat_token_ids("what is this?", max_new_tokens=4))) > 0


def test_fp16_scales_round_up_and_never_to_zero():
    from janus_edge.quant.int8 import scale_in

    s = np.array([1e-3, 3.3333e-4, 7.77e-6, 1e-12, 1.0, 123.456], np.float32)
    r = scale_in(np.float16, s)
    assert (r >= s).all() and (r > 0).all()  # a scale rounded down would clip the top code
    assert np.array_equal(r.astype(np.float16).astype(np.float32), r)  # what the fp16 graph holds, exactly
    assert (r[[0, 1, 4, 5]] / s[[0, 1, 4, 5]] < 1 + 2 ** -10).all()  # one fp16 step at most in the normal range
    assert np.array_equal(scale_in(np.float32, s), s)


def test_a_quantized_graph_failing_type_inference_is_not_published(tiny_bundle_fp16, tmp_path, monkeypatch):
    """With --report none nothing opens the new graphs, so the rewrite itself is checked (strict type inference)."""
    from janus_edge.quant import api

    real = api.mode_function

    def with_an_fp32_constant(mode):  # the fault seen: an fp32 constant beside fp16 tensors
        f = real(mode)

        def g(model, name, calib, opts):
            model, q = f(model, name, calib, opts)
            if name != "lm":
                return model, q
            mul = next(n for n in model.graph.node if n.op_type == "Mul")
            model.graph.initializer.append(numpy_helper.from_array(np.ones(1, np.float32), "an_fp32_const"))
            mul.input[1] = "an_fp32_const"
            return model, q
        return g

    monkeypatch.setattr(api, "mode_function", with_an_fp32_constant)
    with pytest.raises(RuntimeError, match="quantized lm graph fails ONNX type inference"):
        quantize_bundle(tiny_bundle_fp16, str(tmp_path / "q"), QuantOptions(mode="int4", method="clip", report="none",
                                                                          progress=False))
    assert os.listdir(tmp_path) == []
