"""ctypes bindings of the native libraries that CMakeLists.txt builds (no compiler is needed at `pip install`):

    cmake -S . -B build && cmake --build build -j

- `load_host_lib()` -> HostLib: the kernels' math compiled for the CPU from the same header
  (native/include/janus_edge/sampling_math.h); the tests compare it with the numpy twin (runtime/sampling.py).
- `load_cuda_lib()` -> CudaKernels: `kv_append` (every layer's new K/V into the cache in one launch, positions read
  from a device int64) and `cfg_sample` (CFG + temperature + top-k + top-p + one Philox draw per image; the token
  goes to every row of its image in an int64 [rows, 1] device buffer). Device pointers and streams are ints. Both
  read their moving parts (position, step) from device memory, so a captured CUDA graph replays them unchanged;
  `add_i64` advances those counters inside the graph.

Libraries are looked up in $JANUS_EDGE_NATIVE_DIR (os.pathsep-separated folders), then in <repo>/build. A missing
library raises BackendUnavailable saying how to build it.
"""
from __future__ import annotations

import ctypes as ct
import functools
import os
from collections.abc import Sequence

import numpy as np

from janus_edge.errors import BackendUnavailable

HOST_LIB, CUDA_LIB = "libjanus_edge_host.so", "libjanus_edge_cuda.so"
ABI_VERSION = 1
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ELEM_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "int8": 1, "uint8": 1, "float8": 1}
LOGIT_DTYPES = {"float32": 0, "float16": 1}
ALGOS = {"sort": 0, "radix": 1}

_P, _I, _I64, _U64, _F, _D = ct.c_void_p, ct.c_int, ct.c_int64, ct.c_uint64, ct.c_float, ct.c_double


def search_dirs() -> list[str]:
    env = os.environ.get("JANUS_EDGE_NATIVE_DIR", "")
    return [d for d in env.split(os.pathsep) if d] + [os.path.join(REPO, "build")]


def find_library(name: str) -> str | None:
    for d in search_dirs():
        p = os.path.join(d, name)
        if os.path.isfile(p):
            return p
    return None


def build_hint(name: str) -> str:
    return (f"{name} not found in {search_dirs()}: build it with `cmake -S {REPO} -B {REPO}/build && "
            f"cmake --build {REPO}/build -j` (the CUDA library needs nvcc), or set JANUS_EDGE_NATIVE_DIR to the "
            f"folder that holds it")


def _open(name: str, prefix: str) -> ct.CDLL:
    path = find_library(name)
    if path is None:
        raise BackendUnavailable(build_hint(name))
    try:
        lib = ct.CDLL(path)
    except OSError as e:
        raise BackendUnavailable(f"cannot load {path}: {e}") from None
    version = getattr(lib, f"{prefix}_abi_version")()
    if version != ABI_VERSION:
        raise BackendUnavailable(f"{path} has ABI version {version}, this runtime needs {ABI_VERSION}: rebuild it")
    return lib


def _sig(fn, res, *args):
    fn.restype, fn.argtypes = res, list(args)
    return fn


def _ptr(a: np.ndarray) -> int:
    return a.ctypes.data


def sampling_args(temperature: float, top_k: int | None, top_p: float | None) -> tuple[float, int, float]:
    """SamplingConfig fields -> the C arguments (top_k 0 and top_p 1.0 mean off)."""
    return float(temperature), int(top_k or 0), float(1.0 if top_p is None else top_p)


