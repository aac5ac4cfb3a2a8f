"""INT8 W8A8 in the static QDQ form (and the shared machinery of fp8.py).

Graph form, per weight MatMul (a weight Gemm is first rewritten into MatMul(A, B^T as [K, N]) + Add(float bias):
one form that TensorRT parses and ORT fuses, see gemms_to_matmul):

    x -> [Mul(1/s) where smoothing cannot fold] -> QuantizeLinear(scale_x, zp 0 int8) -> DequantizeLinear -> MatMul A
    W' = diag(s) W  (int8 [K, N] constant) -> DequantizeLinear(axis 1 = the N output channels, scales [N], zp 0) -> B

Weights per output channel, symmetric; activations per tensor, static (calibrated), symmetric (zero point 0): what
TensorRT 10 builds and what ONNX Runtime's CPU optimizer fuses into `MatMulIntegerToFloat` (checked in
tests/test_quant_accuracy.py with SessionOptions.optimized_model_filepath). One Q + DQ per
consumer, each with its own scale initializers (ORT fuses only a Q -> DQ -> MatMul chain of single consumers).

Measured here (2-core AVX2 EPYC without VNNI, onnxruntime 1.32): ORT's x86 u8s8 kernel sums pairs of u8*s8
products in int16 (vpmaddubsw) and saturates on full-range int8 weights (-127..127): an 11% relative output error
on a random 256x512 MatMul against the exact integer result. The session option `session.x64quantprecision = 1`
makes it exact for ~5% time; the alternative is 7-bit weights (`weight_qmax` 63, ORT's own `reduce_range`).
The bundle records `ort_session_config` in its quantization entry; the runtime's ORT backend must set it.

Accuracy work (QUANT_FACTS: per-tensor static A8 on a trained LM is +118% perplexity plain):
- SmoothQuant (Xiao et al. 2022): s_k = max|x_k|^a / max|W_k,:|^(1-a) per input channel, x' = x / s, W' = diag(s) W.
  1/s is folded into the producer where exact: the RMSNorm weight (q/k/v, gate/up inputs), the up_proj output
  columns (down_proj input = silu(gate) * up); elsewhere (o_proj input) a Mul is inserted. Alpha 0.8 by default;
  `smooth="auto"` searches it per activation tensor (grid incl. "off") for the least quantized output error on
  calibration rows, which measured worse end to end on the trained LM (the per-MatMul error is a poor proxy).
- Activation scale: calibrators `minmax` (default), `percentile` (99.99), `entropy` (onnxruntime.quantization's
  HistogramCollector over the calibration rows) or `mse` (clip ratio searched for the least output error of
  the quantized MatMuls on calibration rows, hand-written).
- Mixed precision: the `keep_float` MatMuls keep their activation unquantized: named (kinds `down`, layers `down:3`,
  node names, a graph name such as `lm_head`) or the N most sensitive by the measured per-MatMul error (the table
  recorded in the manifest entry and the report). `keep_as="int8"` (default) makes them int8 *weight-only* (W8A16:
  the same weight bytes as W8A8; ORT fuses it into an 8-bit MatMulNBits, TensorRT builds it as weight-only int8),
  `"float"` keeps float weights. A group whose consumers are all kept is not smoothed: smoothing only moves its
  activation outliers into the weights (on the trained LM, W8A16 everywhere: +3.5% / 88.8% with alpha 0.8, -0.3% /
  95.6% unsmoothed, calibration text). Default (int8 and fp8): every down_proj and lm_head kept
  (benchmarks/results/smollm2_quant.md: the measured table, per kind and per kept layer).

What onnxruntime.quantization is used for: the entropy calibrator (HistogramCollector). What is hand-written and why:
the Q/DQ insertion (quantize_static re-runs its own calibration through a CalibrationDataReader, i.e. it would need
every step's full KV-cache feeds stored, holds the whole model in memory and puts per-channel scales on the wrong
MatMul axis unless told), SmoothQuant (ORT's needs neural-compressor) and the scale searches.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

import numpy as np

from . import graphio
from .rewrite import attr, gemms_to_matmul, insert_before, replace_init, to_opset21

ORT_SESSION_CONFIG = {"session.x64quantprecision": "1"}
# Graphs with a rewritten Gemm (MatMul + float bias Add): ORT's MatMulAddFusion would turn the QDQ MatMul + Add back
# into a float Gemm on dequantized weights before its QDQ fusion sees it (measured, onnxruntime 1.32); with it off the
# MatMul becomes MatMulIntegerToFloat and the Add stays float (or fuses into BiasGelu).
ORT_NO_MATMUL_ADD = {"optimization.disable_specified_optimizers": "MatMulAddFusion"}
# Kept (weight-only int8) MatMuls: ORT fuses DQ(int8, axis 1) + MatMul into an 8-bit MatMulNBits (block 32). Its
# accuracy level 4 (recorded, ORT's default) quantizes the activation to int8 on the fly per row and block of 32
# channels, so an outlier channel spoils only its block (1.2% output error with a 100x outlier channel, measured;
# per-token scales: 8.6%); level 1 (fp32 activations) runs 46x slower than level 4 here (288 vs 6.2 ms for a
# 5632x2048 weight at 2 rows; fp32 MatMul 7.7 ms, W8A8 MatMulIntegerToFloat 4.8 ms). TensorRT: weight-only int8.
# The runtime's ORT backend sets level 4 for every graph (runtime/ort_backend.py); the manifest entry records it
# (`weight_only_on_ort_cpu`) rather than asking for it again (ORT warns on every session about a repeated entry).
ORT_WEIGHT_ONLY = {"session.qdq_matmulnbits_accuracy_level": "4"}
ALPHAS = (None, 0.5, 0.6, 0.7, 0.8, 0.9)  # None: no smoothing
CLIPS = (1.0, 0.8, 0.65, 0.5, 0.35)
_KIND = re.compile(r"/(?:mlp/)?(q|k|v|o|gate|up|down)_proj(?:_(\d+))?/MatMul$")


def layer_of(node_name: str) -> tuple[str | None, int | None]:
    m = _KIND.search(node_name)
    return (m.group(1), int(m.group(2) or 0)) if m else (None, None)


# ---- number formats -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Scheme:
    name: str  # int8 | fp8
    qmax: float  # largest code magnitude (127, or 448 for E4M3)
    onnx_type: int  # TensorProto data type

    def fake(self, x: np.ndarray, scale) -> np.ndarray:
        """Quantize-dequantize (round to nearest even, saturate)."""
        if self.name == "fp8":
            import ml_dtypes

            y = np.clip(x / scale, -self.qmax, self.qmax).astype(ml_dtypes.float8_e4m3fn)
            return y.astype(np.float32) * scale
        return np.clip(np.rint(x / scale), -self.qmax, self.qmax) * scale

    def encode(self, x: np.ndarray, scale) -> np.ndarray:
        if self.name == "fp8":
            import ml_dtypes

            return np.clip(x / scale, -self.qmax, self.qmax).astype(ml_dtypes.float8_e4m3fn)
        return np.clip(np.rint(x / scale), -self.qmax, self.qmax).astype(np.int8)


def int8_scheme(weight_qmax: int = 127) -> Scheme:
    from onnx import TensorProto

    return Scheme("int8", float(weight_qmax), TensorProto.INT8)


# ---- options ----------------------------------------------------------------------------------------------------
@dataclass
class QdqConfig:
    smooth: str | float = 0.8  # a fixed alpha | "auto" (searched per tensor, incl. off: measured worse) | "off"
    # Defaults = the best measured on the trained-LM model (benchmarks/results/smollm2_quant.md): clipping
    # activations (mse) lowers each MatMul's error on calibration rows but loses the rare outlier tokens.
    calibrator: str = "minmax"  # minmax | mse | percentile | entropy
    percentile: float = 99.99
    # the N most sensitive MatMuls stay float (a float < 1: that fraction of them; 0.075 = 16 of SmolLM2's 211),
    # or names (kinds "down", "kind:layer" "down:3", node names)
    keep_float: int | float | tuple = 0.075
    # what a kept MatMul becomes: "int8" = int8 weight-only (W8A16: per-channel int8 weight DQ + MatMul on the float
    # activation: ORT's 8-bit MatMulNBits, TensorRT's weight-only quantization), "weights" = weight-only in the
    # mode's own format (fp8: E4M3 weights, +5.1% / 88% alone on the trained LM), or "float" (fp weights). A group
    # whose consumers are all kept is not smoothed (its activation is never quantized; smoothing would only move
    # the activation outliers into the weights: +3.5% / 88.8% with W8A16 everywhere at alpha 0.8 on the trained LM,
    # -0.3% / 95.6% unsmoothed, calibration text).
    keep_as: str = "int8"
    smooth_kept: bool = False  # True: smooth a wholly kept group anyway (measured worse; for the report's comparison)
    weight_qmax: int = 127  # 63 = ORT's reduce_range (7-bit weights, exact on AVX2 without the session option)
    search_rows: int = 128  # calibration rows used by the searches
    search_cols: int = 1024  # output channels (of all consumers) the search errors are measured on
    extra: dict = field(default_factory=dict)


# Per-mode defaults, measured on the trained LM (benchmarks/results/smollm2_quant.md, 2,257 held-out tokens): every
# down_proj and lm_head kept int8 weight-only (unsmoothed), the rest W8A8 (int8) or FP8 with SmoothQuant alpha 0.8.
MODE_DEFAULTS = {"int8": {"smooth": 0.8, "calibrator": "minmax", "keep_float": ("down", "lm_head")},
                 "fp8": {"smooth": 0.8, "calibrator": "minmax", "keep_float": ("down", "lm_head")}}


def config_from(opts, mode: str) -> QdqConfig:
    """QuantOptions -> QdqConfig: MODE_DEFAULTS[mode] overridden by opts.extra[mode] (e.g. {'keep_float': 0}).
    keep_float: an int N keeps the N most sensitive MatMuls *of each graph* float, a float < 1 that fraction of
    them, a list names them (kinds "down", "down:3", node names)."""
    d = dict(getattr(opts, "extra", {}) or {}).get(mode, {}) if opts is not None else {}
    d = {**MODE_DEFAULTS.get(mode, {}), **d}
    cfg = QdqConfig(**{k: v for k, v in d.items() if k in QdqConfig.__dataclass_fields__})
    if isinstance(cfg.keep_float, list):
        cfg.keep_float = tuple(cfg.keep_float)
    if cfg.calibrator not in ("mse", "minmax", "percentile", "entropy"):
        raise ValueError(f"unknown calibrator {cfg.calibrator!r}")
    if cfg.keep_as not in ("int8", "weights", "float"):
        raise ValueError(f"unknown keep_as {cfg.keep_as!r} (int8 | weights | float)")
    return cfg


# ---- graph helpers ----------------------------------------------------------------------------------------------
def weight_groups(model) -> dict[str, list]:
    """activation tensor -> [(MatMul node, weight initializer)] for MatMuls with a 2-D constant B used once."""
    inits = graphio.initializers(model)
    uses: dict[str, int] = {}
    for n in model.graph.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    groups: dict[str, list] = {}
    for n in model.graph.node:
        ok = n.op_type == "MatMul" or (n.op_type == "Gemm" and attr(n, "transA", 0) == 0
                                        and attr(n, "alpha", 1.0) == 1.0 and attr(n, "beta", 1.0) == 1.0)
        if ok and n.input[1] in inits and len(inits[n.input[1]].dims) == 2 and uses[n.input[1]] == 1:
            groups.setdefault(n.input[0], []).append((n, inits[n.input[1]]))
    return groups


def out_axis(node) -> int:
    """The output-channel axis of a weight as stored: 1 for MatMul B [K, N]; 0 for Gemm with transB ([N, K])."""
    return 0 if node.op_type == "Gemm" and attr(node, "transB", 0) else 1


def as_kn(node, w: np.ndarray) -> np.ndarray:
    return w.T if out_axis(node) == 0 else w


def _producers(model) -> dict:
    return {o: n for n in model.graph.node for o in n.output}


def _consumers(model) -> dict:
    c: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            c.setdefault(i, []).append(n)
    return c


def fold_plan(model, act: str, group_nodes: list, groups: dict) -> tuple[str, str | None]:
    """Where 1/s of a smoothed activation goes: ('norm', init name) | ('cols', weight name) | ('mul', None)."""
    inits, prod, cons = graphio.initializers(model), _producers(model), _consumers(model)
    p = prod.get(act)
    names = {n.name for n in group_nodes}  # other consumers may only read the shape
    only_group = all(n.name in names or n.op_type == "Shape" for n in cons.get(act, []))
    if p is None or p.op_type != "Mul" or not only_group:
        return "mul", None
    for i in p.input:  # the RMSNorm weight: a 1-D constant (copied for this Mul where shared or an Identity of one)
        src = prod[i].input[0] if i in prod and prod[i].op_type == "Identity" else i
        if src in inits and len(inits[src].dims) == 1:
            return "norm", i
    weight_of = {n.output[0]: t.name for nodes in groups.values() for n, t in nodes}
    for i in p.input:  # silu(gate) * up: scale up_proj's output columns
        if i in weight_of and len(cons.get(i, [])) == 1:
            return "cols", weight_of[i]
    return "mul", None


# ---- the searches -----------------------------------------------------------------------------------------------
def _smooth_vec(x_absmax: np.ndarray, w_absmax: np.ndarray, alpha: float | None) -> np.ndarray:
    if alpha is None:
        return np.ones_like(x_absmax)
    s = np.power(np.maximum(x_absmax, 1e-5), alpha) / np.power(np.maximum(w_absmax, 1e-5), 1 - alpha)
    return np.clip(s, 1e-4, 1e4).astype(np.float32)


def weight_fake(w: np.ndarray, scheme: Scheme) -> np.ndarray:
    s = np.maximum(np.abs(w).max(0), 1e-12) / scheme.qmax  # per output channel (axis 1 of [K, N])
    return scheme.fake(w, s).astype(np.float32)


def act_scale(x_s: np.ndarray, absmax: float, ws_fq: list, refs: list, scheme: Scheme, cfg: QdqConfig,
              act_qmax: float) -> tuple[float, float]:
    """(scale, error) of the activation for the calibrator; x_s: smoothed sample rows."""
    def err(scale: float) -> float:
        xq = scheme.fake(x_s, scale)
        return float(sum(np.sum((xq @ w - r) ** 2) / max(np.sum(r ** 2), 1e-20) for w, r in zip(ws_fq, refs)))

    if cfg.calibrator == "minmax":
        s = absmax / act_qmax
    elif cfg.calibrator in ("percentile", "entropy"):
        s = ort_histogram_threshold(x_s, cfg.calibrator, cfg.percentile) / act_qmax
    else:
        best = min(((err(r * absmax / act_qmax), r) for r in CLIPS))
        return r_scale(best[1], absmax, act_qmax), best[0]
    s = max(s, 1e-12)
    return s, err(s)


def ort_histogram_threshold(x: np.ndarray, method: str, percentile: float) -> float:
    """|threshold| from onnxruntime.quantization's HistogramCollector (entropy or percentile) over these rows."""
    import contextlib
    import io

    from onnxruntime.quantization.calibrate import HistogramCollector

    hc = HistogramCollector(method, symmetric=True, num_bins=2048, num_quantized_bins=128, percentile=percentile,
                            scenario="same")
    with contextlib.redirect_stdout(io.StringIO()):  # it prints progress lines
        hc.collect({"x": [np.asarray(x, np.float32)]})
        r = hc.compute_collection_result()["x"]
    lo, hi = (r[0], r[1]) if isinstance(r, tuple) else r.range_value
    return max(abs(float(lo)), abs(float(hi)))


