"""ONNX Runtime backend (CPU execution provider): numpy buffers bound zero-copy through IO binding."""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence

import numpy as np

from janus_edge.contract import GraphSpec
from janus_edge.errors import BackendUnavailable

from .backend import Backend, Graph


def low_memory_fp16(so, ort) -> None:
    """Session options for an fp16 graph on ORT's CPU provider (used by the runtime and by `verify`). ORT's CPU
    provider has no fp16 MatMul, so it inserts a Cast to an fp32 copy before each fp16 weight's MatMul. With graph
    optimizations on it folds those casts at load: fp32 copies of every weight kept for the session's life (24 GB
    more for Pro-7B's 12 GB fp16 lm). Off, its default order runs every weight's Cast first (the casts need no
    input), so all the copies are alive at once anyway, and its arena keeps them across calls (5x the weights
    measured on a 16-MatMul graph). Priority-based order runs each Cast just before its MatMul, and without the
    arena its copy is freed after it: the weights plus one copy (tests/test_ort_memory.py). The price is speed
    (no fusions, a cast per weight per call): fp16 bundles on the CPU are for memory; quantized graphs of an fp16
    bundle (int4/int8, whose fusions matter) are not opened this way."""
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    so.enable_cpu_mem_arena = False


class OrtGraph(Graph):
    def __init__(self, session, spec: GraphSpec):
        self.session, self.spec = session, spec
        self._outputs = [o.name for o in spec.outputs]
        self.calls = 0  # graph invocations (tests check one lm call per decode step)
        self._census: dict[str, int] | None = None

    def kernels(self) -> dict[str, int]:
        """{op type: kernel runs} of the calls made so far, after ORT's fusions (what actually ran), from its profiler;
        the first call ends profiling (later calls are not profiled). Needs `OrtBackend.kernel_census` set before
        the graph was opened; {} otherwise."""
        if self._census is None:
            self._census = {}
            if self.session.get_session_options().enable_profiling:
                path = self.session.end_profiling()
                try:
                    with open(path) as fh:
                        for e in json.load(fh):
                            op = e.get("args", {}).get("op_name") if e.get("cat") == "Node" else None
                            if op and e["name"].endswith("_kernel_time"):
                                self._census[op] = self._census.get(op, 0) + 1
                finally:
                    os.remove(path)
                    try:
                        os.rmdir(os.path.dirname(path))
                    except OSError:
                        pass
        return dict(self._census)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls += 1
        return dict(zip(self._outputs, self.session.run(self._outputs, feeds)))

    def bind(self, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> Callable[[], None]:
        io = self.session.io_binding()
        for names, bufs, bind in ((self.spec.inputs, inputs, io.bind_input), (self.spec.outputs, outputs, io.bind_output)):
            for t in names:
                a = bufs[t.name]
                if not a.flags.c_contiguous:
                    raise ValueError(f"{self.spec.name}.{t.name}: buffer must be C-contiguous")
                bind(t.name, "cpu", 0, a.dtype, list(a.shape), a.ctypes.data)

        def run() -> None:
            self.calls += 1
            self.session.run_with_iobinding(io)

        run.keepalive = (inputs, outputs)  # the binding holds raw pointers: keep the arrays alive with it
        return run


class OrtBackend(Backend):
    name = "ort"
    # The decode loop binds the KV cache's filled prefix rounded up to this many slots (runtime/decode.py LMRunner):
    # attention reads ~the valid prefix instead of the whole preallocated buffer. 0: bind the whole buffer.
    cache_chunk = 64
    # Graphs run once per request with large activations (the VQ decoder's 384x384 feature maps): without ORT's arena
    # their activation memory goes back to the system after each call instead of staying reserved beside the lm
    # weights (Pro-1B vq_decoder alone: peak 795 -> 624 MB, 408 MB held after the call instead of 795).
    no_arena = ("vision", "vq_encoder", "vq_decoder")
    # Graphs whose idle intra-op threads spin (ORT's default) instead of sleeping between kernels: see `options`.
    spin_graphs: tuple[str, ...] = ()
    # Graphs whose INT4 weight MatMuls run in libjanus_edge_cpu when it is built (runtime/cpu_split.py; off with
    # JANUS_EDGE_CPU_KERNELS=0): the decode step's weights. The heads' weights are not INT4.
    native_graphs = ("lm",)
    # True before graphs are opened: they record ORT's profile until `OrtGraph.kernels()` is called (bench: which
    # kernels ran); the profile files go to a temp dir and are removed when read.
    kernel_census = False

    def __init__(self, threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendUnavailable("onnxruntime is not installed: pip install onnxruntime") from None
        self.ort = ort
        self.threads = threads

    def options(self, spin: bool = False):
        so = self.ort.SessionOptions()
        so.graph_optimization_level = self.ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.threads:
            so.intra_op_num_threads = self.threads
            so.inter_op_num_threads = 1
        so.log_severity_level = 3
        # Idle intra-op threads must not spin: each graph has its own pool, and on a small CPU the pools of
        # gen_head/gen_embed spinning between calls steal the cores from lm (pro-1b fp32, 2 cores: 304 -> 217 ms
        # per image-token step).
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        # INT4 bundles: the DequantizeLinear(INT4, block) -> MatMul form is fused into MatMulNBits at load; accuracy
        # level 4 (activations int8 per block, int8 dot products) is its fast path here (2048x5632, 2 rows: ~7x the
        # speed of level 0); set explicitly rather than relying on the version's default (4 in 1.32).
        so.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "4")
        return so

    def open(self, path: str, spec: GraphSpec, session_config: dict | None = None,
             precision: str | None = None) -> Graph:
        """precision: the manifest's `GraphEntry.precision` (float16 graphs get `low_memory_fp16`). The lm graph of
        an int4 bundle runs its weight MatMuls in libjanus_edge_cpu when it is built (runtime/cpu_split.py)."""
        if spec.name in self.native_graphs and precision == "int4":
            split = self._open_split(path, spec, session_config, precision)
            if split is not None:
                return split
        so = self.graph_options(spec, session_config, precision)
        sess = self.ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        return OrtGraph(sess, spec)

    def _open_split(self, path, spec, session_config, precision):
        from . import cpu_split

        if cpu_split.unavailable():
            return None  # not built, no onnx, or turned off: ORT's own kernels (the same math, slower)
        from .cpu_kernels import load_cpu_lib

        kern = load_cpu_lib()
        count = iter(range(1 << 30))

        def segment_options():
            so = self.graph_options(spec, session_config, precision)
            if so.enable_profiling:  # one profile file per segment session (a shared prefix collides)
                so.profile_file_prefix += f"-{next(count)}"
            return so
        return cpu_split.open_split(self, path, spec, segment_options, kern,
                                    census=lambda sess: OrtGraph(sess, spec).kernels())

    def graph_options(self, spec: GraphSpec, session_config: dict | None = None, precision: str | None = None):
        """The session options `open` gives this graph (also read by quant's calibration backend)."""
        so = self.options(spin=spec.name in self.spin_graphs)
        if self.kernel_census:
            import tempfile

            so.enable_profiling = True
            so.profile_file_prefix = os.path.join(tempfile.mkdtemp(prefix="janus-edge-kernels-"), spec.name)
        if precision == "float16":
            low_memory_fp16(so, self.ort)
        # Per graph, from the manifest's `quantization.ort_session_config` (runtime/bundle.py): e.g. INT8 W8A8 graphs ask for `session.x64quantprecision=1` (on x86 without
        # VNNI, ORT's u8s8 kernel sums u8*s8 pairs in int16 and saturates on full-range int8 weights: 11% output
        # error measured, quant/int8.py). Not set globally: it makes ORT turn the INT8 weights of blocked
        # DequantizeLinear into u8 + zero point, which breaks the 8-bit MatMulNBits fusion of int4 bundles.
        for k, v in (session_config or {}).items():
            so.add_session_config_entry(k, str(v))
        if spec.name in self.no_arena:
            so.enable_cpu_mem_arena = False
        return so

    def alloc(self, shape: Sequence[int], dtype: str, zero: bool = True) -> np.ndarray:
        return (np.zeros if zero else np.empty)(tuple(shape), dtype=dtype)

    def write(self, buf: np.ndarray, value: np.ndarray) -> None:
        buf[...] = value

    def read(self, buf: np.ndarray) -> np.ndarray:
        return buf

    def view(self, buf: np.ndarray, shape: Sequence[int]) -> np.ndarray:
        v = buf.reshape(tuple(shape))
        assert np.shares_memory(v, buf)
        return v

    def kv_append(self, cache: list[np.ndarray], new: list[np.ndarray], pos) -> None:
        s = new[0].shape[2]
        if np.ndim(pos):  # per-row positions (one new slot per row)
            r = np.arange(len(pos))
            for c, n in zip(cache, new):
                c[r, :, pos] = n[:, :, 0]
            return
        for c, n in zip(cache, new):
            c[:, :, pos:pos + s] = n

    def rows(self, buf: np.ndarray, start: int, stop: int) -> np.ndarray:
        return buf[start:stop]

    def move_rows(self, buf: np.ndarray, src: int, dst: int, count: int) -> None:
        if count > 0 and src != dst:
            buf[dst:dst + count] = buf[src:src + count]  # numpy copies through a temporary on overlap


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