class HostLib:
    """The host library through numpy arrays (tests and tools; the runtime samples with runtime/sampling.py)."""

    def __init__(self, lib: ct.CDLL):
        self.lib = lib
        _sig(lib.je_host_philox, None, _P, _P, _I, _P)
        _sig(lib.je_host_draws, None, _U64, _P, _P, _I64, _P)
        _sig(lib.je_host_u01, None, _P, _I64, _P)
        _sig(lib.je_host_expf, None, _P, _I64, _P)
        _sig(lib.je_host_weights, None, _P, _I64, _F, _F, _P)
        _sig(lib.je_host_order_keys, None, _P, _I64, _P)
        _sig(lib.je_host_cfg_combine, None, _P, _P, _I64, _F, _P)
        _sig(lib.je_host_cfg_sample, _I, _P, _I, _I, _I, _I, _F, _F, _I, _D, _U64, _I64, _P, _I, _I)
        _sig(lib.je_host_kv_append, _I, _P, _P, _I, _I, _I, _I, _I, _I, _I, _P, _I)
        _sig(lib.je_host_kept, _I, _P, _I, _F, _I, _D, _I, _P)

    def philox(self, ctr: Sequence[int], key: Sequence[int], rounds: int = 10) -> np.ndarray:
        c, k, out = np.asarray(ctr, np.uint32), np.asarray(key, np.uint32), np.zeros(4, np.uint32)
        self.lib.je_host_philox(_ptr(c), _ptr(k), rounds, _ptr(out))
        return out

    def draws(self, seed: int, steps, images) -> np.ndarray:
        st, im = np.broadcast_arrays(np.asarray(steps, np.int64), np.asarray(images, np.uint32))
        st, im = np.ascontiguousarray(st).ravel(), np.ascontiguousarray(im).ravel()
        out = np.zeros(st.size, np.uint32)
        self.lib.je_host_draws(seed, _ptr(st), _ptr(im), st.size, _ptr(out))
        return out

    def _map(self, fn, x: np.ndarray, out_dtype, *extra) -> np.ndarray:
        out = np.zeros(x.size, out_dtype)
        fn(_ptr(x), x.size, *extra, _ptr(out))
        return out

    def u01(self, words) -> np.ndarray:
        return self._map(self.lib.je_host_u01, np.ascontiguousarray(words, np.uint32).ravel(), np.float32)

    def expf(self, x) -> np.ndarray:
        return self._map(self.lib.je_host_expf, np.ascontiguousarray(x, np.float32).ravel(), np.float32)

    def weights(self, l, l_max: float, temperature: float) -> np.ndarray:
        return self._map(self.lib.je_host_weights, np.ascontiguousarray(l, np.float32).ravel(), np.uint32,
                         l_max, temperature)

    def cfg_combine(self, cond, uncond, w: float) -> np.ndarray:
        c, u = np.ascontiguousarray(cond, np.float32).ravel(), np.ascontiguousarray(uncond, np.float32).ravel()
        out = np.zeros(c.size, np.float32)
        self.lib.je_host_cfg_combine(_ptr(c), _ptr(u), c.size, w, _ptr(out))
        return out

    def order_keys(self, l) -> np.ndarray:
        return self._map(self.lib.je_host_order_keys, np.ascontiguousarray(l, np.float32).ravel(), np.uint64)

    def cfg_sample(self, logits: np.ndarray, n_images: int, has_uncond: bool, cfg_weight: float, temperature: float,
                   top_k: int | None, top_p: float | None, seed: int, step: int, rows_per_image: int = 1,
                   algo: str = "sort") -> np.ndarray:
        """logits [n (+ n uncond), V] float32/float16 -> int64 [rows_per_image * n] (row r holds image r % n)."""
        x = np.ascontiguousarray(logits)
        if x.dtype.name not in LOGIT_DTYPES or x.ndim != 2 or x.shape[0] != n_images * (2 if has_uncond else 1):
            raise ValueError(f"logits must be float32/float16 [{n_images * (2 if has_uncond else 1)}, V], "
                             f"got {x.dtype} {x.shape}")
        out = np.zeros(rows_per_image * n_images, np.int64)
        t, k, p = sampling_args(temperature, top_k, top_p)
        rc = self.lib.je_host_cfg_sample(_ptr(x), LOGIT_DTYPES[x.dtype.name], n_images, x.shape[1], int(has_uncond),
                                         cfg_weight, t, k, p, seed, step, _ptr(out), rows_per_image, ALGOS[algo])
        if rc:
            raise ValueError(f"je_host_cfg_sample rejected its arguments (rc {rc})")
        return out

    def kept(self, logits: np.ndarray, temperature: float, top_k: int | None, top_p: float | None,
             algo: str = "sort") -> np.ndarray:
        """One row [V] -> bool mask of the tokens top-k and top-p keep (steps 5-6 of the definition)."""
        x = np.ascontiguousarray(logits, np.float32).ravel()
        mask = np.zeros(x.size, np.uint8)
        t, k, p = sampling_args(temperature, top_k, top_p)
        if self.lib.je_host_kept(_ptr(x), x.size, t, k, p, ALGOS[algo], _ptr(mask)):
            raise ValueError("je_host_kept rejected its arguments")
        return mask.astype(bool)

    def kv_append(self, cache: list[np.ndarray], new: list[np.ndarray], pos, per_row: bool = False) -> None:
        """cache[j] [rows, kvh, max_len, D] <- new[j] [rows, kvh, seq, D] at pos (an int, or per-row positions)."""
        rows, kvh, max_len, d = cache[0].shape
        seq, es = new[0].shape[2], cache[0].dtype.itemsize
        for c, n in zip(cache, new):
            if not (c.flags.c_contiguous and n.flags.c_contiguous) or c.dtype != n.dtype or \
                    c.shape != cache[0].shape or n.shape != (rows, kvh, seq, d):
                raise ValueError("kv_append: contiguous caches of one shape and dtype, new [rows, kvh, seq, D]")
        cp = (ct.c_void_p * len(cache))(*[_ptr(c) for c in cache])
        np_ = (ct.c_void_p * len(new))(*[_ptr(n) for n in new])
        positions = np.ascontiguousarray(np.atleast_1d(np.asarray(pos, np.int64)))
        rc = self.lib.je_host_kv_append(cp, np_, len(cache), rows, kvh, max_len, seq, d, es, _ptr(positions),
                                        int(per_row))
        if rc:
            raise ValueError(f"je_host_kv_append: {'position out of range' if rc == -2 else 'bad argument'}")