def r_scale(r: float, absmax: float, qmax: float) -> float:
    return max(r * absmax / qmax, 1e-12)


@dataclass
class GroupPlan:
    act: str
    nodes: list  # MatMul nodes
    weights: list  # initializer names
    s: np.ndarray | None  # smoothing vector (None: none)
    alpha: float | None
    scale: float  # activation scale (after smoothing)
    error: float  # sum over consumers of the relative squared output error on calibration rows
    per_node: dict  # node name -> relative error
    fold: tuple = ("mul", None)


_MEMO: dict = {}  # searches already done in this process (variants that differ only in keep_float reuse them)


def plan_group(model, act: str, nodes: list, stats, scheme: Scheme, cfg: QdqConfig, act_qmax: float,
               rng: np.random.Generator) -> GroupPlan:
    key = (act, tuple(t.name for _, t in nodes), scheme, str(cfg.smooth), cfg.calibrator, cfg.percentile,
           cfg.search_rows, cfg.search_cols, stats.count, float(np.sum(stats.absmax_ch)), float(np.sum(stats.samples[:4])))
    if key not in _MEMO:
        p = _search_group(model, act, nodes, stats, scheme, cfg, act_qmax, rng)
        _MEMO[key] = (p.s, p.alpha, p.scale, p.error, p.per_node)
    s, a, scale, e, per = _MEMO[key]
    return GroupPlan(act, [n for n, _ in nodes], [t.name for _, t in nodes], s, a, scale, e, dict(per))


