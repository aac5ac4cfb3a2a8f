"""GPU readiness (issue 23), the parts whose logic runs without a GPU: version support, the REQUIRE_GPU switch, the
native library's fallback decision, TF32 for fp32 graphs, CUDA-graph capture failure handling, shared context
memory sizing, the device finite check (kernel source under the CPU emulator), the greedy near-tie comparison.
The device side of each is a `gpu` test in test_trt_backend.py / test_native_gpu.py."""
from __future__ import annotations

import ctypes as ct
import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest

from janus_edge.errors import BackendUnavailable, NumericalError
from janus_edge.runtime import native, trt_env
from janus_edge.runtime.sampling import check_finite

HERE = os.path.dirname(os.path.abspath(__file__))


# ---- versions ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("runtime,driver,want", [
    (12060, 12060, None), (12060, 12080, None), (13040, 13000, None),
    (12060, 12020, None),  # CUDA minor version compatibility: a 12.x runtime runs on any 12.x driver
    (13040, 0, None),  # no driver at all: the GPU line says it (cudaGetDeviceCount)
    (13040, 12060, "janus-edge[trt-cu12]"),  # cuda-python 13 on JetPack 6 / a 550-570 driver
    (13000, 12080, "supports CUDA 12.8"),
    (14000, 14000, "untested"),
    (11080, 12000, "untested"),
])
def test_cuda_runtime_against_driver(runtime, driver, want):
    got = trt_env.cuda_problem(runtime, driver)
    assert (got is None) if want is None else (want in got), got


def test_probe_names_the_version_mismatch_here_or_none():
    """Here cuda-bindings 13 meets no driver: the line names the GPU problem and no invented version mismatch."""
    cu = trt_env.import_cudart()
    if cu is None:
        pytest.skip("cuda-bindings not installed")
    rt, drv = trt_env.cuda_versions(cu)
    assert rt // 1000 in trt_env.CUDA_MAJORS
    env = trt_env.probe(need_trt=False)
    if drv == 0:
        assert env.problems and "cuda-python is built for CUDA" not in env.problems[0]


# ---- JANUS_EDGE_REQUIRE_GPU=1 ----------------------------------------------------------------------------------------
def _run_pytest(tmp_path, env_value):
    shutil.copy(os.path.join(HERE, "conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "test_x.py").write_text(
        "import pytest\n"
        "@pytest.mark.gpu\n"
        "def test_needs_gpu():\n    pytest.skip('no CUDA GPU here')\n"
        "def test_plain_skip():\n    pytest.skip('not a gpu test')\n")
    env = {k: v for k, v in os.environ.items() if k != "JANUS_EDGE_REQUIRE_GPU"}
    if env_value:
        env["JANUS_EDGE_REQUIRE_GPU"] = env_value
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W",
                           "ignore::pytest.PytestUnknownMarkWarning", str(tmp_path)], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=120)


def test_require_gpu_turns_gpu_skips_into_failures(tmp_path):
    r = _run_pytest(tmp_path, "1")
    assert r.returncode == 1, r.stdout
    assert "1 failed, 1 skipped" in r.stdout and "JANUS_EDGE_REQUIRE_GPU=1 and this gpu test skipped" in r.stdout
    r = _run_pytest(tmp_path, None)
    assert r.returncode == 0 and "2 skipped" in r.stdout, r.stdout


# ---- the native CUDA library: probe result -> decision -------------------------------------------------------------
def test_native_decision_from_the_probe():
    assert native.native_decision(None, False) == (True, None)
    assert native.native_decision(None, True) == (True, None)
    use, warning = native.native_decision("kv_append: CUDA error 35", False)
    assert not use and "CUDA error 35" in warning and "cudaMemcpy2D" in warning
    with pytest.raises(BackendUnavailable, match="JANUS_EDGE_REQUIRE_NATIVE=1 but .*CUDA error 35"):
        native.native_decision("kv_append: CUDA error 35", True)