class CudaKernels:
    """The CUDA library. Pointers (device memory) and `stream` (a cudaStream_t, 0 = legacy default) are ints."""

    def __init__(self, lib: ct.CDLL):
        self.lib = lib
        _sig(lib.je_cuda_kv_append, _I, _P, _P, _I, _I, _I, _I, _I, _I, _I, _P, _I, _P)
        _sig(lib.je_cuda_cfg_sample, _I, _P, _I, _I, _I, _I, _F, _F, _I, _D, _U64, _P, _P, _I, _P)
        _sig(lib.je_cuda_add_i64, _I, _P, _I, _I64, _P)
        _sig(lib.je_cuda_broadcast_i64, _I, _P, _I, _P, _I64, _P)
        if hasattr(lib, "je_cuda_nonfinite"):  # a library built before it: no device sampling (trt_steps.py)
            _sig(lib.je_cuda_nonfinite, _I, _P, _I, _I64, _P, _P)
        else:
            self.nonfinite = None

    @staticmethod
    def _check(rc: int, what: str) -> None:
        if rc == -1:
            raise ValueError(f"{what}: bad argument")
        if rc:
            raise RuntimeError(f"{what}: CUDA error {rc}")

    def kv_append(self, cache_ptrs: Sequence[int], new_ptrs: Sequence[int], rows: int, kv_heads: int, max_len: int,
                  seq: int, head_dim: int, pos_ptr: int, dtype: str, stream: int = 0, per_row: bool = False) -> None:
        """Every tensor new_ptrs[j] [rows, kv_heads, seq, head_dim] into cache_ptrs[j] [rows, kv_heads, max_len,
        head_dim] at the position held by the device int64 at pos_ptr ([rows] of them with per_row), one launch
        (per 128 tensors). Out-of-range positions write nothing."""
        if len(cache_ptrs) != len(new_ptrs) or not cache_ptrs:
            raise ValueError("kv_append: as many cache pointers as new-K/V pointers, at least one")
        cp = (ct.c_void_p * len(cache_ptrs))(*cache_ptrs)
        np_ = (ct.c_void_p * len(new_ptrs))(*new_ptrs)
        self._check(self.lib.je_cuda_kv_append(cp, np_, len(cache_ptrs), rows, kv_heads, max_len, seq, head_dim,
                                               ELEM_BYTES[dtype], pos_ptr, int(per_row), stream), "kv_append")

    def cfg_sample(self, logits_ptr: int, n_images: int, vocab: int, has_uncond: bool, cfg_weight: float,
                   temperature: float, top_k: int | None, top_p: float | None, seed: int, step_ptr: int,
                   out_tokens_ptr: int, rows_per_image: int, stream: int = 0, dtype: str = "float32") -> None:
        """logits [n (+ n uncond), vocab] -> the token of image i into out_tokens[i + j*n, 0] (int64) for every
        j < rows_per_image; the draw is Philox (seed, step = *step_ptr, image i), as in runtime/sampling.py."""
        t, k, p = sampling_args(temperature, top_k, top_p)
        self._check(self.lib.je_cuda_cfg_sample(logits_ptr, LOGIT_DTYPES[dtype], n_images, vocab, int(has_uncond),
                                                cfg_weight, t, k, p, seed, step_ptr, out_tokens_ptr, rows_per_image,
                                                stream), "cfg_sample")

    def add_i64(self, ptr: int, n: int, delta: int, stream: int = 0) -> None:
        """ptr[0..n) += delta on the device (advance the step counter / positions inside a captured graph)."""
        self._check(self.lib.je_cuda_add_i64(ptr, n, delta, stream), "add_i64")

    def broadcast_i64(self, dst_ptr: int, n: int, src_ptr: int, offset: int = 0, stream: int = 0) -> None:
        """dst[0..n) = *src + offset on the device (e.g. position_ids [rows, 1] from the device position)."""
        self._check(self.lib.je_cuda_broadcast_i64(dst_ptr, n, src_ptr, offset, stream), "broadcast_i64")


    def nonfinite(self, x_ptr: int, n: int, flag_ptr: int, dtype: str = "float32", stream: int = 0) -> None:
        """*flag (a device uint64) = max(*flag, 2 if x[0..n) holds a NaN, 1 if an inf): the finite check of logits
        that only the device sampler reads. The caller zeroes the flag per request and reads it once at the end."""
        self._check(self.lib.je_cuda_nonfinite(x_ptr, LOGIT_DTYPES[dtype], n, flag_ptr, stream), "nonfinite")


