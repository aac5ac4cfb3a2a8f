"""An int4 graph on the CPU with libjanus_edge_cpu's GEMM for its weight MatMuls and ONNX Runtime for the rest.

Why: ORT's `MatMulNBits` (what the bundles' INT4 `DequantizeLinear(axis 0, block) -> MatMul` form becomes at load)
unpacks and multiplies at ~7 GB/s a core on the decode shapes, so a 2-row int4 step runs at ~2x its bandwidth floor
and an 8-row one at ~3.5x (docs/cpu-kernels.md). The native GEMM (runtime/cpu_kernels.py: the same int8 activation
quantization, AVX-512 VNNI / AVX2) streams the same weights at up to the memory's rate. ORT can only call it as a
custom op, which needs ONNX Runtime's C headers at build time: no package this project may install ships them
(the PyPI wheel has none, Debian 12 has no onnxruntime), so the graph is cut instead.

`plan(model)` finds the weight MatMuls (INT4 initializer -> DequantizeLinear(axis 0, block_size B, no zero point)
-> MatMul input 1) and cuts the rest of the graph into segments in waves: a segment holds every remaining node
whose inputs are ready, then every weight MatMul whose activation is ready runs natively, and so on (Pro-1B: 4
waves a layer: q/k/v, o, gate/up, down). Each segment is its own ORT session (the backend's options, the manifest's
session config); the values crossing a cut are numpy arrays handed from one to the next. The file's Q/DQ form is
unchanged (TensorRT reads the same bundle): this is the CPU runtime's choice, made at load (`OrtBackend.open`),
off with JANUS_EDGE_CPU_KERNELS=0.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from janus_edge.contract import GraphSpec

from .backend import Graph
from .cpu_kernels import CpuKernels, PackedQ4

KERNEL = "JanusEdgeQ4Gemm"     # the native GEMM's name in `kernels()` (bench: "kernels ran")
ENV = "JANUS_EDGE_CPU_KERNELS"  # 0: plain ORT for every graph; 1 / unset: the native GEMM where it applies
INT4 = 22                       # onnx.TensorProto.INT4


@dataclass
class WeightMatMul:
    x: str            # the activation (graph value) [..., K]
    y: str            # the output [..., N]
    weight: str       # the INT4 initializer
    scale: str        # its scale initializer [K/B, N]
    nodes: tuple      # indices (graph.node) of the MatMul and, when only it reads it, its DequantizeLinear


@dataclass
class Segment:
    nodes: list = field(default_factory=list)     # onnx NodeProtos, in graph order
    inputs: list = field(default_factory=list)    # names fed from outside the segment
    outputs: list = field(default_factory=list)   # names used after it


@dataclass
class NativeCall:
    """One GEMM call: the weight MatMuls of a wave that read the same activation, their columns side by side (q/k/v,
    gate/up: one pass over x and one thread split instead of 3 / 2)."""
    x: str
    packed: PackedQ4
    outs: list            # (value name, first column, columns)


@dataclass
class Plan:
    steps: list          # Segment or list[WeightMatMul] (one wave), in run order
    matmuls: list        # every WeightMatMul


def enabled() -> bool:
    return os.environ.get(ENV, "1") != "0"


def unavailable() -> str | None:
    """Why int4 lm graphs cannot run through the native GEMM here (the plain ORT graph then), or None."""
    from janus_edge.errors import BackendUnavailable

    from .cpu_kernels import load_cpu_lib

    try:
        load_cpu_lib()
    except BackendUnavailable as e:
        return f"not built ({str(e).split(':')[0]})"
    try:
        import onnx  # noqa: F401 - the cut reads the graph's nodes; a runtime-only install has no onnx
    except ImportError:
        return "the onnx package is missing (the graph cut reads it)"
    if not enabled():
        return f"off ({ENV}=0)"
    return None


def find_weight_matmuls(model) -> list[WeightMatMul]:
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    producer = {o: (k, n) for k, n in enumerate(g.node) for o in n.output}
    users: dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            users[i] = users.get(i, 0) + 1
    found = []
    for k, n in enumerate(g.node):
        if n.op_type != "MatMul" or n.domain not in ("", "ai.onnx"):
            continue
        kd, dq = producer.get(n.input[1], (None, None))
        if dq is None or dq.op_type != "DequantizeLinear" or len(dq.input) > 2 and dq.input[2]:
            continue
        w, s = inits.get(dq.input[0]), inits.get(dq.input[1])
        attrs = {a.name: a.i for a in dq.attribute}
        if w is None or s is None or w.data_type != INT4 or len(w.dims) != 2 or attrs.get("axis", 1) != 0 \
                or not attrs.get("block_size") or s.data_type != 1:
            continue
        B = attrs["block_size"]
        K, N = w.dims
        if B % 8 or K % B:
            continue
        nodes = (k, kd) if users.get(dq.output[0]) == 1 else (k,)
        found.append(WeightMatMul(n.input[0], n.output[0], dq.input[0], dq.input[1], nodes))
    return found


def plan(model, matmuls: list[WeightMatMul]) -> Plan:
    """Cut the graph around `matmuls` (see the module docstring). The waves come from running every node as soon as
    its inputs are ready; each node then goes to the latest segment before its first use, so a value is made where
    it is read (a Transpose of the cached keys lands beside its MatMul, which ORT then fuses, instead of being
    copied out of the first segment for every layer)."""
    g = model.graph
    skip = {k for m in matmuls for k in m.nodes}
    # Constant nodes are copied into every segment that reads them (not computed once and handed along)
    consts = {n.output[0]: n for n in g.node if n.op_type == "Constant"}
    rest = [n for k, n in enumerate(g.node) if k not in skip and n.op_type != "Constant"]
    waves = _waves(g, rest, matmuls, consts)
    W = len(waves)
    wave_of = {m.x: w for w, wave in enumerate(waves) for m in wave}  # one wave reads a value: all once it is ready
    outputs = {o.name for o in g.output}
    first_use: dict[str, int] = {}   # value -> the earliest segment (or wave index: the segment before it) reading it
    where = {}
    for n in reversed(rest):
        uses = [first_use[o] for o in n.output if o in first_use] + [wave_of[o] for o in n.output if o in wave_of]
        uses += [W for o in n.output if o in outputs]
        where[id(n)] = min(uses) if uses else W
        for i in n.input:
            first_use[i] = min(first_use.get(i, W), where[id(n)])
    segs = [Segment() for _ in range(W + 1)]
    for n in rest:
        segs[where[id(n)]].nodes.append(n)
    steps: list = []
    for k, seg in enumerate(segs):
        if seg.nodes:
            steps.append(seg)
        if k < W:
            steps.append(waves[k])
    _wire(g, steps, consts)
    return Plan(steps, matmuls)


def _waves(g, rest, matmuls, consts) -> list[list[WeightMatMul]]:
    """The weight MatMuls in waves: each wave is every MatMul whose activation is ready once every node that can
    run has run."""
    ready = {i.name for i in g.input} | {t.name for t in g.initializer} | {""} | set(consts)
    pending, waves = list(matmuls), []
    while rest or pending:
        left, progressed = [], False
        for n in rest:
            if all(i in ready for i in n.input):
                ready.update(n.output)
                progressed = True
            else:
                left.append(n)
        rest = left
        wave = [m for m in pending if m.x in ready]
        if not wave and not progressed:
            raise ValueError(f"cannot order the graph around its int4 MatMuls ({len(rest)} nodes left)")
        if wave:
            pending = [m for m in pending if m.x not in ready]
            ready.update(m.y for m in wave)
            waves.append(wave)
    return waves


def _wire(g, steps, consts) -> None:
    """Each segment's Constant nodes, inputs (values made outside it, not initializers) and outputs (values read
    later)."""
    inits = {t.name for t in g.initializer}
    later: set[str] = {o.name for o in g.output}
    for st in reversed(steps):
        if isinstance(st, Segment):
            need = dict.fromkeys(i for n in st.nodes for i in n.input if i in consts)
            st.nodes[:0] = [consts[c] for c in need]
            made = {o for n in st.nodes for o in n.output}
            st.outputs = sorted(made & later)
            used = [i for n in st.nodes for i in n.input if i and i not in made and i not in inits]
            st.inputs = list(dict.fromkeys(used))
            later |= set(st.inputs)
        else:
            later |= {m.x for m in st}


def segment_model(model, seg: Segment, types: dict[str, int]) -> bytes:
    from onnx import helper

    g = model.graph
    names = {i for n in seg.nodes for i in n.input}
    inits = [t for t in g.initializer if t.name in names]
    vi = lambda n: helper.make_tensor_value_info(n, types[n], None)  # noqa: E731 - shapes stay dynamic
    graph = helper.make_graph(seg.nodes, "segment", [vi(n) for n in seg.inputs], [vi(n) for n in seg.outputs],
                              initializer=inits)
    m = helper.make_model(graph, opset_imports=model.opset_import)
    m.ir_version = model.ir_version
    return m.SerializeToString()


def value_types(model) -> dict[str, int]:
    """Element type of every value of the graph (shape inference; run it before the weights are loaded)."""
    import onnx

    g = onnx.shape_inference.infer_shapes(model).graph
    out = {v.name: v.type.tensor_type.elem_type for v in list(g.value_info) + list(g.input) + list(g.output)}
    out.update({t.name: t.data_type for t in g.initializer})
    return out


class SplitGraph(Graph):
    """A graph run as ORT segments and native int4 GEMMs (see the module docstring); the Graph interface of
    runtime/backend.py, so the decode loop and the scheduler use it as they use an OrtGraph."""

    def __init__(self, plan_: Plan, sessions: dict[int, object], native: dict[int, list[NativeCall]],
                 kern: CpuKernels, spec: GraphSpec, threads: int | None,
                 census: Callable[[object], dict[str, int]] | None = None):
        self.plan, self.sessions, self.native, self.kern = plan_, sessions, native, kern
        self._session_census = census  # session -> {op type: runs} (the backend's profiler reader)
        self.spec, self.threads = spec, threads or 0
        self._outputs = [o.name for o in spec.outputs]
        self.calls = 0
        self._census: dict[str, int] | None = None

    def kernels(self) -> dict[str, int]:
        """OrtGraph.kernels() of every segment (ORT's profiler, when the backend's kernel_census was on) plus the
        native GEMM's calls so far (frozen at the first call, as ORT's census is)."""
        if self._census is None:
            self._census = {KERNEL: len(self.plan.matmuls) * self.calls}
            for sess in self.sessions.values():
                for op, n in (self._session_census(sess) if self._session_census else {}).items():
                    self._census[op] = self._census.get(op, 0) + n
        return dict(self._census)

    def _chain(self, env: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for i, st in enumerate(self.plan.steps):
            if isinstance(st, Segment):
                outs = self.sessions[i].run(st.outputs, {n: env[n] for n in st.inputs})
                env.update(zip(st.outputs, outs))
                continue
            for c in self.native[i]:
                x = env[c.x]
                y = self.kern.gemm_q4(x.reshape(-1, c.packed.K), c.packed, self.threads)
                y = y.reshape(*x.shape[:-1], c.packed.N)
                for name, col, n in c.outs:
                    env[name] = y if n == c.packed.N else y[..., col:col + n]
        return env

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls += 1
        env = self._chain(dict(feeds))
        return {n: env[n] for n in self._outputs}

    def bind(self, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> Callable[[], None]:
        names = [t.name for t in self.spec.inputs]

        def run() -> None:
            self.calls += 1
            env = self._chain({n: inputs[n] for n in names})
            for n, buf in outputs.items():
                np.copyto(buf, env[n], casting="same_kind")

        run.keepalive = (inputs, outputs)
        return run


def open_split(backend, path: str, spec: GraphSpec, so_factory: Callable[[], object], kern: CpuKernels,
               census: Callable[[object], dict[str, int]] | None = None):
    """-> SplitGraph, or None when the graph has no int4 weight MatMul this kernel takes."""
    import onnx
    from onnx import numpy_helper
    from onnx.external_data_helper import load_external_data_for_model

    model = onnx.load(path, load_external_data=False)  # parsed once: nodes first, the weights only when needed
    matmuls = find_weight_matmuls(model)
    if not matmuls:
        return None
    types = value_types(model)
    load_external_data_for_model(model, os.path.dirname(os.path.abspath(path)))
    p = plan(model, matmuls)
    inits = {t.name: t for t in model.graph.initializer}

    def pack(m: WeightMatMul) -> PackedQ4:
        w = numpy_helper.to_array(inits[m.weight]).astype(np.int8)
        return kern.pack_q4(w, numpy_helper.to_array(inits[m.scale]))

    native = {i: native_calls(st, pack) for i, st in enumerate(p.steps) if not isinstance(st, Segment)}
    ort = backend.ort
    sessions = {i: ort.InferenceSession(segment_model(model, st, types), so_factory(),
                                        providers=["CPUExecutionProvider"])
                for i, st in enumerate(p.steps) if isinstance(st, Segment)}
    return SplitGraph(p, sessions, native, kern, spec, backend.threads, census)


def native_calls(wave: list[WeightMatMul], pack: Callable[[WeightMatMul], PackedQ4]) -> list[NativeCall]:
    """A wave's MatMuls as GEMM calls: those reading the same activation with the same K and block in one call
    (their packed tiles concatenated: every N but the last a multiple of the 16-column tile)."""
    groups: list[list[tuple[WeightMatMul, PackedQ4]]] = []
    for m in wave:
        p = pack(m)
        last = groups[-1][-1] if groups else None
        if last is not None and last[0].x == m.x and last[1].K == p.K and last[1].block == p.block \
                and last[1].N % 16 == 0:
            groups[-1].append((m, p))
        else:
            groups.append([(m, p)])
    calls = []
    for group in groups:
        ps = [p for _, p in group]
        cols = np.cumsum([0] + [p.N for p in ps])
        packed = ps[0] if len(ps) == 1 else PackedQ4(np.concatenate([p.data for p in ps]),
                                                      np.concatenate([p.scales for p in ps]), ps[0].K,
                                                      int(cols[-1]), ps[0].block)
        calls.append(NativeCall(group[0][0].x, packed, [(m.y, int(c), p.N) for (m, p), c in zip(group, cols)]))
    return calls
