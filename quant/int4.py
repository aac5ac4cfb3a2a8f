"""INT4 weight-only (W4A16): block-wise symmetric INT4 on the 2-D MatMul weights, in the QDQ form

    W_q (INT4 [K, N], constant) -> DequantizeLinear(axis=0, block_size=B, scale [K/B, N], no zero point) -> MatMul B

which TensorRT 10 builds (block dequant of a 2-D INT4 constant, zero point 0) and which ONNX Runtime's CPU optimizer
rewrites into `MatMulNBits` at load (QUANT_FACTS / GPU_FACTS). The form needs opset 21.

Why hand-written rather than `onnxruntime.quantization.matmul_nbits_quantizer` (QDQ, symmetric): that tool only does
round-to-nearest in the QDQ form (its GPTQ/HQQ/k-quant configs assert QOperator = MatMulNBits, a CPU-only
op TensorRT cannot parse), rewrites only the opset number, and holds the whole model in memory. What is kept from
it: the exact same graph form (checked by ORT fusing it). Methods (`--method`):

- `rtn`: scale = absmax / 7 per block (round to nearest, the stock tool's result).
- `clip`: per block, the scale r * absmax / 7 (r in a grid 1.0 .. 0.55) minimising the block's squared weight error.
- `awq-clip` (default when calibration statistics exist): the same search minimising the *output* error of a diagonal
  model, sum_k E[x_k^2] (w_k - q_k)^2, with E[x_k^2] the calibrated mean square of input channel k.
- `gptq`: GPTQ (Frantar et al. 2022) with the calibrated input Hessian X^T X, group scales chosen by the clip search
  as each group starts, errors propagated to the columns not yet quantized.

- `rot-clip`, `rot-awq-clip`, `rot-gptq`: on `lm`, first the residual-stream rotation folded into the weights
  (quant/rotate.py, QuaRot-style, exact in fp32; two float MatMuls by a constant at the graph's entry and exit), then
  the named method on the rotated weights (calibration statistics rotated with them); other graphs get the method.
- `gptq-ao`: GPTQ with act-order (columns in decreasing H_kk; block scales fixed up front: int4_weights.gptq).
- `rotvo-*`: the residual rotation plus a per-head rotation of v_proj's output / o_proj's input (folded, no graph op);
  `rotall-*`: both plus an online Hadamard on every down_proj input (plain float MatMuls by shared constants before
  it, its transpose folded into W_down). quant/rotate.py; exact in fp32 (tests).
- `awq`: true AWQ on `lm` (quant/awq.py): per-input-channel scales searched on the calibration samples and folded
  into the RMSNorm weights / up_proj columns, then `awq-clip`; other graphs get `awq-clip`.

Block size: the requested one (128) where it divides K, else the largest power of two >= 16 that divides K: hidden
576 (SmolLM2-135M) gets block 64 (576 = 9 x 64), no padding (padding K would change the activation's shape too).
Mixed precision: MatMuls listed in `opts.int8_layers` by kind (e.g. "down,up,v"), by node name
("/mlp/down_proj_3/MatMul") or "lm_head" get INT8 weights per output channel instead, DequantizeLinear(INT8 [K, N],
scale [N], axis 1) -> MatMul: the int8 mode's weight-only form, which TensorRT builds (weight-only int8) and ORT fuses
into an 8-bit MatMulNBits (block 32, the channel scale repeated; `--target ort` writes that node).

`--target ort` writes the ONNX-Runtime-only form instead: each weight MatMul becomes the `MatMulNBits` node
(com.microsoft) that ORT's fusion would make of the QDQ pair (the same unsigned codes q + 2^(bits-1) with the
implicit zero point, the same scales and block size, `accuracy_level` 4), so the same kernel runs on the same numbers
(tests check the outputs are equal). Why: ORT materialises the fused weight as a second in-memory copy next to its
prepacked one, while a MatMulNBits initializer read from external data is prepacked and released. Measured
(24 INT4 2048x5632 weights, 147 MB, onnxruntime 1.32): session RSS +324 MB for the QDQ form, +167 MB for this one.
The graph entry is marked `target: "ort"` (lint-trt / build / the TensorRT runtime skip or refuse it).
"""
from __future__ import annotations