REQUIRE_NATIVE_ENV = "JANUS_EDGE_REQUIRE_NATIVE"


def probe_cuda_lib(kernels: "CudaKernels", cudart, stream: int) -> str | None:
    """One real launch (add_i64 on a device int64, read back): None when the library runs on this GPU and driver,
    else why not. A library built by a toolkit newer than the driver loads fine and fails every launch
    (cudaErrorInsufficientDriver, 35): loading alone proves nothing."""
    from .trt_env import check

    ptr = None
    try:
        ptr = int(check(cudart, cudart.cudaMalloc(8), "cudaMalloc(8)"))
        check(cudart, cudart.cudaMemsetAsync(ptr, 0, 8, stream), "cudaMemsetAsync")
        kernels.add_i64(ptr, 1, 41, stream)
        out = np.zeros(1, np.int64)
        check(cudart, cudart.cudaMemcpyAsync(out.ctypes.data, ptr, 8, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost,
                                             stream), "cudaMemcpyAsync D2H")
        check(cudart, cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        if int(out[0]) != 41:
            return f"the probe kernel wrote {int(out[0])}, expected 41"
        return None
    except (RuntimeError, ValueError) as e:
        return str(e)
    finally:
        if ptr is not None:
            cudart.cudaFree(ptr)


def native_decision(problem: str | None, require: bool) -> tuple[bool, str | None]:
    """(use the native CUDA library?, warning to print) from the probe's result (None: it works). With
    JANUS_EDGE_REQUIRE_NATIVE=1 a library that is missing or fails its probe is an error, never a fallback."""
    if problem is None:
        return True, None
    if require:
        raise BackendUnavailable(f"{REQUIRE_NATIVE_ENV}=1 but the native CUDA library cannot run here: {problem}")
    return False, (f"the native CUDA library cannot run here ({problem}); using the cudaMemcpy2D KV append and host "
                   f"sampling instead (rebuild it with this machine's CUDA toolkit: cmake -S . -B build)")


def require_native() -> bool:
    return os.environ.get(REQUIRE_NATIVE_ENV) == "1"


@functools.lru_cache(maxsize=None)
def load_host_lib() -> HostLib:
    return HostLib(_open(HOST_LIB, "je_host"))


@functools.lru_cache(maxsize=None)
def load_cuda_lib() -> CudaKernels:
    return CudaKernels(_open(CUDA_LIB, "je_cuda"))