def test_backend_kernels_fall_back_or_fail_on_a_failing_probe(monkeypatch):
    """_load_kernels with a library whose launch fails (the probe's real result on a too-new build): None and a
    warning, or BackendUnavailable under JANUS_EDGE_REQUIRE_NATIVE=1. The probe is fed, the decision is real."""
    from janus_edge.runtime import trt_backend

    monkeypatch.setattr(native, "load_cuda_lib", lambda: object())
    monkeypatch.setattr(native, "probe_cuda_lib", lambda k, cu, s: "add_i64: CUDA error 35")
    monkeypatch.setattr(native, "find_library", lambda name: "/x/" + name)
    monkeypatch.delenv("JANUS_EDGE_REQUIRE_NATIVE", raising=False)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert trt_backend._load_kernels(None, 0) is None
    assert any("CUDA error 35" in str(x.message) for x in w)
    monkeypatch.setenv("JANUS_EDGE_REQUIRE_NATIVE", "1")
    with pytest.raises(BackendUnavailable, match="REQUIRE_NATIVE"):
        trt_backend._load_kernels(None, 0)


def test_probe_reports_a_launch_that_fails_here():
    """The real probe against the real cuda-bindings on this GPU-less machine: an error string, never an exception."""
    cu = trt_env.import_cudart()
    if cu is None:
        pytest.skip("cuda-bindings not installed")
    if native.find_library(native.CUDA_LIB) is None:
        pytest.skip(native.build_hint(native.CUDA_LIB))
    if trt_env.probe(need_trt=False).ok:
        pytest.skip("a GPU is present: the probe succeeds (test_trt_backend checks that)")
    problem = native.probe_cuda_lib(native.load_cuda_lib(), cu, 0)
    assert problem and "cudaMalloc" in problem


# ---- TF32 -------------------------------------------------------------------------------------------------------------
def test_tf32_is_cleared_for_fp32_graphs_only():
    pytest.importorskip("onnx")
    from janus_edge.export.trt_build import flags_to_clear

    assert flags_to_clear("float32") == ("TF32",)
    assert flags_to_clear("float16") == () and flags_to_clear("bfloat16") == ()


# ---- CUDA-graph capture failure -------------------------------------------------------------------------------------
class _CaptureRecorder:
    """Records the capture calls capture() makes, returning success codes (error handling only: nothing runs, and
    the device side is test_trt_backend.py's gpu test)."""

    class cudaStreamCaptureMode:
        cudaStreamCaptureModeThreadLocal = 1

    def __init__(self, end_error=0):
        self.calls, self.end_error = [], end_error

    def cudaStreamBeginCapture(self, stream, mode):
        self.calls.append("begin")
        return (0,)

    def cudaStreamEndCapture(self, stream):
        self.calls.append("end")
        return (self.end_error, None if self.end_error else "graph")

    def cudaGraphInstantiate(self, graph, flags):
        self.calls.append("instantiate")
        return (0, "exec")

    def cudaGraphDestroy(self, graph):
        self.calls.append("destroy")

    def cudaGetErrorName(self, err):
        return (0, b"cudaErrorStreamCaptureInvalidated")


class _Be:
    stream = 7

    def __init__(self, cu):
        self.cudart = cu


def test_capture_failure_ends_capture_and_keeps_the_original_error():
    from janus_edge.runtime.trt_steps import CaptureFailed, capture

    cu = _CaptureRecorder(end_error=901)  # EndCapture itself fails after the body's error (invalidated capture)

    def body():
        raise RuntimeError("execute_async_v3 failed (see TensorRT's log above)")

    with pytest.raises(CaptureFailed) as e:
        capture(_Be(cu), body)
    assert "execute_async_v3 failed" in str(e.value) and isinstance(e.value.__cause__, RuntimeError)
    assert cu.calls == ["begin", "end"]  # ended, nothing instantiated
    ok = _CaptureRecorder()
    assert capture(_Be(ok), lambda: None) == "exec" and ok.calls == ["begin", "end", "instantiate", "destroy"]
    bad_end = _CaptureRecorder(end_error=901)
    with pytest.raises(CaptureFailed, match="cudaStreamEndCapture failed: cudaErrorStreamCaptureInvalidated"):
        capture(_Be(bad_end), lambda: None)