def _search_group(model, act: str, nodes: list, stats, scheme: Scheme, cfg: QdqConfig, act_qmax: float,
                  rng: np.random.Generator) -> GroupPlan:
    ws = [as_kn(n, graphio.array(t).astype(np.float32)) for n, t in nodes]
    x_absmax = np.asarray(stats.absmax_ch, np.float32)
    x = np.asarray(stats.samples, np.float32)
    if len(x) > cfg.search_rows:
        x = x[rng.choice(len(x), cfg.search_rows, replace=False)]
    w_absmax = np.max([np.abs(w).max(1) for w in ws], axis=0)  # smoothing sees every column
    total = sum(w.shape[1] for w in ws)
    if total > cfg.search_cols:  # errors on a random subset of output channels (lm_head: 49k columns)
        ws = [w[:, np.sort(rng.choice(w.shape[1], max(1, w.shape[1] * cfg.search_cols // total), replace=False))]
              for w in ws]
    refs = [x @ w for w in ws]
    if cfg.smooth == "auto":
        alphas = ALPHAS
    elif cfg.smooth in ("off", None):
        alphas = (None,)
    else:
        alphas = (float(cfg.smooth),)
    best = None
    for a in alphas:
        s = _smooth_vec(x_absmax, w_absmax, a)
        ws_fq = [weight_fake(w * s[:, None], scheme) for w in ws]
        scale, e = act_scale(x / s, float((x_absmax / s).max()), ws_fq, refs, scheme, cfg, act_qmax)
        if best is None or e < best[0]:
            best = (e, a, s, scale, ws_fq)
    e, a, s, scale, ws_fq = best
    xq = scheme.fake(x / s, scale)
    per = {n.name: float(np.sum((xq @ w - r) ** 2) / max(np.sum(r ** 2), 1e-20))
           for (n, _), w, r in zip(nodes, ws_fq, refs)}
    return GroupPlan(act, [n for n, _ in nodes], [t.name for _, t in nodes], None if a is None else s, a, scale, e,
                     per)


def choose_keep(plans: list[GroupPlan], keep, graph: str | None = None) -> set[str]:
    """Node names kept (activation not quantized): the `keep` most sensitive (int), or those matching names / kinds /
    kind:layer / `graph:node` / a graph name (all of that graph's MatMuls)."""
    if isinstance(keep, (int, float)):
        ranked = sorted(((e, n) for p in plans for n, e in p.per_node.items()), reverse=True)
        k = int(keep) if isinstance(keep, int) or keep >= 1 else int(round(keep * len(ranked)))
        return {n for _, n in ranked[:k]}
    want = set(keep)
    out = set()
    for p in plans:
        for n in p.nodes:
            kind, layer = layer_of(n.name)
            if n.name in want or kind in want or f"{kind}:{layer}" in want or graph in want or \
                    f"{graph}:{n.name}" in want:
                out.add(n.name)
    return out


# ---- the rewrite ------------------------------------------------------------------------------------------------
def _const(model, name: str, arr: np.ndarray):
    from onnx import numpy_helper

    t = graphio.put(numpy_helper.from_array(arr, name))
    model.graph.initializer.append(t)
    return t


def scale_in(dtype, s: np.ndarray) -> np.ndarray:
    """Scales as the graph will hold them: in its float dtype (an fp16 bundle's Q/DQ scales must be fp16, the type
    of the tensors they meet), rounded up where that dtype rounds down (a smaller scale would clip the top code), and
    never 0. Returned as float32 values for the encoding, which then matches what the graph dequantizes with."""
    s = np.asarray(s, np.float32)
    if np.dtype(dtype) == np.float32:
        return s
    r = s.astype(dtype)
    r = np.where(r.astype(np.float32) < s, np.nextafter(r, np.array(np.inf, dtype)), r)
    r = np.maximum(r, np.array(np.finfo(dtype).smallest_subnormal, dtype))
    return r.astype(np.float32)


def apply_plans(model, plans: list[GroupPlan], keep: set[str], scheme: Scheme, act_qmax: float,
                keep_as: str = "float") -> dict:
    """Fold the smoothing, write quantized weights and the Q/DQ nodes (kept MatMuls: weights only, or float).
    Returns counts."""
    from onnx import helper

    inits = graphio.initializers(model)
    col_div: dict[str, np.ndarray] = {}  # weight name -> divide its output columns by this (folded smoothing)
    for p in plans:
        if p.s is None:
            continue
        kind, target = p.fold
        if kind == "norm":
            prod = _producers(model)
            src = prod[target].input[0] if target in prod else target  # through an Identity (tied weights)
            t = inits[src]
            new = _const(model, p.act + "_norm_w",
                         (graphio.array(t).astype(np.float32) / p.s).astype(graphio.np_dtype(t.data_type)))
            mul = prod[p.act]
            mul.input[list(mul.input).index(target)] = new.name
        elif kind == "cols":
            col_div[target] = p.s
        else:
            inv = _const(model, p.act + "_smooth_inv", (1.0 / p.s).astype(_float_dtype(inits, p)))
            out = p.act + "_smoothed"
            insert_before(model, p.nodes[0], [helper.make_node("Mul", [p.act, inv.name], [out], name=out + "_Mul")])
            for n in p.nodes:
                n.input[0] = out
    counts = {"quantized": 0, "float": 0, "weight_only": 0}
    inits = graphio.initializers(model)
    zq = scheme.onnx_type
    for p in plans:
        act_in = p.nodes[0].input[0]  # after a smoothing Mul this is the smoothed tensor
        fdt = _float_dtype(inits, p)  # the graph's float dtype where these MatMuls run (fp16 bundles: fp16)
        qnodes = [n for n in p.nodes if n.name not in keep]
        qnames = {n.name for n in qnodes}
        for n, wname in zip(p.nodes, p.weights):
            t = inits[wname]
            w = as_kn(n, graphio.array(t).astype(np.float32))  # [K, N]
            if p.s is not None:
                w = w * p.s[:, None]
            if wname in col_div:
                w = w / col_div[wname][None, :]
            if n.name not in qnames and keep_as == "float":
                if p.s is not None or wname in col_div:
                    replace_init(model, t, as_kn(n, w))
                counts["float"] += 1
                continue
            sch = scheme if n.name in qnames or keep_as == "weights" else int8_scheme()
            ws = scale_in(fdt, np.maximum(np.abs(w).max(0), 1e-12) / sch.qmax)
            q = np.ascontiguousarray(as_kn(n, sch.encode(w, ws)))  # stored as the node reads it
            qt = helper.make_tensor(wname + "_q", sch.onnx_type, list(q.shape), q.tobytes(), raw=True)
            model.graph.initializer.remove(t)
            model.graph.initializer.append(graphio.put(qt))
            st = _const(model, wname + "_scale", ws.astype(fdt))
            zt = _const_zero(model, wname + "_zp", sch.onnx_type, [len(ws)])
            dq = helper.make_node("DequantizeLinear", [qt.name, st.name, zt], [wname + "_dq"], name=n.name + "_wDQ",
                                  axis=out_axis(n))
            insert_before(model, n, [dq])
            n.input[1] = wname + "_dq"
            counts["quantized" if n.name in qnames else "weight_only"] += 1
        if not qnodes:
            continue
        # One Q + DQ per consumer, each with its own scale / zero-point initializers (same values): ORT fuses a
        # Q -> DQ -> MatMul chain into MatMulIntegerToFloat only where the Q output has that one consumer, and its
        # common-subexpression pass would merge Q nodes that share their initializers (measured, onnxruntime 1.32).
        for k, n in enumerate(qnodes):
            base = f"{act_in}_{k}"
            sc = _const(model, base + "_qscale", scale_in(fdt, np.array(p.scale, np.float32)).astype(fdt))
            zp = _const_zero(model, base + "_qzp", zq, [])
            qn = helper.make_node("QuantizeLinear", [act_in, sc.name, zp], [base + "_q"], name=base + "_Q")
            dq = helper.make_node("DequantizeLinear", [base + "_q", sc.name, zp], [base + "_dq"], name=base + "_DQ")
            n.input[0] = base + "_dq"
            insert_before(model, n, [qn, dq])
    return counts


def _is_float16(model) -> bool:
    """An fp16 graph (an fp16 bundle's): its float inputs are FLOAT16."""
    from onnx import TensorProto

    return any(i.type.tensor_type.elem_type == TensorProto.FLOAT16 for i in model.graph.input)


def _float_dtype(inits: dict, p: GroupPlan):
    """The float dtype of a group's MatMuls: that of its (first) weight."""
    return graphio.np_dtype(inits[p.weights[0]].data_type)


def _const_zero(model, name: str, qtype: int, shape: list) -> str:
    from onnx import helper

    n = int(np.prod(shape)) if shape else 1
    model.graph.initializer.append(helper.make_tensor(name, qtype, shape, [0] * n))
    return name


def plan_graph(model, graph: str, calib, cfg: QdqConfig, scheme: Scheme, act_qmax: float):
    """Gemm -> MatMul rewrite, then per activation tensor the smoothing / scale plan. -> (plans, missing, gemms)."""
    gemms = gemms_to_matmul(model)
    groups = weight_groups(model)
    rng = np.random.default_rng(0)
    plans, missing = [], []
    for act, nodes in groups.items():
        st = calib.stats(graph, act)
        if st is None or st.samples is None or not len(st.samples):
            missing.append(act)
            continue
        p = plan_group(model, act, nodes, st, scheme, cfg, act_qmax, rng)
        if p.s is not None:
            p.fold = fold_plan(model, act, p.nodes, groups)
        plans.append(p)
    return plans, missing, gemms


def quantize_qdq(model, graph: str, calib, opts, scheme: Scheme, act_qmax: float, mode: str):
    """The shared W?A? static QDQ rewrite of every weight MatMul with calibration statistics."""
    t0 = time.time()
    cfg = config_from(opts, mode)
    if calib is None:
        raise ValueError(f"{mode} needs calibration statistics (activation scales)")
    plans, missing, gemms = plan_graph(model, graph, calib, cfg, scheme, act_qmax)
    keep = choose_keep(plans, cfg.keep_float, graph)
    for p in plans:  # a group never quantized: no smoothing (it would only make its weights harder to quantize)
        if not cfg.smooth_kept and all(n.name in keep for n in p.nodes):
            p.s, p.alpha = None, None
    counts = apply_plans(model, plans, keep, scheme, act_qmax, cfg.keep_as)
    used = {i for n in model.graph.node for i in n.input}
    for t in [t for t in model.graph.initializer if t.name not in used]:  # norm weights replaced by smoothed copies
        model.graph.initializer.remove(t)
    table = sorted(((e, n) for p in plans for n, e in p.per_node.items()), reverse=True)
    return model, {
        "scheme": f"{mode} static QDQ: weights per output channel (MatMul B axis 1) symmetric, activations per "
                  f"tensor static symmetric (zero point 0)",
        "weights": scheme.name, "activations": scheme.name, "calibrator": cfg.calibrator,
        "smoothing": {"mode": str(cfg.smooth), "alphas": {p.act: p.alpha for p in plans},
                      "folded": {k: sum(1 for p in plans if p.s is not None and p.fold[0] == k)
                                 for k in ("norm", "cols", "mul")}},
        "weight_qmax": scheme.qmax, "matmuls_quantized": counts["quantized"], "matmuls_float": counts["float"],
        "matmuls_weight_only": counts["weight_only"],
        "kept_as": {"int8": "int8 weight-only (W8A16: activation float; a wholly kept group is not smoothed)",
                    "weights": f"{scheme.name} weight-only (activation float; a wholly kept group is not smoothed)",
                    "float": "float"}[cfg.keep_as],
        "gemms_as_matmul_add": gemms, "kept_float": sorted(keep), "no_calibration_stats": missing,
        "sensitivity": [{"node": n, "rel_sq_error": round(e, 6)} for e, n in table[:12]],
        "seconds": round(time.time() - t0, 1),
    }


def quantize_int8(model, graph: str, calib, opts) -> tuple[object, dict]:
    """The int8 mode function (quant API contract): W8A8 static QDQ -> (model, manifest `quantization` entry)."""
    cfg = config_from(opts, "int8")
    half = _is_float16(model)
    if half:  # fp16 Q/DQ scales (the type of the tensors they meet) need opset >= 19
        model = to_opset21(model)
    model, q = quantize_qdq(model, graph, calib, opts, int8_scheme(cfg.weight_qmax), 127.0, "int8")
    if half:
        q["opset"] = 21
    q["ort_session_config"] = dict(ORT_SESSION_CONFIG) if cfg.weight_qmax > 64 else {}
    if q["gemms_as_matmul_add"]:
        q["ort_session_config"].update(ORT_NO_MATMUL_ADD)
    if q["matmuls_weight_only"]:
        q["weight_only_on_ort_cpu"] = f"MatMulNBits 8-bit, {ORT_WEIGHT_ONLY}"
    q["fused_on_ort_cpu"] = "MatMulIntegerToFloat" + (" (kept weight-only: MatMulNBits 8-bit)"
                                                      if q["matmuls_weight_only"] else "")
    return model, q
