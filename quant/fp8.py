"""FP8 (E4M3, FLOAT8E4M3FN) weights and activations in the QDQ form, with calibrated scales.

The same rewrite as int8.py (quantize_qdq): weights per output channel, scale = absmax / 448; activations per tensor,
static, calibrated (absmax after SmoothQuant alpha 0.8 by default); zero points FLOAT8E4M3FN 0. FLOAT8 Q/DQ needs
opset >= 19: the graph is converted to opset 21 (onnx.version_converter, as int4 does). The default keeps every
down_proj and lm_head as int8 weight-only (int8.py `keep_as`): E4M3 weights alone cost +5.1% perplexity on the
trained LM (3 mantissa bits), so the kept, most sensitive MatMuls take the finer int8 weights.

Where it runs: TensorRT builds FP8 Q/DQ on compute capability >= 8.9 (Ada, Hopper, Thor); Orin (8.7) cannot, and
`quantize --target orin` refuses fp8. ONNX Runtime's CPU has FP8 QuantizeLinear/DequantizeLinear kernels but no FP8
MatMul: it runs the graph as Q -> DQ -> fp32 MatMul on dequantized weights (checked: the optimized graph keeps
DequantizeLinear + MatMul), i.e. exactly the FP8 rounding at fp32 speed plus the dequantization of every weight on
every call: for the accuracy report only, slower than the fp32 bundle.
"""
from __future__ import annotations

from .int8 import Scheme, config_from, quantize_qdq
from .rewrite import to_opset21

E4M3_MAX = 448.0
CPU_NOTE = ("ONNX Runtime CPU: FP8 Q/DQ kernels, no FP8 MatMul: runs as DequantizeLinear + fp32 MatMul "
            "(accuracy only, slower than fp32); TensorRT: compute capability >= 8.9 (not Orin)")


def fp8_scheme() -> Scheme:
    from onnx import TensorProto

    return Scheme("fp8", E4M3_MAX, TensorProto.FLOAT8E4M3FN)


def quantize_fp8(model, graph: str, calib, opts) -> tuple[object, dict]:
    """The fp8 mode function (quant API contract): -> (model at opset 21, manifest `quantization` entry)."""
    config_from(opts, "fp8")  # validate the knobs before the (slow) opset conversion
    model = to_opset21(model)
    model, q = quantize_qdq(model, graph, calib, opts, fp8_scheme(), E4M3_MAX, "fp8")
    q["format"] = "FLOAT8E4M3FN"
    q["opset"] = 21
    q["runs_on"] = CPU_NOTE
    if q["matmuls_weight_only"]:  # kept MatMuls, int8 weight-only: ORT's 8-bit MatMulNBits on fp32 activations
        from .int8 import ORT_WEIGHT_ONLY

        q["weight_only_on_ort_cpu"] = f"MatMulNBits 8-bit, {ORT_WEIGHT_ONLY}"
    return model, q
