"""TensorRT backend: engines from `janus-edge build`, device buffers, one CUDA stream (TensorRT 10.3+, cuda-python).

Behind runtime/backend.py's interface, so the decode loop above it is the one the ORT backend runs:
  - buffers are device allocations (DeviceBuffer: pointer, shape, dtype), allocated once per request shape and
    recycled through a per-size pool (a second request of the same shape mallocs nothing);
  - graphs bind by name (`set_input_shape`, `set_tensor_address`) and run with `execute_async_v3` on the stream;
    `lm` has two optimization profiles (prefill, single-token step), each with its own execution context;
  - `kv_append` writes the step's new K/V into the cache in place: the native library's one-launch kernel when it is
    built (runtime/native.py), else one strided `cudaMemcpy2DAsync` per layer tensor;
  - `read` is the only host synchronisation; the CFG image loop can run whole steps on the device and capture them
    in a CUDA graph (runtime/trt_steps.py, reached through `run_image_steps`).
Without tensorrt, cuda-python or a GPU, construction fails with one line saying which and how to get it.
"""
from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Sequence

import numpy as np

from janus_edge.contract import GraphSpec
from janus_edge.errors import BackendUnavailable, BundleError, InputError

from . import trt_engines as E
from .backend import Backend, Graph
from .trt_env import check, require, trt_version


class DeviceBuffer:
    """A device allocation (or a view of one): `ptr` is an int device address."""

    __slots__ = ("ptr", "shape", "dtype", "base", "__weakref__")

    def __init__(self, ptr: int, shape: Sequence[int], dtype, base: "DeviceBuffer | None" = None):
        self.ptr, self.shape, self.dtype, self.base = int(ptr), tuple(int(s) for s in shape), np.dtype(dtype), base

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def __repr__(self) -> str:
        return f"DeviceBuffer(0x{self.ptr:x}, {self.shape}, {self.dtype})"


class _Pool:
    """Freed allocations kept by size for the next request of the same shapes (cudaFree synchronises the device)."""

    def __init__(self, cudart):
        self.cudart, self.free = cudart, {}
        self.mallocs = 0

    def get(self, nbytes: int) -> int:
        lst = self.free.get(nbytes)
        if lst:
            return lst.pop()
        self.mallocs += 1
        return int(check(self.cudart, self.cudart.cudaMalloc(max(nbytes, 1)), f"cudaMalloc({nbytes})"))

    def put(self, nbytes: int, ptr: int) -> None:
        self.free.setdefault(nbytes, []).append(ptr)

    def release(self) -> None:
        for lst in self.free.values():
            for p in lst:
                self.cudart.cudaFree(p)
        self.free.clear()


