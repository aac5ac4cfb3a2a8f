"""`janus-edge lint-trt BUNDLE`: will TensorRT 10.3's ONNX parser take every graph of this bundle? (CPU, no tensorrt)

Checks each node of each graph against `trt_ops.py` (the onnx-tensorrt operator table of TensorRT 10.3):
  - op type and domain (contrib ops such as com.microsoft MatMulNBits have no importer; ops parsed only by later
    TensorRT versions are named with the version they need), the model's opset;
  - the dtypes of the node's data inputs (from onnx.shape_inference) against the op's supported types, and the
    graph's I/O types against what an engine binds;
  - Q/DQ: zero point constant and 0, scale constant, activations per-tensor, quantized types INT8/FP8/INT4 only,
    block quantization only for INT4 2-D constant weights, INT4 only for constant weights;
  - restrictions of the table: build-time-constant inputs (TopK K, Reduce axes, ...), TopK K < 3840 and sorted,
    Resize modes;
  - the graph's I/O dims: every dynamic dim is one of the contract's profile dims (rows, n, seq, past), which
    `janus-edge build` gives an optimization-profile range; fixed dims equal the manifest's.
A graph the manifest marks `target: "ort"` (an ONNX-Runtime-only variant) is skipped, as `build` skips it.

Exit status (CLI): 0 no findings, 1 findings (each printed: graph, node, op, reason), 2 an unreadable bundle.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

import numpy as np

from janus_edge import contract as C
from janus_edge.errors import BundleError

from . import trt_ops as T

PROFILE_DIMS = ("rows", "n", "seq", "past")  # the symbolic dims `build` gives profile ranges to (contract.py)


@dataclass
class Finding:
    graph: str
    node: str  # node name ("" for graph-level findings)
    op: str  # op type (or "graph" / "input" / "output")
    reason: str

    def line(self) -> str:
        where = f"node {self.node!r} ({self.op})" if self.node else self.op
        return f"{self.graph}: {where}: {self.reason}"


@dataclass
class LintReport:
    bundle: str
    findings: list[Finding] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)  # graph -> nodes checked
    skipped: list[str] = field(default_factory=list)  # graphs for another backend only

    @property
    def ok(self) -> bool:
        return not self.findings

    def summary(self) -> str:
        n = sum(self.checked.values())
        s = f"{len(self.checked)} graph(s), {n} nodes checked against TensorRT {T.TRT_VERSION}'s ONNX parser"
        if self.skipped:
            s += f"; skipped (target ort): {', '.join(self.skipped)}"
        return s + (": ok" if self.ok else f": {len(self.findings)} finding(s)")


class _Graph:
    """One graph's lookups: constants (initializers, Constant outputs) and tensor types after shape inference."""

    def __init__(self, model, base_dir: str):
        import onnx

        self.base_dir = base_dir
        g = model.graph
        self.inits = {t.name: t for t in g.initializer}
        self.const_nodes = {n.output[0]: n for n in g.node if n.op_type == "Constant" and n.output}
        self.types: dict[str, int] = {t.name: t.data_type for t in g.initializer}
        try:
            inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
        except Exception:  # inference is best effort: types of graph I/O and initializers are still known
            inferred = model
        for v in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output):
            if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type:
                self.types[v.name] = v.type.tensor_type.elem_type
        for name, n in self.const_nodes.items():
            for a in n.attribute:
                if a.name == "value":
                    self.types[name] = a.t.data_type

    def is_const(self, name: str) -> bool:
        return name in self.inits or name in self.const_nodes

    def const(self, name: str) -> np.ndarray | None:
        from onnx import numpy_helper

        t = self.inits.get(name)
        if t is None and name in self.const_nodes:
            t = next((a.t for a in self.const_nodes[name].attribute if a.name == "value"), None)
        if t is None:
            return None
        try:
            return numpy_helper.to_array(t, base_dir=self.base_dir)
        except Exception:
            return None

    def shape(self, name: str) -> tuple | None:
        t = self.inits.get(name)
        if t is not None:
            return tuple(t.dims)
        a = self.const(name) if name in self.const_nodes else None
        return None if a is None else a.shape

    def tname(self, name: str) -> str | None:
        """The table's type name of a tensor; '?' when unknown, None when not a TensorRT type."""
        code = self.types.get(name)
        if code is None:
            return "?"
        return T.ONNX_TYPES.get(code)


def _onnx_type_name(code: int | None) -> str:
    from onnx import TensorProto

    try:
        return TensorProto.DataType.Name(code)
    except Exception:
        return str(code)


def _attr(node, name: str, default=None):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _nodes(graph):
    """Every node, subgraphs (If/Loop/Scan bodies) included."""
    for n in graph.node:
        yield n
        for a in n.attribute:
            if a.g is not None and a.g.node:
                yield from _nodes(a.g)
            for sub in a.graphs:
                yield from _nodes(sub)


