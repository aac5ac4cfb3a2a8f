"""Calibration, INT8 / FP8 QDQ graphs and the accuracy report (quant/calib.py, int8.py, fp8.py, evaluate.py,
report.py). Graph-form checks read ORT's optimized graph, so a form that silently runs in fp32 fails."""
from __future__ import annotations

import collections
import json
import os

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from janus_edge.quant import calib as CB  # noqa: E402
from janus_edge.quant import evaluate as E  # noqa: E402
from janus_edge.quant.fp8 import quantize_fp8  # noqa: E402
from janus_edge.quant.int8 import ORT_SESSION_CONFIG, ORT_WEIGHT_ONLY, quantize_int8  # noqa: E402

THRESH_AGREE, THRESH_PPL = 0.9, 5.0  # trained-LM int8 default on 256 held-out tokens (see the test)
SMALL_CALIB = {"n_prompts": 3, "image_steps": 16, "n_chats": 2, "chat_tokens": 6, "text_file": None}


class Opts:
    def __init__(self, **extra):
        self.extra = extra


def optimized_ops(path_or_model, tmp_path, name="opt.onnx", config=None) -> collections.Counter:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.optimized_model_filepath = str(tmp_path / name)
    so.log_severity_level = 3
    for k, v in (ORT_SESSION_CONFIG if config is None else config).items():
        so.add_session_config_entry(k, v)
    src = path_or_model if isinstance(path_or_model, str) else path_or_model.SerializeToString()
    ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
    return collections.Counter(n.op_type for n in onnx.load(str(tmp_path / name)).graph.node)


def init_types(model) -> dict:
    return {t.name: t.data_type for t in model.graph.initializer}


@pytest.fixture(scope="session")
def tiny_int8(tiny_bundle, tmp_path_factory) -> str:
    from janus_edge.quant.api import QuantOptions, quantize_bundle

    out = str(tmp_path_factory.mktemp("q") / "int8")
    return quantize_bundle(tiny_bundle, out, QuantOptions(mode="int8", progress=False, report="full", extra={
        "calib": SMALL_CALIB,  # the int8 default policy: down_proj and lm_head kept int8 weight-only
        "report": {"text_tokens": 300, "image_prompts": 1, "chat_questions": 1, "chat_tokens": 6}}))


# ---- a MatMul whose output channels differ by 1000x: the per-channel axis must be N (axis 1 of [K, N]) --------------
def _one_matmul(K=64, N=48, seed=0, outlier=20.0):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((K, N)) * np.logspace(-1.5, 1.5, N)[None, :]).astype(np.float32)
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"], name="/mm/MatMul")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["r", K])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["r", N])],
                          [numpy_helper.from_array(w, "W")])
    x = rng.standard_normal((300, K)).astype(np.float32)
    x[:, 3] *= outlier  # an outlier channel, as trained LMs have
    cd = CB.CalibData()
    st = None
    for row in np.split(x, 10):
        st = CB._update(st, row, 512, rng)
    cd.graphs["g"] = {"x": st}
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), x, w, cd


def _run(model, x):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    for k, v in ORT_SESSION_CONFIG.items():
        so.add_session_config_entry(k, v)
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _rel_ch(a, b):  # worst output channel
    return float((np.linalg.norm(a - b, axis=0) / np.linalg.norm(b, axis=0)).max())


def test_int8_weight_axis_and_fusion(tmp_path):
    model, x, w, cd = _one_matmul(outlier=1.0)
    q, info = quantize_int8(model, "g", cd, Opts(int8={"smooth": "off", "calibrator": "minmax", "keep_float": 0}))
    dq = next(n for n in q.graph.node if n.op_type == "DequantizeLinear" and n.output[0] == q.graph.node[-1].input[1])
    assert helper.get_attribute_value(dq.attribute[0]) == 1  # axis 1 = output channels of B [K, N]
    scales = numpy_helper.to_array(next(t for t in q.graph.initializer if t.name == dq.input[1]))
    assert scales.shape == (w.shape[1],)
    assert init_types(q)[dq.input[0]] == TensorProto.INT8
    err = _rel_ch(_run(q, x), x @ w)
    wrong = np.abs(w).max(1, keepdims=True) / 127  # scales per K row: the axis ORT's per_channel picks for MatMul
    assert err < 0.03 and _rel_ch(x @ (np.rint(w / wrong) * wrong), x @ w) > 0.3, err
    ops = optimized_ops(q, tmp_path)
    assert ops["MatMulIntegerToFloat"] == 1 and ops["MatMul"] == 0, ops