class TrtGraph(Graph):
    """One engine. Execution contexts per optimization profile, created on first use."""

    def __init__(self, backend: "TrtBackend", engine, spec: GraphSpec, recorded: list[dict] | None):
        self.be, self.engine, self.spec = backend, engine, spec
        trt = backend.trt
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        want_in, want_out = [t.name for t in spec.inputs], [t.name for t in spec.outputs]
        if sorted(self.inputs) != sorted(want_in) or sorted(self.outputs) != sorted(want_out):
            raise BundleError(f"{spec.name}: engine I/O {self.inputs} -> {self.outputs} differs from the manifest's")
        for t in (*spec.inputs, *spec.outputs):
            got = np.dtype(trt.nptype(engine.get_tensor_dtype(t.name)))
            if got != np.dtype(t.dtype):
                raise BundleError(f"{spec.name}.{t.name}: engine dtype {got}, manifest {t.dtype}")
        self.profiles = [{"shapes": {n: [list(s) for s in engine.get_tensor_profile_shape(n, p)]
                                     for n in self.inputs}} for p in range(engine.num_optimization_profiles)]
        if recorded is not None:
            E.check_profiles(spec.name, recorded, [p["shapes"] for p in self.profiles])
        self.contexts: dict[int, object] = {}
        self.bound: dict[int, object] = {}  # profile -> token of the binding currently applied to its context
        self._scratch: DeviceBuffer | None = None  # shared context memory (several profiles)
        self.scratch_saved = 0
        self.calls = 0

    def _context(self, p: int):
        if p not in self.contexts:
            shared = len(self.profiles) > 1  # lm: one context per profile, never running at once (one stream)
            if shared:
                ctx = self.engine.create_execution_context(self.be.trt.ExecutionContextAllocationStrategy.USER_MANAGED)
            else:
                ctx = self.engine.create_execution_context()
            if ctx is None:
                raise RuntimeError(f"{self.spec.name}: cannot create an execution context (out of device memory?)")
            if shared:
                ptr, size = self._shared_memory()
                set_memory = getattr(ctx, "set_device_memory", None)
                if set_memory is not None:  # 10.1+: with its size
                    set_memory(ptr, size)
                else:
                    ctx.device_memory = ptr
            if not ctx.set_optimization_profile_async(p, self.be.stream):
                raise RuntimeError(f"{self.spec.name}: cannot select optimization profile {p}")
            self.contexts[p] = ctx
        return self.contexts[p]

    def _shared_memory(self) -> tuple[int, int]:
        """One device buffer for the scratch memory of every profile's context (USER_MANAGED): sized for the largest
        profile (get_device_memory_size_for_profile_v2), allocated once per graph. The default (STATIC) gives each
        context its own buffer of the engine's largest profile: shared_context_bytes says what this saves."""
        if self._scratch is None:
            sizes = profile_memory_sizes(self.engine, len(self.profiles))
            size, self.scratch_saved = shared_context_bytes(sizes)
            self._scratch = self.be.alloc((max(size, 1),), "uint8", zero=False)
        return self._scratch.ptr, self._scratch.nbytes

    def _apply(self, p: int, inputs: dict, outputs: dict) -> None:
        ctx = self._context(p)
        for n in self.inputs:
            b = inputs[n]
            if not ctx.set_input_shape(n, b.shape):
                raise InputError(f"{self.spec.name}.{n}: shape {b.shape} rejected by the engine's profile")
            ctx.set_tensor_address(n, b.ptr)
        for n in self.outputs:
            b = outputs[n]
            want = tuple(ctx.get_tensor_shape(n))
            if want != b.shape:
                raise ValueError(f"{self.spec.name}.{n}: engine output shape {want}, buffer {b.shape}")
            ctx.set_tensor_address(n, b.ptr)

    def _profile(self, inputs: dict) -> int:
        for n, b in inputs.items():
            if not isinstance(b, DeviceBuffer):
                raise TypeError(f"{self.spec.name}.{n}: a trt graph binds DeviceBuffers, got {type(b).__name__}")
            if b.dtype != np.dtype(self.spec.input(n).dtype):
                raise ValueError(f"{self.spec.name}.{n}: buffer dtype {b.dtype}, expected {self.spec.input(n).dtype}")
        return E.select_profile(self.profiles, {n: b.shape for n, b in inputs.items()})

    def _execute(self, p: int) -> None:
        self.calls += 1
        if not self.contexts[p].execute_async_v3(self.be.stream):
            raise RuntimeError(f"{self.spec.name}: execute_async_v3 failed (see TensorRT's log above)")

    def bind(self, inputs: dict, outputs: dict) -> Callable[[], None]:
        p = self._profile(inputs)
        token = object()
        self._apply(p, inputs, outputs)
        self.bound[p] = token

        def run() -> None:
            if self.bound.get(p) is not token:  # another binding of this profile ran since: re-apply ours
                self._apply(p, inputs, outputs)
                self.bound[p] = token
            self._execute(p)

        run.keepalive = (inputs, outputs)
        run.graph = self
        return run

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        be = self.be
        ins = {}
        for n in self.inputs:
            a = np.ascontiguousarray(feeds[n], dtype=self.spec.input(n).dtype)
            ins[n] = be.alloc(a.shape, a.dtype, zero=False)
            be.write(ins[n], a)
        p = self._profile(ins)
        ctx = self._context(p)
        for n in self.inputs:
            ctx.set_input_shape(n, ins[n].shape)
        outs = {n: be.alloc(tuple(ctx.get_tensor_shape(n)), self.spec.output(n).dtype, zero=False)
                for n in self.outputs}
        self._apply(p, ins, outs)
        self.bound[p] = None
        self._execute(p)
        return {n: np.array(be.read(outs[n])) for n in [t.name for t in self.spec.outputs]}