def check_node(g: _Graph, node, opset: int) -> list[str]:
    """Reasons this node will not parse (or would parse to something else) in TensorRT 10.3."""
    op, dom = node.op_type, node.domain
    if dom not in ("", "ai.onnx"):
        return [f"op of domain {dom!r}: a contrib/custom op TensorRT's ONNX parser has no importer for "
                f"(it would need a plugin); export a standard-ONNX form"]
    if op in T.LATER:
        return [f"parsed by TensorRT >= {T.LATER[op]} only (this project's floor is {T.TRT_VERSION})"]
    if op in T.UNSUPPORTED:
        return [f"not supported by TensorRT {T.TRT_VERSION}'s ONNX parser"]
    if op not in T.SUPPORTED:
        return [f"not in TensorRT {T.TRT_VERSION}'s ONNX operator table"]
    reasons = _check_types(g, node)
    for i in T.CONST_INPUTS.get(op, ()):
        if i < len(node.input) and node.input[i] and not g.is_const(node.input[i]):
            reasons.append(f"input {i} ({node.input[i]!r}) must be a build-time constant")
    if op in ("QuantizeLinear", "DequantizeLinear"):
        reasons += _check_qdq(g, node)
    elif op == "TopK":
        reasons += _check_topk(g, node)
    elif op == "Resize":
        reasons += _check_resize(node)
    return reasons


def _check_types(g: _Graph, node) -> list[str]:
    allowed = set(T.SUPPORTED[node.op_type].split())
    idx = T.DATA_INPUTS.get(node.op_type, range(len(node.input)))
    out = []
    for i in idx:
        if i >= len(node.input) or not node.input[i]:
            continue
        t = g.tname(node.input[i])
        if t == "?":
            continue  # unknown after inference (rare): nothing to say
        if t is None:
            out.append(f"input {node.input[i]!r} has type {_onnx_type_name(g.types.get(node.input[i]))}, "
                       f"which TensorRT has no type for")
        elif t == "DOUBLE":
            out.append(f"input {node.input[i]!r} is DOUBLE (TensorRT casts it down to FP32): export float32")
        elif t not in allowed:
            out.append(f"input {node.input[i]!r} has type {t}; TensorRT {T.TRT_VERSION} takes "
                       f"{node.op_type} in {', '.join(sorted(allowed))}")
    return out


