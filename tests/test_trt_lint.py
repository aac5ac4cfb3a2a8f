"""`lint-trt`: real bundles pass; hand-made graphs with what TensorRT 10.3 cannot parse are named and fail."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from janus_edge.export.lint_trt import lint_bundle, lint_model  # noqa: E402


def _model(nodes, inputs, outputs, inits=(), opset=17, extra_opsets=()):
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    ops = [helper.make_opsetid("", opset), *[helper.make_opsetid(d, v) for d, v in extra_opsets]]
    return helper.make_model(g, opset_imports=ops)


def _vi(name, t, shape):
    return helper.make_tensor_value_info(name, t, shape)


def _lint(model):
    findings, warnings, n = lint_model(model, "g")
    return [f.line() for f in findings], warnings


def test_fp32_and_fp16_bundles_are_clean(tiny_bundle, tiny_bundle_fp16):
    for b in (tiny_bundle, tiny_bundle_fp16):
        r = lint_bundle(b)
        assert r.ok, [f.line() for f in r.findings]
        assert set(r.checked) == {"vision", "vq_encoder", "vq_decoder", "gen_embed", "lm", "lm_head", "gen_head"}
        assert sum(r.checked.values()) > 100


def test_matmulnbits_contrib_op_is_refused():
    w = numpy_helper.from_array(np.zeros((64, 1, 16), np.uint8), "w")
    s = numpy_helper.from_array(np.ones((64,), np.float32), "s")
    n = helper.make_node("MatMulNBits", ["x", "w", "s"], ["y"], name="mm_q4", domain="com.microsoft", K=32, N=64,
                         bits=4, block_size=32)
    lines, _ = _lint(_model([n], [_vi("x", TensorProto.FLOAT, ["rows", 32])], [_vi("y", TensorProto.FLOAT,
                                                                                    ["rows", 64])],
                            [w, s], extra_opsets=[("com.microsoft", 1)]))
    assert len(lines) == 1 and "'mm_q4' (MatMulNBits)" in lines[0] and "com.microsoft" in lines[0]


def test_dynamic_int8_is_refused():
    w = numpy_helper.from_array(np.ones((32, 8), np.int8), "w")
    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"], name="dq"),
             helper.make_node("MatMulInteger", ["xq", "w", "xz"], ["y"], name="mmi")]
    lines, _ = _lint(_model(nodes, [_vi("x", TensorProto.FLOAT, ["rows", 32])], [_vi("y", TensorProto.INT32,
                                                                                   ["rows", 8])], [w]))
    assert any("'dq' (DynamicQuantizeLinear)" in s and "not supported" in s for s in lines), lines
    assert any("'mmi' (MatMulInteger)" in s for s in lines), lines


def _qdq_act(zp_value=0, zp_type=np.int8, scale_shape=(), with_zp=True):
    inits = [numpy_helper.from_array(np.full(scale_shape, 0.1, np.float32), "s")]
    ins = ["x", "s"]
    if with_zp:
        inits.append(numpy_helper.from_array(np.full(scale_shape, zp_value, zp_type), "z"))
        ins.append("z")
    nodes = [helper.make_node("QuantizeLinear", ins, ["q"], name="q_act", axis=1),
             helper.make_node("DequantizeLinear", ["q", *ins[1:]], ["y"], name="dq_act", axis=1)]
    return _model(nodes, [_vi("x", TensorProto.FLOAT, ["rows", 8])], [_vi("y", TensorProto.FLOAT, ["rows", 8])],
                  inits)


def test_symmetric_per_tensor_activation_qdq_passes():
    assert _lint(_qdq_act()) == ([], [])


def test_zero_point_not_zero_is_refused():
    lines, _ = _lint(_qdq_act(zp_value=3))
    assert any("'q_act' (QuantizeLinear)" in s and "zero point" in s and "not 0" in s for s in lines), lines
    assert any("'dq_act' (DequantizeLinear)" in s for s in lines), lines


def test_uint8_and_per_channel_activations_are_refused():
    lines, _ = _lint(_qdq_act(with_zp=False))
    assert any("UINT8" in s for s in lines), lines
    lines, _ = _lint(_qdq_act(scale_shape=(8,)))
    assert any("per-tensor only" in s for s in lines), lines


def test_topk_k_4096_is_refused_and_3839_passes():
    def model(k):
        kk = numpy_helper.from_array(np.array([k], np.int64), "k")
        n = helper.make_node("TopK", ["x", "k"], ["v", "i"], name="topk", axis=-1)
        return _model([n], [_vi("x", TensorProto.FLOAT, ["rows", 16384])],
                      [_vi("v", TensorProto.FLOAT, ["rows", k]), _vi("i", TensorProto.INT64, ["rows", k])], [kk])
    lines, _ = _lint(model(4096))
    assert len(lines) == 1 and "'topk' (TopK)" in lines[0] and "K=4096" in lines[0]
    assert _lint(model(3839))[0] == []


def _int4_weight(w_shape, s_shape, qtype=TensorProto.INT4, np_zero=None):
    w = helper.make_tensor("w", qtype, w_shape, np.zeros(int(np.prod(w_shape)), np.int8).tolist())
    s = numpy_helper.from_array(np.full(s_shape, 0.01, np.float32), "s")
    z = helper.make_tensor("z", qtype, s_shape, np.zeros(int(np.prod(s_shape)), np.int8).tolist())
    nodes = [helper.make_node("DequantizeLinear", ["w", "s", "z"], ["wf"], name="dq_w", axis=0, block_size=128),
             helper.make_node("MatMul", ["x", "wf"], ["y"], name="mm")]
    return _model(nodes, [_vi("x", TensorProto.FLOAT, ["rows", w_shape[0]])],
                  [_vi("y", TensorProto.FLOAT, ["rows", w_shape[1]])], [w, s, z], opset=21)


def test_int4_block_weight_passes_with_opset_warning_and_int8_blocks_are_refused():
    lines, warnings = _lint(_int4_weight([256, 64], [2, 64]))
    assert lines == [] and any("opset 21" in w for w in warnings)
    lines, _ = _lint(_int4_weight([256, 64], [2, 64], qtype=TensorProto.INT8))
    assert any("'dq_w' (DequantizeLinear)" in s and "INT4 2-D constant" in s for s in lines), lines


def test_later_ops_name_the_version_and_unknown_dims_are_refused():
    n = helper.make_node("RMSNormalization", ["x", "g"], ["y"], name="rms")
    gg = numpy_helper.from_array(np.ones((8,), np.float32), "g")
    lines, _ = _lint(_model([n], [_vi("x", TensorProto.FLOAT, ["batch", 8])], [_vi("y", TensorProto.FLOAT,
                                                                                 ["batch", 8])], [gg], opset=23))
    assert any("'rms' (RMSNormalization)" in s and ">= 10.15" in s for s in lines), lines
    assert any("opset 23" in s for s in lines), lines
    assert any("'batch'" in s and "no profile covers it" in s for s in lines), lines


@pytest.fixture
def bad_bundle(tiny_bundle, tmp_path):
    """A copy of the tiny bundle whose lm_head graph is a MatMulNBits (ORT's CPU int4 form)."""
    d = tmp_path / "bad"
    shutil.copytree(tiny_bundle, d)
    m = json.loads((d / "manifest.json").read_text())
    H, V = m["model"]["hidden_size"], m["model"]["vocab_size"]
    w = numpy_helper.from_array(np.zeros((V, 1, H // 2), np.uint8), "w")
    s = numpy_helper.from_array(np.ones((V,), np.float32), "s")
    n = helper.make_node("MatMulNBits", ["hidden", "w", "s"], ["logits"], name="lm_head_q4", domain="com.microsoft",
                         K=H, N=V, bits=4, block_size=H)
    onnx.save(_model([n], [_vi("hidden", TensorProto.FLOAT, ["rows", H])],
                     [_vi("logits", TensorProto.FLOAT, ["rows", V])], [w, s], extra_opsets=[("com.microsoft", 1)]),
              str(d / "lm_head.onnx"))
    return d


def test_cli_exit_codes(cli, one_error_line, tiny_bundle, bad_bundle, tmp_path):
    code, out, err = cli("lint-trt", tiny_bundle)
    assert code == 0 and out.strip().endswith(": ok"), (out, err)
    code, out, err = cli("lint-trt", bad_bundle)
    assert code == 1 and "lm_head: node 'lm_head_q4' (MatMulNBits)" in out
    assert "error:" in one_error_line(err)
    code, out, err = cli("lint-trt", tmp_path / "nope")
    assert code == 2 and "not found" in one_error_line(err) and out == ""
    (bad_bundle / "lm.onnx").write_bytes(b"not a protobuf at all")
    code, out, err = cli("lint-trt", bad_bundle)
    assert code == 2 and "lm.onnx" in one_error_line(err)


def test_ort_only_variants_are_skipped(bad_bundle, cli):
    m = json.loads((bad_bundle / "manifest.json").read_text())
    m["graphs"]["lm_head"]["target"] = "ort"
    (bad_bundle / "manifest.json").write_text(json.dumps(m))
    r = lint_bundle(str(bad_bundle))
    assert r.ok and r.skipped == ["lm_head"], [f.line() for f in r.findings]
    assert os.path.isfile(bad_bundle / "lm_head.onnx")


# ---- every quantized bundle kind (the quantization issue's bundles, made small here) -------------------------------
SMALL_CALIB = {"n_prompts": 2, "image_steps": 4, "n_chats": 1, "chat_tokens": 2, "text_file": None}
QUANT_KINDS = ["int8", "int4", "fp8"]  # int8: Gemm biases stay float (MatMul + Add), no INT32 DequantizeLinear


@pytest.mark.parametrize("mode", QUANT_KINDS)
def test_quantized_bundles_for_tensorrt_are_clean(mode, tiny_bundle, tmp_path):
    from janus_edge.quant import api

    kw = {"method": "rtn"} if mode == "int4" else {"extra": {"calib": SMALL_CALIB}}
    out = api.quantize_bundle(tiny_bundle, str(tmp_path / mode), api.QuantOptions(
        mode=mode, target="trt", report=False, progress=False, **kw))
    r = lint_bundle(out)
    assert r.ok, [f.line() for f in r.findings]
    dq = sum(1 for g in ("lm", "gen_head") for n in onnx.load(os.path.join(out, f"{g}.onnx")).graph.node
             if n.op_type == "DequantizeLinear")
    assert dq > 0  # the lint saw Q/DQ graphs, not a copy of the float bundle


def test_int4_blocks_tensorrt_does_not_take_are_refused_and_fp32_scales_warned():
    """TensorRT's INT4 blocks are 64 or 128 (export/trt_ops.py INT4_BLOCKS); FP32 scales make an FP32 weight-only
    GEMM, which the parser imports but TensorRT does not document: a warning."""
    lines, warnings = _lint(_int4_weight([256, 64], [8, 64]))  # block 32
    assert len(lines) == 1 and "'dq_w' (DequantizeLinear)" in lines[0] and "INT4 block size 32" in lines[0], lines
    lines, warnings = _lint(_int4_weight([256, 64], [4, 64]))  # block 64
    assert lines == [] and any("FP32 scales" in w and "fp16" in w for w in warnings), warnings


def test_trt_targets_refuse_int4_forms_tensorrt_does_not_build():
    api = pytest.importorskip("janus_edge.quant.api", reason="quantization not in this checkout")
    from janus_edge.errors import InputError
    from janus_edge.quant.int4 import TRT_BLOCKS, block_for

    assert block_for(96, 128) == 32 and block_for(96, 128, TRT_BLOCKS) is None  # kept float for TensorRT
    assert block_for(576, 128, TRT_BLOCKS) == 64 and block_for(5632, 128, TRT_BLOCKS) == 128
    with pytest.raises(InputError, match="blocks of 64 or 128"):
        api.check_options(api.QuantOptions(mode="int4", target="orin", block_size=32))
    api.check_options(api.QuantOptions(mode="int4", target="orin", block_size=64))
    # the 8-bit MatMuls of the mixed form are INT8 per output channel (TensorRT's weight-only int8): allowed
    api.check_options(api.QuantOptions(mode="int4", target="orin", int8_layers=("down", "/mlp/up_proj_3/MatMul")))
