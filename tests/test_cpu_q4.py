"""The CPU int4 decode GEMM (libjanus_edge_cpu, issue 26): every path this CPU has against the numpy twin, bit for
bit, and against ONNX Runtime's MatMulNBits (accuracy level 4) on the same weights, within float summation order.

Needs the native build (`cmake -S . -B build && cmake --build build`); skips without it, except under
JANUS_EDGE_REQUIRE_NATIVE=1 (CI builds it), where a missing library fails. Speed lives in
`python -m janus_edge.benchmarks.ort_kernels --forms native_q4_b128 int4_b128_acc4`, never here.
"""
import os
import time

import numpy as np
import pytest

from native_libs import load_or_skip

from janus_edge.errors import InputError
from janus_edge.runtime import cpu_kernels, native
from janus_edge.runtime.cpu_kernels import gemm_q4_twin

# (rows, K, N, block): 1-13 rows (row chunks of 8 for AVX-512, 4 for AVX2), a last tile of 1-15 columns, blocks 32-128
SHAPES = [(1, 256, 16, 128), (2, 384, 40, 128), (3, 256, 48, 32), (8, 512, 64, 64), (9, 256, 33, 128),
          (13, 128, 17, 32), (2, 2048, 96, 128), (40, 192, 32, 24), (20, 128, 16, 8)]   # blocks of 24, 8: plain quantizer


@pytest.fixture(scope="module")
def kern():
    return load_or_skip(cpu_kernels.load_cpu_lib, "CPU kernel library")