def _check_qdq(g: _Graph, node) -> list[str]:
    """Symmetric Q/DQ as TensorRT builds it (onnx-tensorrt QuantizeLinear/DequantizeLinear importer)."""
    q = node.op_type == "QuantizeLinear"
    out = []
    x, scale = node.input[0], node.input[1]
    zp = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if not g.is_const(scale):
        out.append(f"scale {scale!r} is not a build-time constant")
    # the quantized type: the zero point's, else output_dtype (opset 21), else ONNX's default UINT8 (Q)
    if zp is not None:
        qtype = g.tname(zp)
        if not g.is_const(zp):
            out.append(f"zero point {zp!r} is not a build-time constant")
        else:
            v = g.const(zp)
            if v is None:
                out.append(f"zero point {zp!r}: values unreadable")
            elif np.any(v.astype(np.float64) != 0):
                out.append(f"zero point {zp!r} is not 0 (TensorRT quantizes symmetrically only)")
    elif q:
        od = _attr(node, "output_dtype", 0)
        qtype = T.ONNX_TYPES.get(od) if od else "UINT8"
    else:
        qtype = g.tname(x)
    if qtype not in T.QUANTIZED_TYPES and qtype != "?":
        why = " (a QuantizeLinear without zero point is UINT8 in ONNX)" if q and zp is None else ""
        out.append(f"quantized type {qtype}{why}: TensorRT quantizes to INT8, FP8 or INT4 only")
    const_x = g.is_const(x)
    s_shape = g.shape(scale)
    if s_shape is None:
        return out
    s_size = int(np.prod(s_shape)) if s_shape else 1
    x_shape = g.shape(x) if const_x else None
    if qtype == "INT4" and not const_x:
        out.append("INT4 quantization of an activation: TensorRT takes INT4 for constant weights only")
    if s_size == 1:
        return out
    if not const_x:
        out.append(f"activation {x!r} quantized per-channel/per-block (scale shape {list(s_shape)}): "
                   f"TensorRT takes activations per-tensor only")
        return out
    if len(s_shape) == 1:  # per-channel
        axis = _attr(node, "axis", 1)
        if x_shape is not None and x_shape[axis % len(x_shape)] != s_size:
            out.append(f"per-channel scale of {s_size} does not match dim {axis} of the weight {list(x_shape)}")
        return out
    # block quantization
    if qtype != "INT4" or x_shape is None or len(x_shape) != 2:
        out.append(f"block quantization (scale {list(s_shape)}) of {qtype} weight shape "
                   f"{list(x_shape) if x_shape is not None else '?'}: TensorRT takes it for INT4 2-D constant "
                   f"weights only")
    elif len(s_shape) != 2 or sum(a != b for a, b in zip(x_shape, s_shape)) != 1 or \
            any(a % b for a, b in zip(x_shape, s_shape)):
        out.append(f"block scale {list(s_shape)} for weight {list(x_shape)}: exactly one dim may be blocked, "
                   f"by a whole block size")
    elif x_shape[-1] % 2:
        out.append("INT4 weight with an odd last dim (TensorRT packs INT4 in pairs)")
    else:
        block = max(a // b for a, b in zip(x_shape, s_shape))
        if block not in T.INT4_BLOCKS:
            out.append(f"INT4 block size {block}: TensorRT takes blocks of {' or '.join(map(str, T.INT4_BLOCKS))} "
                       f"(quantize with --target orin/trt, which keeps weights without such a block in float)")
        v = g.const(scale)
        if v is not None and not np.all(np.asarray(v, np.float64) > 0):
            out.append(f"scale {scale!r} has values <= 0: TensorRT's parser requires positive scales")
    return out


def _check_topk(g: _Graph, node) -> list[str]:
    out = []
    if _attr(node, "sorted", 1) != 1:
        out.append("TopK with sorted=0: TensorRT needs sorted=1")
    k = g.const(node.input[1]) if len(node.input) > 1 else None
    if k is not None and int(np.asarray(k).reshape(-1)[0]) > T.TOPK_MAX:
        out.append(f"TopK K={int(np.asarray(k).reshape(-1)[0])}: TensorRT needs K < {T.TOPK_MAX + 1}")
    return out


def _check_resize(node) -> list[str]:
    def s(name, default):
        v = _attr(node, name, default)
        return v.decode() if isinstance(v, bytes) else v

    out = []
    mode, coord = s("mode", "nearest"), s("coordinate_transformation_mode", "half_pixel")
    if mode not in T.RESIZE_MODES:
        out.append(f"Resize mode {mode!r}: TensorRT takes {sorted(T.RESIZE_MODES)}")
    if coord not in T.RESIZE_COORDS:
        out.append(f"Resize coordinate_transformation_mode {coord!r} is not supported")
    if mode == "nearest" and s("nearest_mode", "round_prefer_floor") not in T.RESIZE_NEAREST:
        out.append(f"Resize nearest_mode {s('nearest_mode', '')!r} is not supported")
    return out


def check_io(g: _Graph, model, spec: C.GraphSpec | None, graph: str) -> list[Finding]:
    """Graph inputs/outputs: engine-bindable types; dims fixed as the contract says or one of the profile dims."""
    out = []
    inits = set(g.inits)
    for kind, values, specs in (("input", model.graph.input, spec.inputs if spec else ()),
                                ("output", model.graph.output, spec.outputs if spec else ())):
        want = {t.name: t for t in specs}
        for v in values:
            if v.name in inits:
                continue
            tt = v.type.tensor_type
            t = T.ONNX_TYPES.get(tt.elem_type)
            if t not in T.IO_TYPES:
                out.append(Finding(graph, "", kind, f"{v.name!r} has type {_onnx_type_name(tt.elem_type)}, "
                                                    f"which an engine cannot bind"))
            dims = [d.dim_param if d.dim_param else (d.dim_value if d.HasField("dim_value") else None)
                    for d in tt.shape.dim]
            ts = want.get(v.name)
            if spec is not None and ts is None:
                out.append(Finding(graph, "", kind, f"{v.name!r} is not in the manifest's I/O of {graph}"))
            if ts is not None and len(ts.dims) != len(dims):
                out.append(Finding(graph, "", kind, f"{v.name!r} has rank {len(dims)}, the manifest {len(ts.dims)}"))
                continue
            for i, d in enumerate(dims):
                exp = ts.dims[i] if ts is not None else None
                if d is None or d == "":
                    out.append(Finding(graph, "", kind, f"{v.name!r} dim {i} has neither a size nor a name: no "
                                                        f"optimization profile can cover it"))
                elif isinstance(d, str) and d not in PROFILE_DIMS:
                    out.append(Finding(graph, "", kind, f"{v.name!r} dim {i} is {d!r}, not one of the profile dims "
                                                        f"{', '.join(PROFILE_DIMS)}: no profile covers it"))
                elif exp is not None and d != exp:
                    out.append(Finding(graph, "", kind, f"{v.name!r} dim {i} is {d!r}, the manifest says {exp!r}"))
    return out


def int4_fp32_warning(g: _Graph, node, graph: str) -> str | None:
    """INT4 weights with an FP32 scale: the parser imports them (the dequantized weight is FP32, as the scale), but
    TensorRT documents INT4 weight-only GEMMs with FP16/BF16 activations; an FP32 one is unconfirmed on 10.3."""
    if node.op_type != "DequantizeLinear" or g.tname(node.input[0]) != "INT4" or g.tname(node.input[1]) != "FP32":
        return None
    return (f"{graph}: INT4 weights with FP32 scales (FP32 activations): TensorRT {T.TRT_VERSION}'s parser takes "
            f"them; an FP32 INT4 weight-only GEMM is not confirmed (TensorRT documents FP16/BF16 ones): for Orin, "
            f"quantize an fp16 bundle (export --dtype fp16) and confirm with `janus-edge build`")


def lint_model(model, graph: str, base_dir: str = "", spec: C.GraphSpec | None = None) -> tuple[list[Finding],
                                                                                                 list[str], int]:
    """(findings, warnings, nodes checked) of one ONNX model."""
    warnings = []
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    findings = []
    if opset < T.OPSET_MIN or opset > T.OPSET_PARSED:
        findings.append(Finding(graph, "", "graph", f"opset {opset} is outside what TensorRT {T.TRT_VERSION} "
                                                    f"parses ({T.OPSET_MIN}-{T.OPSET_MAX} documented)"))
    elif opset > T.OPSET_MAX:
        warnings.append(f"{graph}: opset {opset} is above TensorRT {T.TRT_VERSION}'s documented {T.OPSET_MIN}-"
                        f"{T.OPSET_MAX} (the parser imports it; confirm with `janus-edge build`)")
    g = _Graph(model, base_dir)
    count = 0
    for node in _nodes(model.graph):
        count += 1
        for r in check_node(g, node, opset):
            findings.append(Finding(graph, node.name or f"#{count}", node.op_type, r))
        w = int4_fp32_warning(g, node, graph)
        if w and w not in warnings:
            warnings.append(w)
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and g.tname(node.input[0]) == "FP8" or \
                (node.op_type == "QuantizeLinear" and len(node.input) > 2 and g.tname(node.input[2]) == "FP8"):
            w = f"{graph}: FP8 Q/DQ: the engine needs compute capability >= 8.9 (not Orin)"
            if w not in warnings:
                warnings.append(w)
    findings += check_io(g, model, spec, graph)
    return findings, warnings, count


def lint_bundle(path: str) -> LintReport:
    """Lint every graph of a bundle. Raises BundleError for a bundle that cannot be read at all."""
    import onnx

    try:
        manifest = C.load_manifest(path)
    except C.ContractError as e:
        raise BundleError(str(e)) from None
    report = LintReport(bundle=path)
    for name, entry in manifest.graphs.items():
        if getattr(entry, "target", "any") == "ort":
            report.skipped.append(name)
            continue
        f = os.path.join(path, entry.file)
        if not os.path.isfile(f):
            raise BundleError(f"bundle file missing: {f}")
        try:
            model = onnx.load(f, load_external_data=False)
        except Exception as e:
            raise BundleError(f"cannot parse {f} as ONNX: {str(e).splitlines()[0][:200]}") from None
        findings, warnings, n = lint_model(model, name, os.path.dirname(f), entry.spec(name))
        report.findings += findings
        report.warnings += warnings
        report.checked[name] = n
    return report


def run_cli(bundle: str) -> int:
    report = lint_bundle(bundle)
    for w in report.warnings:
        print(f"warning: {w}", file=sys.stderr)
    for f in report.findings:
        print(f.line())
    print(report.summary())
    if not report.ok:
        print(f"error: {len(report.findings)} node(s)/tensor(s) TensorRT {T.TRT_VERSION} will not take "
              f"(listed above)", file=sys.stderr)
        return 1
    return 0


def warn_after(bundle: str, stage: str) -> None:
    """Run the lint at the end of `export` / `quantize`: findings become warnings there, never failures."""
    try:
        report = lint_bundle(bundle)
    except Exception as e:  # the lint must never break the stage it follows
        print(f"warning: lint-trt could not run after {stage}: {str(e).splitlines()[0][:200]}", file=sys.stderr)
        return
    for f in report.findings:
        print(f"warning: lint-trt: {f.line()}", file=sys.stderr)
    if report.findings:
        print(f"warning: lint-trt: {len(report.findings)} finding(s): this bundle will not build with TensorRT "
              f"{T.TRT_VERSION} (it still runs on ONNX Runtime)", file=sys.stderr)