# ---- shared execution-context memory --------------------------------------------------------------------------------
def test_shared_context_memory_is_the_largest_profile_once():
    from janus_edge.runtime.trt_backend import shared_context_bytes

    assert shared_context_bytes([300, 1200]) == (1200, 1200)  # STATIC: 2 x 1200; shared: 1200
    assert shared_context_bytes([500]) == (500, 0)
    assert shared_context_bytes([]) == (0, 0)


# ---- the device finite check ------------------------------------------------------------------------------------------
def test_device_flag_raises_the_ort_error_word_for_word():
    from janus_edge.runtime.trt_steps import raise_if_nonfinite

    raise_if_nonfinite(0)
    for flag, bad in ((2, np.nan), (1, np.inf)):
        with pytest.raises(NumericalError) as dev:
            raise_if_nonfinite(flag)
        with pytest.raises(NumericalError) as ort:
            check_finite(np.array([[0.0, bad]], np.float32), "image-token")
        assert str(dev.value) == str(ort.value)


@pytest.fixture(scope="module")
def emu():
    path = native.find_library("libjanus_edge_emu.so")
    if path is None:
        pytest.skip(native.build_hint("libjanus_edge_emu.so"))
    lib = ct.CDLL(path)
    if not hasattr(lib, "je_emu_nonfinite"):
        pytest.fail("libjanus_edge_emu.so predates je_emu_nonfinite: rebuild (cmake --build build)")
    lib.je_emu_nonfinite.argtypes = [ct.c_void_p, ct.c_int, ct.c_int64, ct.c_void_p]
    return lib


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_nonfinite_kernel_code_flags_nan_over_inf(emu, dtype):
    """kernels.cu's nonfinite kernel under the CPU emulator: 0 finite, 1 an inf, 2 a NaN (NaN wins), at any index
    of a grid-stride loop; huge finite values and -0.0 are finite."""
    rng = np.random.default_rng(1)
    for n in (1, 300, 70000):
        for poison, want in ((None, 0), (np.inf, 1), (-np.inf, 1), (np.nan, 2), ("both", 2)):
            x = rng.standard_normal(n).astype(dtype)
            x[0] = np.finfo(dtype).max
            x[-1] = -0.0
            i = int(rng.integers(0, n))
            if poison == "both":
                x[i], x[(i + n // 2) % n] = np.inf, np.nan
            elif poison is not None:
                x[i] = poison
            flag = np.zeros(1, np.uint64)
            assert emu.je_emu_nonfinite(x.ctypes.data, 0 if dtype == np.float32 else 1, n, flag.ctypes.data) == 0
            if poison == "both" and n == 1:
                want = 2
            assert int(flag[0]) == want, (n, poison)


# ---- greedy tokens up to a near tie -------------------------------------------------------------------------------------
def test_greedy_divergence_allows_only_near_ties():
    from trt_compare import greedy_divergence, top2_gap

    lg = [np.array([[5.0, 4.9995, 0.0], [1.0, 3.0, 0.0]]), np.array([[1.0, 2.0, 0.0], [0.0, 9.0, 1.0]])]
    assert np.allclose(top2_gap(lg[0]), [0.0005, 2.0])
    want = np.array([[0, 1], [1, 1]])
    assert greedy_divergence(want, want.copy(), lg, 1e-3) is None
    assert greedy_divergence(want, np.array([[1, 0], [1, 1]]), lg, 1e-3) is None  # image 0 flips at a near tie
    msg = greedy_divergence(want, np.array([[0, 1], [0, 1]]), lg, 1e-3)  # image 1 flips with a gap of 2
    assert msg and "image 1 step 0" in msg
    assert "image 0 step 0" in greedy_divergence(want, np.array([[1, 0], [1, 1]]), lg, 1e-4)