import sys
import time

import numpy as np

from . import graphio
from .int4_weights import (  # noqa: F401 (re-exported: the int4 mode's public names)
    ALL_INT4_METHODS, CLIP_GRID, COLUMN_CHUNK, TRT_BLOCKS, TRT_TARGETS, _stats_for, block_for, clip_search, gptq,
    layer_of, quantize_weight, split_method)
from .rewrite import OPSET, gemms_to_matmul, to_opset21

def pack_int4(q: np.ndarray) -> bytes:
    """ONNX INT4 layout: element 2i in the low nibble, 2i+1 in the high nibble of byte i (row-major)."""
    flat = (q.reshape(-1).astype(np.int16) & 0xF).astype(np.uint8)
    if flat.size % 2:
        flat = np.append(flat, np.uint8(0))
    return (flat[0::2] | (flat[1::2] << 4)).tobytes()


# ---- the graph rewrite ---------------------------------------------------------------------------------------
def weight_matmuls(model) -> list:
    """(node, initializer) of every MatMul whose B is a 2-D constant used by that node alone."""
    inits = graphio.initializers(model)
    uses: dict[str, int] = {}
    for n in model.graph.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    out = []
    for n in model.graph.node:
        if n.op_type == "MatMul" and n.input[1] in inits and len(inits[n.input[1]].dims) == 2 \
                and uses[n.input[1]] == 1:
            out.append((n, inits[n.input[1]]))
    return out


def dq_weight(model, node, t, q: np.ndarray, scales: np.ndarray, block: int, bits: int) -> None:
    """Replace MatMul B = t with DequantizeLinear(INT4/INT8 q, scales, axis 0, block_size) in place."""
    from onnx import TensorProto, helper, numpy_helper

    K, N = q.shape
    base = t.name
    qtype = TensorProto.INT4 if bits == 4 else TensorProto.INT8
    raw = pack_int4(q) if bits == 4 else q.astype(np.int8).tobytes()
    qt = helper.make_tensor(base + f"_q{bits}", qtype, [K, N], raw, raw=True)
    st = numpy_helper.from_array(scales.astype(graphio.np_dtype(t.data_type)), base + "_scale")  # the MatMul's dtype
    model.graph.initializer.remove(t)
    model.graph.initializer.extend([graphio.put(qt), graphio.put(st)])
    dq_out = base + "_dq"
    dq = helper.make_node("DequantizeLinear", [qt.name, st.name], [dq_out], name=node.name + "_DQ", axis=0,
                          block_size=block)
    idx = list(model.graph.node).index(node)
    model.graph.node.insert(idx, dq)
    node.input[1] = dq_out