def test_int8_gemm_becomes_matmul_plus_float_bias(tmp_path):
    """A Linear exported as Gemm(transB=1) with a bias (gen_head): MatMul on B^T [K, N] with int8 weights per output
    channel + the bias added in float, graph I/O unchanged: TensorRT parses it (no INT32 DequantizeLinear) and ORT,
    with the graph's recorded session config, runs MatMulIntegerToFloat. alpha / beta fold into B' / C'."""
    model, x, w, cd = _one_matmul(outlier=1.0)
    b = np.random.default_rng(3).standard_normal(w.shape[1]).astype(np.float32) * 5
    wt = numpy_helper.from_array(np.ascontiguousarray(w.T), "W")
    gemm = helper.make_node("Gemm", ["x", "W", "B"], ["y"], name="/mm/Gemm", transB=1, alpha=0.5, beta=2.0)
    g = helper.make_graph([gemm], "g", list(model.graph.input), list(model.graph.output),
                          [wt, numpy_helper.from_array(b, "B")])
    gm = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    q, info = quantize_int8(gm, "g", cd, Opts(int8={"smooth": "off", "calibrator": "minmax", "keep_float": 0}))
    assert info["gemms_as_matmul_add"] == 1 and info["matmuls_quantized"] == 1
    assert [n.op_type for n in q.graph.node][-2:] == ["MatMul", "Add"] and q.graph.output[0].name == "y"
    assert all(t.data_type != TensorProto.INT32 for t in q.graph.initializer)
    ref = 0.5 * x @ w + 2.0 * b
    assert _rel_ch(_run(q, x), ref) < 0.03
    ops = optimized_ops(q, tmp_path, config=info["ort_session_config"])
    assert ops["MatMulIntegerToFloat"] == 1 and ops["Gemm"] == ops["MatMul"] == 0, ops


def test_smoothing_helps_outlier_channel():
    model, x, w, cd = _one_matmul(seed=1)
    plain, _ = quantize_int8(model, "g", cd, Opts(int8={"smooth": "off", "calibrator": "minmax", "keep_float": 0}))
    model2, *_ = _one_matmul(seed=1)
    smooth, info = quantize_int8(model2, "g", cd, Opts(int8={"smooth": 0.5, "calibrator": "minmax", "keep_float": 0}))
    assert info["smoothing"]["folded"]["mul"] == 1  # a graph input: 1/s becomes a Mul
    assert _rel(_run(smooth, x), x @ w) < _rel(_run(plain, x), x @ w)


def _run_cfg(model, x, config):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    for k, v in config.items():
        so.add_session_config_entry(k, v)
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_kept_matmul_is_int8_weight_only(tmp_path):
    """A kept MatMul (keep_float) becomes int8 weight-only: per-channel INT8 weight DQ + MatMul on the float
    activation (no activation Q/DQ: TensorRT's weight-only form), not smoothed when its whole group is kept (smoothing
    would only move the activation outliers into the weights), fused by ORT into an 8-bit MatMulNBits (accuracy level
    4: int8 activations per row and block of 32 channels, so the outlier channel spoils one block only)."""
    from janus_edge.quant.int8 import int8_scheme, weight_fake

    model, x, w, cd = _one_matmul(seed=1)
    q, info = quantize_int8(model, "g", cd, Opts(int8={"smooth": 0.8, "calibrator": "minmax",
                                                       "keep_float": ["/mm/MatMul"]}))
    assert [n.op_type for n in q.graph.node] == ["DequantizeLinear", "MatMul"], [n.op_type for n in q.graph.node]
    assert info["matmuls_weight_only"] == 1 and info["matmuls_quantized"] == 0
    assert info["smoothing"]["folded"] == {"norm": 0, "cols": 0, "mul": 0}
    dq = q.graph.node[0]
    assert init_types(q)[dq.input[0]] == TensorProto.INT8 and helper.get_attribute_value(dq.attribute[0]) == 1
    cfg = {**info["ort_session_config"], **ORT_WEIGHT_ONLY}  # level 4: what the runtime's ORT backend sets
    assert "MatMulNBits" in info["weight_only_on_ort_cpu"]
    ops = optimized_ops(q, tmp_path, config=cfg)
    assert ops["MatMulNBits"] == 1 and ops["MatMul"] == 0, ops
    w8a16 = x @ weight_fake(w, int8_scheme())
    assert _rel(_run_cfg(q, x, cfg), w8a16) < 0.02  # 1.1%; per-tensor static A8 (below): 5.8%
    model, x, w, cd = _one_matmul(seed=1)
    qf, info = quantize_int8(model, "g", cd, Opts(int8={"smooth": 0.8, "calibrator": "minmax", "keep_as": "float",
                                                        "keep_float": ["/mm/MatMul"]}))
    assert [n.op_type for n in qf.graph.node] == ["MatMul"] and info["matmuls_float"] == 1
    model, x, w, cd = _one_matmul(seed=1)
    qa, _ = quantize_int8(model, "g", cd, Opts(int8={"smooth": "off", "calibrator": "minmax", "keep_float": 0}))
    assert _rel(_run_cfg(qa, x, ORT_SESSION_CONFIG), w8a16) > 0.04