def profile_memory_sizes(engine, n_profiles: int) -> list[int]:
    """Scratch bytes each optimization profile's context needs (TensorRT 10.1+: ..._for_profile_v2)."""
    per = getattr(engine, "get_device_memory_size_for_profile_v2", None)
    if per is None:  # older 10.x: the engine-wide maximum for each
        size = int(getattr(engine, "device_memory_size_v2", engine.device_memory_size))
        return [size] * n_profiles
    return [int(per(p)) for p in range(n_profiles)]


def shared_context_bytes(sizes: list[int]) -> tuple[int, int]:
    """(the one shared buffer, bytes saved against STATIC allocation) for contexts that never run at the same time:
    STATIC gives every context the engine's largest profile's memory, so n contexts hold n x max; shared: max."""
    if not sizes:
        return 0, 0
    big = max(sizes)
    return big, big * (len(sizes) - 1)


class TrtBackend(Backend):
    name = "trt"

    def __init__(self, threads: int | None = None, need_trt: bool = True, what: str = "backend 'trt'"):
        """`need_trt=False`: device buffers, KV append and CUDA graphs only (tests on a GPU without TensorRT; the
        ORT GPU backend, runtime/ort_gpu.py). `what` names the caller in the refusal line."""
        env = require(what, need_trt=need_trt)
        self.env, self.cudart, self.trt = env, env.cudart, env.trt
        self.device = env.device
        if self.trt is not None:
            self.version = trt_version(self.trt)
            self.logger = self.trt.Logger(self.trt.Logger.WARNING)
            self.runtime = self.trt.Runtime(self.logger)
        self.stream = int(check(self.cudart, self.cudart.cudaStreamCreateWithFlags(
            self.cudart.cudaStreamNonBlocking), "cudaStreamCreateWithFlags"))
        self.pool = _Pool(self.cudart)
        self.graphs: list[TrtGraph] = []  # opened engines (memory(): what shared context memory saved)
        self.syncs = 0  # host synchronisations (tests: none inside the captured step loop)
        self.meta: dict | None = None
        self.limits: E.Limits | None = None
        self.kernels = _load_kernels(self.cudart, self.stream)
        self._pos_buf: DeviceBuffer | None = None  # device position(s) for the native kv_append
        self.use_cuda_graph = os.environ.get("JANUS_EDGE_TRT_CUDA_GRAPH", "1") != "0"
        self._finalizer = weakref.finalize(self, _release, self.cudart, self.pool, self.stream)

    # ---- load checks ------------------------------------------------------------------------------------------
    def attach(self, path: str, manifest) -> None:
        """Called by Bundle at load: engines.json must match this TensorRT and this GPU."""
        meta = E.read_meta(path)
        E.check_meta(meta, self.version, self.device)
        self.meta, self.limits = meta, E.meta_limits(meta)
        missing = [g for g in manifest.graphs if g not in meta["engines"]]
        if missing and len(missing) == len(manifest.graphs):
            raise BundleError(f"{path}: engines.json lists no engines")

    def open(self, path: str, spec: GraphSpec) -> Graph:
        with open(path, "rb") as fh:
            engine = self.runtime.deserialize_cuda_engine(fh.read())
        if engine is None:
            raise BundleError(f"TensorRT cannot deserialize {path} (built by another TensorRT version or GPU?)")
        recorded = self.meta["engines"].get(spec.name, {}).get("profiles") if self.meta else None
        g = TrtGraph(self, engine, spec, recorded)
        self.graphs.append(g)
        return g

    # ---- buffers ----------------------------------------------------------------------------------------------
    def alloc(self, shape: Sequence[int], dtype: str, zero: bool = True) -> DeviceBuffer:
        shape = tuple(int(s) for s in shape)
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        ptr = self.pool.get(nbytes)
        buf = DeviceBuffer(ptr, shape, dtype)
        weakref.finalize(buf, self.pool.put, nbytes, ptr)
        if zero:
            check(self.cudart, self.cudart.cudaMemsetAsync(ptr, 0, max(nbytes, 1), self.stream), "cudaMemsetAsync")
        return buf

    def write(self, buf: DeviceBuffer, value: np.ndarray) -> None:
        a = np.ascontiguousarray(value, dtype=buf.dtype)
        if a.size * a.itemsize != buf.nbytes:
            raise ValueError(f"write of {a.shape} into a buffer of {buf.shape}")
        # from pageable memory the call returns once the data is staged: `a` may be freed afterwards
        check(self.cudart, self.cudart.cudaMemcpyAsync(buf.ptr, a.ctypes.data, buf.nbytes,
                                                       self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice,
                                                       self.stream), "cudaMemcpyAsync H2D")

    def read(self, buf: DeviceBuffer) -> np.ndarray:
        out = np.empty(buf.shape, buf.dtype)
        check(self.cudart, self.cudart.cudaMemcpyAsync(out.ctypes.data, buf.ptr, buf.nbytes,
                                                       self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost,
                                                       self.stream), "cudaMemcpyAsync D2H")
        self.synchronize()
        return out

    def synchronize(self) -> None:
        self.syncs += 1
        check(self.cudart, self.cudart.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")

    def view(self, buf: DeviceBuffer, shape: Sequence[int]) -> DeviceBuffer:
        v = DeviceBuffer(buf.ptr, shape, buf.dtype, base=buf.base or buf)
        if v.nbytes != buf.nbytes:
            raise ValueError(f"view {tuple(shape)} of a buffer of {buf.shape}")
        return v

    def rows(self, buf: DeviceBuffer, start: int, stop: int) -> DeviceBuffer:
        row = buf.nbytes // buf.shape[0]
        return DeviceBuffer(buf.ptr + start * row, (stop - start, *buf.shape[1:]), buf.dtype, base=buf.base or buf)

    def copy(self, dst_ptr: int, src_ptr: int, nbytes: int) -> None:
        check(self.cudart, self.cudart.cudaMemcpyAsync(dst_ptr, src_ptr, nbytes,
                                                       self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToDevice,
                                                       self.stream), "cudaMemcpyAsync D2D")

    def copy2d(self, dst: int, dpitch: int, src: int, spitch: int, width: int, height: int) -> None:
        check(self.cudart, self.cudart.cudaMemcpy2DAsync(dst, dpitch, src, spitch, width, height,
                                                         self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToDevice,
                                                         self.stream), "cudaMemcpy2DAsync")

    def move_rows(self, buf: DeviceBuffer, src: int, dst: int, count: int) -> None:
        if count <= 0 or src == dst:
            return
        row = buf.nbytes // buf.shape[0]
        n = count * row
        if abs(src - dst) >= count:
            self.copy(buf.ptr + dst * row, buf.ptr + src * row, n)
        else:  # overlapping ranges: through a temporary
            tmp = self.alloc((n,), "uint8", zero=False)
            self.copy(tmp.ptr, buf.ptr + src * row, n)
            self.copy(buf.ptr + dst * row, tmp.ptr, n)

    # ---- KV cache ---------------------------------------------------------------------------------------------
    def kv_append(self, cache: list[DeviceBuffer], new: list[DeviceBuffer], pos) -> None:
        """cache[j][:, :, pos:pos+S] = new[j]: the native kernel (one launch for all layers, position from device
        memory) when the library is built, else one strided 2-D copy per tensor ([rows*kvh] blocks of S*D).
        `new` may also be host arrays (a graph's `run` outputs, as the serving scheduler's prefill passes): uploaded."""
        new = [self._on_device(x, cache[0].dtype) for x in new]
        if self.kernels is not None and hasattr(self.kernels, "kv_append"):
            per_row = bool(np.ndim(pos))
            p = np.atleast_1d(np.asarray(pos, np.int64))
            c0 = cache[0]
            if p.min() < 0 or p.max() + new[0].shape[2] > c0.shape[2]:
                raise InputError(f"KV append at {p.tolist()} outside a cache of {c0.shape[2]}")
            if self._pos_buf is None or self._pos_buf.shape[0] < p.size:
                self._pos_buf = self.alloc((max(p.size, c0.shape[0]),), "int64", zero=False)
            self.write(self._pos_buf, np.resize(p, self._pos_buf.shape))
            self.kernels.kv_append([c.ptr for c in cache], [x.ptr for x in new], new[0].shape[0], c0.shape[1],
                                   c0.shape[2], new[0].shape[2], c0.shape[3], self._pos_buf.ptr, str(c0.dtype),
                                   self.stream, per_row=per_row)
            return
        if np.ndim(pos):  # per-row slots (serving, S == 1)
            for r, p in enumerate(np.asarray(pos).tolist()):
                for c, nw in zip(cache, new):
                    self._kv_copy(c, nw, int(p), row=r)
            return
        for c, nw in zip(cache, new):
            self._kv_copy(c, nw, int(pos))

    def _on_device(self, x, dtype) -> DeviceBuffer:
        if isinstance(x, DeviceBuffer):
            return x
        a = np.ascontiguousarray(x, dtype=dtype)
        buf = self.alloc(a.shape, a.dtype, zero=False)
        self.write(buf, a)
        return buf

    def _kv_copy(self, c: DeviceBuffer, nw: DeviceBuffer, pos: int, row: int | None = None) -> None:
        rows, kvh, max_len, d = c.shape
        s = nw.shape[2]
        if pos < 0 or pos + s > max_len:
            raise InputError(f"KV append at {pos}..{pos + s} outside a cache of {max_len}")
        es = c.dtype.itemsize
        if row is None:
            self.copy2d(c.ptr + pos * d * es, max_len * d * es, nw.ptr, s * d * es, s * d * es, nw.shape[0] * kvh)
        else:
            self.copy2d(c.ptr + (row * kvh * max_len + pos) * d * es, max_len * d * es,
                        nw.ptr + row * kvh * s * d * es, s * d * es, s * d * es, kvh)

    # ---- whole CFG image steps on the device (decode.py's hook) --------------------------------------------------
    def run_image_steps(self, plan) -> np.ndarray | None:
        from .trt_steps import run_image_steps

        return run_image_steps(self, plan)

    def free_memory(self) -> int:
        """Free device memory in bytes (the runtime refuses a request larger than this: memory.check_fits)."""
        return int(check(self.cudart, self.cudart.cudaMemGetInfo(), "cudaMemGetInfo")[0])

    def memory(self) -> dict:
        free, total = check(self.cudart, self.cudart.cudaMemGetInfo(), "cudaMemGetInfo")
        return {"gpu_used_mb": round((total - free) / 2**20, 1), "gpu_total_mb": round(total / 2**20, 1),
                "pool_mallocs": self.pool.mallocs,
                "shared_context_saved_mb": round(sum(g.scratch_saved for g in self.graphs) / 2**20, 1)}


def _load_kernels(cudart, stream: int):
    """The native CUDA library (kv_append with a device position, cfg_sample), probed with one real launch; None
    where it is not built or cannot run (a warning says why), an error under JANUS_EDGE_REQUIRE_NATIVE=1."""
    import warnings

    from . import native

    try:
        kernels = native.load_cuda_lib()
    except BackendUnavailable as e:  # not built, or a load failure
        problem = str(e)
    else:
        problem = native.probe_cuda_lib(kernels, cudart, stream)
    use, warning = native.native_decision(problem, native.require_native())
    if warning and find_library_built():
        warnings.warn(warning, RuntimeWarning, stacklevel=3)
    return kernels if use else None


def find_library_built() -> bool:
    """Warn about a library that exists but fails; a library never built is the documented default: silent."""
    from . import native

    return native.find_library(native.CUDA_LIB) is not None


def _release(cudart, pool: _Pool, stream: int) -> None:
    try:
        cudart.cudaStreamSynchronize(stream)
        pool.release()
        cudart.cudaStreamDestroy(stream)
    except Exception:
        pass
