"""The CPU int4 decode GEMM of libjanus_edge_cpu (native/src/cpu_q4.cpp) through numpy, and its numpy twin.

    kern = load_cpu_lib()                      # BackendUnavailable when the library is not built
    packed = kern.pack_q4(w, scale)            # w int8 [K, N] in [-8, 7], scale float32 [K/B, N]
    y = kern.gemm_q4(a, packed, threads=2)     # a float32 [M, K] -> y float32 [M, N]

`w` and `scale` are the bundles' INT4 weight form (DequantizeLinear(axis=0, block_size=B), zero point 0): the
codes of an INT4 initializer and its scale. The activations are quantized per row and block of B to int8 (what
ONNX Runtime's MatMulNBits does at accuracy level 4) and the products summed exactly in int32; `gemm_q4_twin` is the
same arithmetic in numpy, which every path (`ISAS`) must match bit for bit. Paths: "avx512vnni", "avx2", "plain";
the library picks the best the CPU has (`best_isa`), a test or benchmark may name a lower one.
"""
from __future__ import annotations

import ctypes as ct
import functools
from dataclasses import dataclass

import numpy as np

from janus_edge.errors import InputError

from .native import _open, _ptr, _sig

CPU_LIB = "libjanus_edge_cpu.so"
ISAS = ("plain", "avx2", "avx512vnni")  # index = the library's isa number
_P, _I, _I64 = ct.c_void_p, ct.c_int, ct.c_int64


@dataclass(frozen=True)
class PackedQ4:
    """A K x N int4 matrix in the kernel's layout (16-column tiles, contiguous per tile)."""
    data: np.ndarray      # uint8 [je_q4_packed_bytes]
    scales: np.ndarray    # float32 [je_q4_packed_scales]
    K: int
    N: int
    block: int

    @property
    def nbytes(self) -> int:
        return self.data.nbytes + self.scales.nbytes


class CpuKernels:
    def __init__(self, lib: ct.CDLL):
        self.lib = lib
        _sig(lib.je_cpu_best_isa, _I)
        _sig(lib.je_cpu_default_threads, _I)
        _sig(lib.je_q4_packed_bytes, _I64, _I, _I, _I)
        _sig(lib.je_q4_packed_scales, _I64, _I, _I, _I)
        _sig(lib.je_q4_pack, _I, _P, _P, _I, _I, _I, _P, _P)
        _sig(lib.je_q4_scratch_bytes, _I64, _I, _I, _I)
        _sig(lib.je_q4_gemm, _I, _P, _I, _I, _P, _P, _I, _I, _P, _I, _I, _P)

    @property
    def best_isa(self) -> str:
        return ISAS[self.lib.je_cpu_best_isa()]

    @property
    def isas(self) -> tuple[str, ...]:
        """The paths this CPU runs, best last."""
        return ISAS[: self.lib.je_cpu_best_isa() + 1]

    @property
    def default_threads(self) -> int:
        """Threads a call with threads=0 uses (the CPUs this process may run on)."""
        return self.lib.je_cpu_default_threads()

    def pack_q4(self, w: np.ndarray, scale: np.ndarray) -> PackedQ4:
        w = np.ascontiguousarray(w, np.int8)
        scale = np.ascontiguousarray(scale, np.float32)
        if w.ndim != 2 or scale.ndim != 2 or scale.shape[1] != w.shape[1] or scale.shape[0] == 0 \
                or w.shape[0] % scale.shape[0]:
            raise InputError(f"int4 weights [K, N] and scales [K/B, N] expected, got {w.shape} and {scale.shape}")
        K, N = w.shape
        B = K // scale.shape[0]
        nbytes = self.lib.je_q4_packed_bytes(K, N, B)
        if nbytes < 0:
            raise InputError(f"int4 GEMM: K {K} must be a multiple of the block {B}, and the block of 8")
        data = np.empty(nbytes, np.uint8)
        scales = np.empty(self.lib.je_q4_packed_scales(K, N, B), np.float32)
        rc = self.lib.je_q4_pack(_ptr(w), _ptr(scale), K, N, B, _ptr(data), _ptr(scales))
        if rc == -2:
            raise InputError("int4 weights must lie in [-8, 7]")
        return PackedQ4(data, scales, K, N, B)

    def gemm_q4(self, a: np.ndarray, p: PackedQ4, threads: int = 0, isa: str | None = None,
                out: np.ndarray | None = None) -> np.ndarray:
        a = np.ascontiguousarray(a, np.float32)
        if a.ndim != 2 or a.shape[1] != p.K:
            raise InputError(f"activations [M, {p.K}] expected, got {a.shape}")
        M = a.shape[0]
        y = np.empty((M, p.N), np.float32) if out is None else out
        code = -1 if isa is None else ISAS.index(isa)
        rc = self.lib.je_q4_gemm(_ptr(a), M, p.K, _ptr(p.data), _ptr(p.scales), p.N, p.block, _ptr(y), threads,
                                 code, None)
        if rc == -3:
            raise InputError(f"this CPU cannot run the {isa} path (it has: {', '.join(self.isas)})")
        if rc:
            raise InputError(f"int4 GEMM refused its sizes (M {M}, K {p.K}, N {p.N}, block {p.block})")
        return y


def quantize_rows_twin(a: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """a float32 [M, K] -> (qa int32 [M, nb, B], sa float32 [M, nb]): symmetric int8 per row and block."""
    M, K = a.shape
    blocks = a.reshape(M, K // block, block).astype(np.float32)
    amax = np.where(np.isnan(blocks), 0, np.abs(blocks)).max(axis=2)   # NaN skipped (and quantized to 0)
    with np.errstate(divide="ignore"):
        inv = np.where(amax > 0, np.float32(127) / amax, np.float32(0)).astype(np.float32)
    q = np.rint(blocks * inv[:, :, None]).astype(np.float32)
    q = np.nan_to_num(q, nan=0.0)
    q = np.clip(q, -127, 127).astype(np.int32)
    return q, (amax / np.float32(127)).astype(np.float32)


def gemm_q4_twin(a: np.ndarray, w: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The kernel's arithmetic in numpy (float32, blocks summed in order, no fused multiply-add)."""
    K, N = w.shape
    B = K // scale.shape[0]
    qa, sa = quantize_rows_twin(np.asarray(a, np.float32), B)
    wb = w.astype(np.int32).reshape(K // B, B, N)
    y = np.zeros((a.shape[0], N), np.float32)
    for b in range(K // B):
        d = (qa[:, b, :] @ wb[b]).astype(np.float32)           # exact: |d| < 2**24
        s = scale[b][None, :].astype(np.float32) * sa[:, b][:, None]
        y = (y + d * s).astype(np.float32)
    return y


@functools.lru_cache(maxsize=None)
def load_cpu_lib() -> CpuKernels:
    return CpuKernels(_open(CPU_LIB, "je_cpu"))