def test_fp8_types_and_cpu_run(tmp_path):
    model, x, w, cd = _one_matmul()
    q, info = quantize_fp8(model, "g", cd, Opts(fp8={"keep_float": 0}))
    types = init_types(q)
    fp8 = [n for n in q.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert fp8 and all(types.get(n.input[2]) == TensorProto.FLOAT8E4M3FN for n in fp8)
    assert info["opset"] == 21 and "no FP8 MatMul" in info["runs_on"]
    assert _rel(_run(q, x), x @ w) < 0.1  # ORT's CPU really runs the FP8 Q/DQ graph (as Q/DQ + fp32 MatMul)
    assert optimized_ops(q, tmp_path)["DequantizeLinear"] >= 1


def test_calibration_reads_given_files(tiny_bundle, tmp_path, sample_image):
    prompts = tmp_path / "p.txt"
    prompts.write_text("# comment\na red cube\n\na blue sphere on grass\n")
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    sample_image.save(imgs / "a.png")
    cfg = CB.CalibConfig(prompts_file=str(prompts), image_dir=str(imgs), n_prompts=10, image_steps=5, n_chats=1,
                         chat_tokens=3, text_file=None, progress=False)
    data = CB.collect(tiny_bundle, cfg)
    m = data.meta
    assert m["t2i_prompts"] == 2 and m["images"] == str(imgs) and m["chat_runs_with_image"] == 1
    # lm calls: 2 t2i prefills + 2 x 4 CFG decode steps + chat prefill + 2 chat steps, all observed
    assert m["observed_calls"]["lm"] == m["calls"]["lm"] == 2 + 2 * 4 + 1 + 2
    st = next(iter(data.graphs["lm"].values()))
    assert st.count > 0 and st.samples.shape[1] == st.absmax_ch.shape[0] and np.isfinite(st.absmax)
    assert "hidden" in data.graphs["gen_head"]  # both CFG rows reach the head
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(CB.CalibInputError):
        CB.collect(tiny_bundle, CB.CalibConfig(prompts_file=str(tmp_path / "empty.txt"), progress=False))
    with pytest.raises(CB.CalibInputError):
        CB.read_images(str(tmp_path / "nope"))


def test_calibration_opens_each_graph_once_with_the_runtimes_options(tiny_bundle_fp16):
    """A calibrated graph is one session (its instrumented copy, which also runs the unobserved steps), opened with
    the runtime's options for it: an fp16 graph gets the low-memory ones (two sessions and ORT's fp32 copies of the
    weights were 17.9 GB for Pro-1B fp32 calibration; 10.7 GB with one)."""
    from janus_edge.runtime.bundle import Bundle
    from janus_edge.runtime.pipeline import Pipeline

    col = CB.Collector(64, decode_stride=3)
    pipe = Pipeline(Bundle(tiny_bundle_fp16, CB.recording_backend(col)))
    got = pipe.generate_image("a red cube", temperature=0, decode=False).tokens
    ref = Pipeline.from_bundle(tiny_bundle_fp16).generate_image("a red cube", temperature=0, decode=False).tokens
    assert (got == ref).all()
    assert 0 < col.observed["lm"] < col.calls["lm"]  # observed and plain steps both ran
    for name in ("lm", "gen_head", "vq_decoder"):
        g = pipe.bundle.graph(name)
        if name != "vq_decoder":
            assert g.session is g.inst, name
        assert g.session.get_session_options().graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL


def test_int8_bundle_graphs_and_report(tiny_int8, tiny_bundle, tmp_path):
    lm = onnx.load(os.path.join(tiny_int8, "lm.onnx"))
    types = init_types(lm)
    q_nodes = [n for n in lm.graph.node if n.op_type == "QuantizeLinear"]
    assert q_nodes and all(types[n.input[2]] == TensorProto.INT8 for n in q_nodes)
    with open(os.path.join(tiny_int8, "manifest.json")) as fh:
        man = json.load(fh)
    lm_q = man["graphs"]["lm"]["quantization"]
    ops = optimized_ops(os.path.join(tiny_int8, "lm.onnx"), tmp_path, config=lm_q["ort_session_config"])
    names = [n.name for n in onnx.load(os.path.join(tiny_bundle, "lm.onnx")).graph.node
             if n.op_type == "MatMul" and "proj" in n.name]
    n_down = sum("down_proj" in n for n in names)
    # W8A8 MatMuls -> MatMulIntegerToFloat; the kept down_proj (int8 weight-only) -> 8-bit MatMulNBits, nothing float
    assert n_down and ops["MatMulIntegerToFloat"] == len(names) - n_down and ops["MatMulNBits"] == n_down, ops
    assert sorted(lm_q["kept_float"]) == sorted(n for n in names if "down_proj" in n)
    head_q = man["graphs"]["lm_head"]["quantization"]
    head_ops = optimized_ops(os.path.join(tiny_int8, "lm_head.onnx"), tmp_path, "head.onnx", head_q["ort_session_config"])
    assert head_ops["MatMulNBits"] == 1 and head_ops["MatMul"] == 0, head_ops
    # gen_head's two Linear layers: MatMul (int8 weight) + float bias Add, no INT32 DequantizeLinear (TensorRT form);
    # with the graph's own session config ORT runs them as MatMulIntegerToFloat, not a float Gemm on DQ weights
    gh = onnx.load(os.path.join(tiny_int8, "gen_head.onnx"))
    assert not any(n.op_type == "Gemm" for n in gh.graph.node)
    assert all(t.data_type != TensorProto.INT32 for t in gh.graph.initializer)
    gh_cfg = man["graphs"]["gen_head"]["quantization"]["ort_session_config"]
    gh_ops = optimized_ops(os.path.join(tiny_int8, "gen_head.onnx"), tmp_path, "gh.onnx", gh_cfg)
    assert gh_ops["MatMulIntegerToFloat"] == 2 and gh_ops["Gemm"] == gh_ops["MatMul"] == 0, gh_ops
    assert lm_q["ort_session_config"] == ORT_SESSION_CONFIG
    with open(os.path.join(tiny_int8, "quant_report.json")) as fh:
        rep = json.load(fh)
    g = rep["graphs"]["lm"]
    assert g["weight_bytes_after"] < g["weight_bytes_before"] / 3
    assert 0.9 < g["cosine_min"] <= 1.0 + 1e-6 and g["max_abs_error"] > 0
    # int8 close to fp32 on the tiny model (measured: text top-1 agreement 98.7%, perplexity +0.01%; image tokens
    # teacher-forced 95.3%, greedy 93.8%, CFG-logit cosine 0.993, PSNR 20.3 dB), with margin for other CPUs' kernels
    t, im = rep["text"], rep["image"]
    assert t["tokens"] == 299 and t["ppl_fp"] > 0 and t["top1_agreement"] >= 0.9 and abs(t["ppl_delta_pct"]) < 2, t
    assert im["teacher_forced_top1_agreement"] >= 0.85 and im["cfg_logit_cosine_min_prompt"] >= 0.98, im
    assert im["greedy_token_agreement"] >= 0.5 and im["psnr_db_vs_fp"] > 12, im
    doms = rep["text_domains"]  # every held-out domain apart, each with its own goal check
    assert set(doms) == set(CB.HELDOUT_DOMAINS) and all(r["tokens"] == 299 for r in doms.values())
    assert set(rep["goals"]["per_domain"]) == set(doms) and rep["goals"]["mode"] == "int8"
    assert os.path.getsize(os.path.join(tiny_int8, "quant_report.md")) > 500


def test_trained_int8_accuracy(trained_bundle, tmp_path):
    """On the trained LM (SmolLM2-135M inside Janus), the int8 default (SmoothQuant alpha 0.8 with absmax scales;
    down_proj and lm_head kept int8 weight-only, unsmoothed) agrees with fp on held-out text, with a small calibration.
    Measured: plain static A8 47% / +166%; all W8A8 after SmoothQuant 83% / +9%; the previous default (down_proj
    float, lm_head W8A8) 90.6% / +2.6%."""
    from janus_edge.quant.api import QuantOptions, quantize_bundle

    out = quantize_bundle(trained_bundle, str(tmp_path / "q"), QuantOptions(
        mode="int8", graphs="lm,lm_head", progress=False, report=False,
        extra={"calib": {**SMALL_CALIB, "n_prompts": 2, "image_steps": 4, "n_chats": 1, "chat_tokens": 4,
                         "text_file": CB.CALIB_TEXT_FILE}}))
    fp, q = E.open_bundle(trained_bundle), E.open_bundle(out)
    r = E.text_accuracy(fp, q, E.text_ids(fp, CB.read_text(CB.HELDOUT_FILE), 257))
    assert r["top1_agreement"] >= THRESH_AGREE and abs(r["ppl_delta_pct"]) < THRESH_PPL, r