def _case(rows, K, N, B, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.integers(-8, 8, (K, N)).astype(np.int8)
    s = (rng.random((K // B, N)) * 0.01 + 1e-3).astype(np.float32)
    a = rng.standard_normal((rows, K)).astype(np.float32)
    a[0, :B] *= 1e3            # one loud block next to quiet ones (per-block activation scales)
    if rows > 2:
        a[1] = 0.0             # an all-zero row (amax 0)
    return a, w, s


def _dequant_matmul(a, w, s):
    K, N = w.shape
    B = K // s.shape[0]
    return a.astype(np.float64) @ (w.astype(np.float64).reshape(K // B, B, N) * s[:, None, :]).reshape(K, N)


def test_library_is_built_when_required(kern):
    assert native.find_library(cpu_kernels.CPU_LIB)
    assert kern.best_isa in kern.isas


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_every_path_equals_the_twin(kern, shape):
    a, w, s = _case(*shape)
    want = gemm_q4_twin(a, w, s)
    packed = kern.pack_q4(w, s)
    for isa in kern.isas:
        got = kern.gemm_q4(a, packed, threads=2, isa=isa)
        assert got.dtype == np.float32 and got.shape == want.shape
        assert np.array_equal(got, want), f"{isa}: max |diff| {np.abs(got - want).max()}"


def test_nan_activations_are_defined(kern):
    """NaN activations (a broken model upstream) quantize to 0 and leave their block's scale to the other values,
    on every path (the plain quantizer for blocks of 8, the AVX-512 one for blocks of 16k)."""
    for B in (8, 64):
        a, w, s = _case(3, 256, 32, B, seed=5)
        a[0, 3], a[2, B:2 * B] = np.nan, np.nan      # one NaN; one all-NaN block
        want = gemm_q4_twin(a, w, s)
        assert np.isfinite(want).all()
        packed = kern.pack_q4(w, s)
        for isa in kern.isas:
            assert np.array_equal(kern.gemm_q4(a, packed, isa=isa), want), (B, isa)


def test_threads_do_not_change_the_bits(kern):
    a, w, s = _case(2, 512, 16 * 7 + 5, 64)
    packed = kern.pack_q4(w, s)
    one = kern.gemm_q4(a, packed, threads=1)
    for t in (2, 3, 0):
        assert np.array_equal(kern.gemm_q4(a, packed, threads=t), one)


def test_the_thread_pool_under_many_calls(kern):
    """Thousands of back-to-back calls, thread counts changing (workers created mid-run, more threads than CPUs) and
    rows crossing the parallel-quantize threshold: every result exact (a worker that missed a call hung this)."""
    a, w, s = _case(20, 256, 64, 128, seed=7)
    want = gemm_q4_twin(a, w, s)
    packed = kern.pack_q4(w, s)
    for i in range(3000):
        rows = (1, 2, 17, 20)[i % 4]
        got = kern.gemm_q4(a[:rows], packed, threads=(1, 2, 3, 5, 0)[i % 5])
        assert np.array_equal(got, want[:rows]), i


def test_twin_is_the_dequantized_product_up_to_activation_rounding(kern):
    a, w, s = _case(4, 1024, 64, 128, seed=3)
    exact = _dequant_matmul(a, w, s)
    got = kern.gemm_q4(a, kern.pack_q4(w, s))
    err = np.abs(got - exact).max() / np.abs(exact).max()
    assert 1e-5 < err < 0.02, err      # int8 activations: ~0.5-1% of the output scale, never exact


def _ort_matmulnbits(a, w, s):
    """The same weights as ONNX Runtime's MatMulNBits (4 bits, zero point 8, accuracy level 4)."""
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    K, N = w.shape
    B = K // s.shape[0]
    codes = (w.astype(np.int16) + 8).astype(np.uint8).T.reshape(N, K // B, B)
    blob = (codes[:, :, 0::2] | (codes[:, :, 1::2] << 4)).astype(np.uint8)
    node = helper.make_node("MatMulNBits", ["x", "w", "s"], ["y"], domain="com.microsoft", K=K, N=N, bits=4,
                            block_size=B, accuracy_level=4)
    graph = helper.make_graph([node], "q4", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", N])],
                              initializer=[numpy_helper.from_array(blob, "w"),
                                           numpy_helper.from_array(np.ascontiguousarray(s.T).ravel(), "s")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": a})[0]


@pytest.mark.parametrize("shape", [(2, 2048, 256, 128), (8, 512, 64, 32), (1, 384, 48, 128)],
                         ids=lambda s: "x".join(map(str, s)))
def test_matches_onnxruntime_matmulnbits(kern, shape):
    """ORT's kernel quantizes the activations the same way: the two differ by float summation order only (~3e-7 of
    the output scale measured), 10^4 x less than either differs from the unquantized product."""
    a, w, s = _case(*shape, seed=1)
    ours = kern.gemm_q4(a, kern.pack_q4(w, s))
    theirs = _ort_matmulnbits(a, w, s)
    scale = np.abs(_dequant_matmul(a, w, s)).max()
    assert np.abs(ours - theirs).max() <= 1e-5 * scale


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_gets_its_own_threads(kern):
    """After fork() the child has none of the parent's pool threads: a multi-threaded call there must still finish
    (a stale pool would wait forever for workers that do not exist)."""
    a, w, s = _case(4, 256, 64, 128)
    packed = kern.pack_q4(w, s)
    want = kern.gemm_q4(a, packed, threads=2)          # the parent's pool now has a worker
    pid = os.fork()
    if pid == 0:
        ok = np.array_equal(kern.gemm_q4(a, packed, threads=2), want)
        os._exit(0 if ok else 1)
    for _ in range(200):                                 # 20 s at most
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.1)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    pytest.fail("the forked child's GEMM call did not finish in 20 s")


def test_bad_input_is_refused(kern):
    a, w, s = _case(2, 256, 16, 128)
    with pytest.raises(InputError, match=r"\[-8, 7\]"):
        kern.pack_q4(np.full_like(w, 9), s)
    with pytest.raises(InputError, match="multiple"):
        kern.pack_q4(np.zeros((260, 16), np.int8), np.ones((13, 16), np.float32))   # blocks of 20
    for scales in (s[:, :8], np.ones((3, 16), np.float32)):                          # 256 rows in 3 blocks
        with pytest.raises(InputError, match="scales"):
            kern.pack_q4(w, scales)
    packed = kern.pack_q4(w, s)
    with pytest.raises(InputError, match=r"\[M, 256\]"):
        kern.gemm_q4(a[:, :128], packed)
    with pytest.raises(ValueError):
        kern.gemm_q4(a, packed, isa="neon")