def channel_int8(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric INT8 per output channel (axis 1 of [K, N]): -> (q [K, N] int8, scales [N] float32)."""
    s = np.abs(w.astype(np.float32)).max(0) / 127.0
    s = np.where(s > 0, s, 1.0).astype(np.float32)
    return np.clip(np.rint(w / s), -127, 127).astype(np.int8), s


def dq_channel(model, node, t, q: np.ndarray, scales: np.ndarray) -> None:
    """Replace MatMul B = t with DequantizeLinear(INT8 q [K, N], scales [N], axis 1) in place: the int8 mode's
    weight-only form (TensorRT: weight-only int8; ORT fuses it into an 8-bit MatMulNBits)."""
    from onnx import helper, numpy_helper

    base = t.name
    qt = numpy_helper.from_array(q.astype(np.int8), base + "_q8")
    st = numpy_helper.from_array(scales.astype(graphio.np_dtype(t.data_type)), base + "_scale")
    model.graph.initializer.remove(t)
    model.graph.initializer.extend([graphio.put(qt), graphio.put(st)])
    dq = helper.make_node("DequantizeLinear", [qt.name, st.name], [base + "_dq"], name=node.name + "_DQ", axis=1)
    idx = list(model.graph.node).index(node)
    model.graph.node.insert(idx, dq)
    node.input[1] = base + "_dq"


def nbits_weight(model, node, t, q: np.ndarray, scales: np.ndarray, block: int, bits: int) -> None:
    """Replace MatMul(A, B = t) with com.microsoft MatMulNBits(A, packed codes, scales) in place: B [N, K/block,
    block*bits/8] uint8 holds q + 2^(bits-1) column by column (element 2i in the low nibble for 4 bits), scales
    [N * K/block]; no zero-point input (its default is 2^(bits-1)), so the dequantized weight is q * scale."""
    from onnx import helper, numpy_helper

    K, N = q.shape
    u = (q.T.astype(np.int16) + (1 << (bits - 1))).astype(np.uint8).reshape(N, K // block, block)
    packed = (u[..., 0::2] | (u[..., 1::2] << 4)) if bits == 4 else u
    base = t.name
    bt = numpy_helper.from_array(np.ascontiguousarray(packed), base + f"_nbits{bits}")
    st = numpy_helper.from_array(np.ascontiguousarray(scales.T.astype(graphio.np_dtype(t.data_type))).reshape(-1),
                                 base + "_scale")  # T1 of MatMulNBits: the activation dtype (fp16 bundles: fp16)
    model.graph.initializer.remove(t)
    model.graph.initializer.extend([graphio.put(bt), graphio.put(st)])
    new = helper.make_node("MatMulNBits", [node.input[0], bt.name, st.name], list(node.output), name=node.name,
                           domain="com.microsoft", K=K, N=N, bits=bits, block_size=block, accuracy_level=4)
    idx = list(model.graph.node).index(node)
    model.graph.node.remove(node)
    model.graph.node.insert(idx, new)


def _ms_opset(model) -> None:
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        from onnx import helper

        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))


def quantize_int4(model, graph: str, calib, opts) -> tuple[object, dict]:
    """The int4 mode function (quant API contract): -> (model, manifest `quantization` entry)."""
    t0 = time.time()
    method = opts.method or ("awq-clip" if calib is not None else "clip")
    if method not in INT4_METHODS:
        raise ValueError(f"unknown int4 method {method!r}")
    gemms_to_matmul(model)  # the one Gemm -> MatMul (+ float bias Add) rewrite, shared with int8/fp8
    model = to_opset21(model)
    prefix, base = split_method(method)
    rots, scaled, extra_rot = {}, {}, {}
    if prefix and graph == "lm":
        seed = int((getattr(opts, "extra", None) or {}).get("int4", {}).get("seed", 0))
        rots, extra_rot = _rotate(model, prefix, seed)
    if method == "awq":
        base = "awq-clip"
        if graph == "lm" and calib is not None:
            from .awq import apply_awq

            scaled = apply_awq(model, calib, graph, opts.block_size)
    int8_kinds = set(getattr(opts, "int8_layers", ()) or ())
    ort_form = getattr(opts, "target", "any") == "ort"  # MatMulNBits (ORT only) instead of DQ -> MatMul
    write = nbits_weight if ort_form else dq_weight
    trt_form = getattr(opts, "target", "any") in TRT_TARGETS  # block sizes TensorRT takes only
    kept, counts, blocks = [], {"int4": 0, "int8": 0}, set()
    pairs = weight_matmuls(model)
    for i, (node, t) in enumerate(pairs):
        if node.name.startswith("/rotate_"):  # the rotation's entry / exit MatMuls stay float
            kept.append(node.name)
            continue
        w = graphio.array(t)
        block = block_for(w.shape[0], opts.block_size, TRT_BLOCKS if trt_form else None)
        if block is None or w.dtype not in (np.float32, np.float16):
            kept.append(node.name)
            continue
        kind, _ = layer_of(node.name)
        if kind in int8_kinds or node.name in int8_kinds or (graph == "lm_head" and "lm_head" in int8_kinds):
            q, s = channel_int8(w)  # INT8 weight-only per output channel: TensorRT's weight-only int8 form too
            if ort_form:  # ORT's fusion of it: an 8-bit MatMulNBits in blocks of 32, the channel scale repeated
                b8 = block_for(w.shape[0], 32) or block
                nbits_weight(model, node, t, q, np.repeat(s[None, :], w.shape[0] // b8, 0), b8, 8)
            else:
                dq_channel(model, node, t, q, s)
            counts["int8"] += 1
            continue
        bits = 4
        stats = _stats_for(calib, graph, node.input[0])
        if node.input[0] in rots:
            from .rotate import rotate_stats

            stats = rotate_stats(stats, rots[node.input[0]])
        elif node.input[0] in extra_rot:  # o_proj (per-head) / down_proj (online) inputs: the rotated statistics
            act, fn, M = extra_rot[node.input[0]]
            stats = fn(_stats_for(calib, graph, act), M)
        if node.input[0] in scaled:
            from .awq import scale_stats

            stats = scale_stats(stats, scaled[node.input[0]])
        q, s = quantize_weight(w, block, bits, base if stats or base in ("rtn", "clip") else "clip", stats)
        write(model, node, t, q, s, block, bits)
        counts[f"int{bits}"] += 1
        blocks.add(block)
        if getattr(opts, "progress", False) and (i % 16 == 15 or i == len(pairs) - 1):
            print(f"  {graph}: {i + 1}/{len(pairs)} weights ({time.time() - t0:.0f}s)", file=sys.stderr, flush=True)
    if ort_form and counts["int4"] + counts["int8"]:
        _ms_opset(model)
    form = ("com.microsoft MatMulNBits (ONNX Runtime only), accuracy_level 4" if ort_form else
            "QDQ DequantizeLinear(axis=0, block_size) -> MatMul")
    entry = {"mode": "int4", "scheme": "W4A16", "format": form,
             "weights": "int4 symmetric block-wise (zero point 0)", "activations": "float (unquantized)",
             "block_size": opts.block_size, "method": method, "opset": OPSET, "matmuls_int4": counts["int4"],
             "matmuls_int8": counts["int8"], "int8_layers": sorted(int8_kinds), "kept_float": kept,
             "blocks_used": sorted(blocks), **({"target": "ort"} if ort_form else {}),
             **({"rotation": {**rots["info"], **extra_rot.get("info", {})}} if rots else {}),
             **({"awq": scaled["info"]} if scaled else {}),
             "seconds": round(time.time() - t0, 1)}
    return model, entry


def _rotate(model, prefix: str, seed: int) -> tuple[dict, dict]:
    """The rotations a method prefix names (int4_weights.ROT_PREFIXES), folded into `model` (the lm graph):
    -> (rotate_lm's result, {new input name: (calibrated activation name, stats transform, matrix)} + "info")."""
    from . import rotate as R

    rots = R.rotate_lm(model, seed=seed)
    extra, info = {}, {}
    if prefix in ("rotvo-", "rotall-"):
        h = R.rotate_heads(model, seed=seed)
        info["heads"] = h["info"]
        for n in model.graph.node:
            if n.op_type == "MatMul" and layer_of(n.name)[0] == "o":
                extra[n.input[0]] = (n.input[0], R.rotate_stats_o, h["R"])
    if prefix == "rotall-":
        old = {n.name: n.input[0] for n in model.graph.node if layer_of(n.name)[0] == "down"}
        d = R.online_down(model, seed=seed)
        info["online_down"] = d["info"]
        for n in model.graph.node:
            if n.name in old:
                extra[n.input[0]] = (old[n.name], R.rotate_stats_down, d["D"])
    extra["info"] = info
    return rots, extra


INT4_METHODS = ALL_INT4_METHODS
