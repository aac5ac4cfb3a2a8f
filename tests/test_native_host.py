"""The host library (the CUDA kernels' header compiled for the CPU) against the numpy twin, bit for bit.

Needs `cmake -S . -B build && cmake --build build` (or JANUS_EDGE_NATIVE_DIR); skips without it, except under
JANUS_EDGE_REQUIRE_NATIVE=1 (CI builds it), where a missing library fails.
"""
import os
import shutil
import subprocess

import numpy as np
import pytest

from janus_edge.errors import BackendUnavailable
from janus_edge.runtime import native
from janus_edge.runtime.philox import draw_u32, u01
from janus_edge.runtime.sampling import (SamplingConfig, SeededSampler, cfg_combine, exp_f32, kept_mask, order_keys,
                                         sample, sanitize, weights)
from native_libs import load_or_skip
from test_philox import KAT

REQUIRED = os.environ.get("JANUS_EDGE_REQUIRE_NATIVE") == "1"


@pytest.fixture(scope="module")
def host():
    return load_or_skip(native.load_host_lib, "host library")


def test_host_library_is_built_when_required(host):
    assert native.find_library(native.HOST_LIB)


@pytest.mark.parametrize("rounds,ctr,key,want", KAT)
def test_known_answers(host, rounds, ctr, key, want):
    assert host.philox(ctr, key, rounds).tolist() == list(want)


def test_draws_equal_numpy(host):
    rng = np.random.default_rng(0)
    for seed in [0, 1, 2**63 + 12345, 2**64 - 1]:
        steps = rng.integers(0, 2**40, size=500)
        images = rng.integers(0, 64, size=500)
        assert np.array_equal(host.draws(seed, steps, images), draw_u32(seed, steps, images))
    w = draw_u32(5, np.arange(1000), 0)
    assert np.array_equal(host.u01(w), u01(w))


def test_exp_bits_equal_numpy(host):
    x = np.concatenate([-np.linspace(0, 70, 300_001), [-np.inf, -0.0, -1e-45, -63.99999, -64.0, -64.00001]])
    x = x.astype(np.float32)
    assert np.array_equal(host.expf(x).view(np.uint32), exp_f32(x).view(np.uint32))


def test_weights_and_keys_equal_numpy(host):
    rng = np.random.default_rng(1)
    l = (rng.normal(size=5000) * 8).astype(np.float32)
    l[::97] = -np.inf
    l[1::50] = np.round(l[1::50])
    l[5] = -0.0
    for t in [1.0, 0.37, 5.0, 1e-30, 1e-44, 3e38]:
        lmax = np.float32(l.max())
        assert np.array_equal(host.weights(l, lmax, t), weights(l, lmax, np.float32(t)).astype(np.uint32)), t
    assert np.array_equal(host.order_keys(l), order_keys(l))
    c, u = l[::-1].copy(), (rng.normal(size=l.size) * 8).astype(np.float32)
    c[3], u[4], c[6], u[6] = np.nan, np.inf, -np.inf, -np.inf
    for w in [5.0, 1.5, 1.0, 0.0]:
        assert np.array_equal(host.cfg_combine(c, u, w).view(np.uint32), cfg_combine(c, u, w).view(np.uint32)), w


def _numpy_tokens(x, n, has_uncond, w, cfg, seed, step, rows):
    l = cfg_combine(x[:n], x[n:], w) if has_uncond else x
    return np.tile(sample(l, cfg, SeededSampler(seed), step), rows)


def _logits(rng, rows, v, kind, dtype=np.float32):
    x = rng.normal(size=(rows, v)) * 3
    if kind == "ties":       # many exact ties, also at the top
        x = np.round(x)
    elif kind == "masked":   # -inf logits, one row nearly all masked
        x[:, rng.random(v) < 0.3] = -np.inf
        x[0, :-3] = -np.inf
    elif kind == "peaked":   # one dominant token: top-p often keeps a single token
        x[:, 7] += 25
    return x.astype(dtype)


CASES = [  # (vocab, n_images, has_uncond, dtype, logits kind, SamplingConfig)
    (300, 2, True, np.float32, "normal", SamplingConfig(1.0)),
    (300, 2, True, np.float32, "ties", SamplingConfig(1.0, top_k=40)),
    (300, 3, False, np.float32, "ties", SamplingConfig(0.8, top_k=40, top_p=0.9)),
    (300, 2, True, np.float16, "normal", SamplingConfig(1.3, top_p=0.7)),
    (500, 2, False, np.float32, "masked", SamplingConfig(1.0, top_k=100, top_p=0.95)),
    (500, 1, True, np.float32, "peaked", SamplingConfig(1.0, top_p=0.5)),
    (257, 2, False, np.float32, "normal", SamplingConfig(1.0, top_k=1)),
    (257, 2, False, np.float32, "ties", SamplingConfig(1.0, top_k=1000)),
    (257, 2, False, np.float32, "normal", SamplingConfig(1e-30)),
    (257, 2, False, np.float32, "normal", SamplingConfig(1e-60)),       # rounds to 0 in float32: greedy
    (257, 2, False, np.float32, "ties", SamplingConfig(1e-44)),         # a denormal float32 temperature
    (257, 2, True, np.float32, "ties", SamplingConfig(1.0, top_k=1, top_p=0.5)),
    (257, 2, False, np.float32, "normal", SamplingConfig(0.0)),
    (16384, 2, True, np.float16, "normal", SamplingConfig(1.0, top_k=4000, top_p=0.9)),
    (102400, 1, False, np.float32, "normal", SamplingConfig(0.7, top_p=0.8)),
]


@pytest.mark.parametrize("v,n,has_uncond,dtype,kind,cfg", CASES)
def test_cfg_sample_equals_numpy(host, v, n, has_uncond, dtype, kind, cfg):
    rng = np.random.default_rng(v + n)
    x = _logits(rng, 2 * n if has_uncond else n, v, kind, dtype)
    steps = range(12) if v < 10_000 else range(2)
    for step in steps:
        seed = int(rng.integers(0, 2**64, dtype=np.uint64))
        want = _numpy_tokens(x, n, has_uncond, 5.0, cfg, seed, step, 2)
        for algo in ["sort", "radix"]:
            got = host.cfg_sample(x, n, has_uncond, 5.0, cfg.temperature, cfg.top_k, cfg.top_p, seed, step,
                                  rows_per_image=2, algo=algo)
            assert np.array_equal(got, want), (algo, step, got, want)
    if cfg.greedy:
        l = cfg_combine(x[:n], x[n:], 5.0) if has_uncond else x.astype(np.float32)
        assert np.array_equal(want[:n], l.argmax(-1))


@pytest.mark.parametrize("kind", ["normal", "ties", "masked", "peaked", "zeros"])
def test_kept_sets_equal_numpy_exactly(host, kind):
    """Steps 5-6 alone: the tokens top-k / top-p keep, numpy vs the sort and the radix-descent (kernel) algorithms."""
    rng = np.random.default_rng(len(kind))
    v = 300
    rows = np.zeros((4, v), np.float32) if kind == "zeros" else _logits(rng, 4, v, kind)
    for row in sanitize(rows):
        for t in [1.0, 0.5, 1e-30]:
            for k in [None, 1, 2, 40, v - 1]:
                for p in [None, 0.3, 0.9, 1.0]:
                    cfg = SamplingConfig(t, k, p)
                    want = kept_mask(row, cfg)[0]
                    if p is None and k is not None:
                        assert want.sum() == k
                    for algo in ["sort", "radix"]:
                        assert np.array_equal(host.kept(row, t, k, p, algo), want), (t, k, p, algo)


def test_top_p_edges_exact(host):
    x = np.zeros((1, 6), np.float32)          # six equal weights 2**31: W = 6 * 2**31
    def seen(p):
        return {int(host.cfg_sample(x, 1, False, 1, 1.0, None, p, 9, s, algo="radix")[0]) for s in range(200)}
    assert seen(0.5) == {0, 1, 2}             # prefix mass exactly p: stop there
    assert seen(0.5 + 1e-9) == {0, 1, 2, 3}   # one token over p
    assert seen(1.0) == set(range(6))
    assert seen(1e-12) == {0}


def test_all_minus_inf_and_bad_arguments(host):
    x = np.full((1, 10), -np.inf, np.float32)
    assert host.cfg_sample(x, 1, False, 1, 1.0, 5, 0.5, 1, 0).tolist() == [0]
    with pytest.raises(ValueError):
        host.cfg_sample(np.zeros((2, 4), np.float32), 1, True, 5, -1.0, None, None, 0, 0)
    with pytest.raises(ValueError):
        host.cfg_sample(np.zeros((3, 4), np.float32), 1, True, 5, 1.0, None, None, 0, 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int8])
def test_kv_append_equals_numpy_slices(host, dtype):
    rng = np.random.default_rng(0)
    rows, kvh, max_len, d, seq = 4, 3, 20, 16, 5
    mk = lambda *s: (rng.normal(size=s) * 50).astype(dtype)
    cache = [mk(rows, kvh, max_len, d) for _ in range(6)]
    new = [mk(rows, kvh, seq, d) for _ in range(6)]
    want = [c.copy() for c in cache]
    for c, n in zip(want, new):
        c[:, :, 7:7 + seq] = n
    host.kv_append(cache, new, 7)
    assert all(np.array_equal(a, b) for a, b in zip(cache, want))
    pos = np.array([0, 3, 15, 9])             # per-row positions (continuous batching)
    for c, n in zip(want, new):
        for r, p in enumerate(pos):
            c[r, :, p:p + seq] = n[r]
    host.kv_append(cache, new, pos, per_row=True)
    assert all(np.array_equal(a, b) for a, b in zip(cache, want))
    with pytest.raises(ValueError, match="out of range"):
        host.kv_append(cache, new, max_len - seq + 1)
    assert all(np.array_equal(a, b) for a, b in zip(cache, want))   # nothing written


def test_missing_libraries_say_how_to_build(monkeypatch, tmp_path):
    monkeypatch.setattr(native, "REPO", str(tmp_path))
    monkeypatch.setenv("JANUS_EDGE_NATIVE_DIR", str(tmp_path / "nowhere"))
    for load, name in [(native.load_host_lib.__wrapped__, native.HOST_LIB),
                       (native.load_cuda_lib.__wrapped__, native.CUDA_LIB)]:
        with pytest.raises(BackendUnavailable, match=f"{name} not found.*cmake -S"):
            load()


def _no_gpu() -> bool:
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        return False
    return cudart.cudaGetDeviceCount()[0] != cudart.cudaError_t.cudaSuccess


def test_cuda_library_loads_and_reports_no_gpu():
    """Where CI built the CUDA library on a machine without a GPU: it loads, and a launch returns the CUDA error."""
    if native.find_library(native.CUDA_LIB) is None:
        pytest.skip("CUDA library not built (needs nvcc)")
    if not _no_gpu():
        pytest.skip("a GPU is present (or cuda-bindings is missing): tests/test_native_gpu.py covers it")
    k = native.load_cuda_lib()
    with pytest.raises(RuntimeError, match="CUDA error"):
        k.add_i64(0x1000, 1, 1)
    with pytest.raises(ValueError):
        k.cfg_sample(0, 1, 16, False, 1.0, 1.0, None, None, 0, 0x1000, 0x1000, 1)


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not installed")
def test_cmake_configures_without_nvcc_and_says_why(tmp_path):
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k not in ("CUDACXX", "CUDA_PATH", "CUDA_HOME")}
    env["PATH"] = "/usr/bin:/bin"
    if shutil.which("nvcc", path=env["PATH"]):
        pytest.skip("nvcc is in /usr/bin: cannot hide it")
    r = subprocess.run([shutil.which("cmake"), "-S", repo, "-B", str(tmp_path / "b")], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "CUDA library: not built: no CUDA compiler found" in r.stdout


# ---- the kernels' own source (native/src/kernels.cu) run on the CPU under native/emu/'s emulator ------------------
@pytest.fixture(scope="module")
def emu():
    import ctypes as ct
    path = native.find_library("libjanus_edge_emu.so")
    if path is None:
        if REQUIRED:
            pytest.fail(f"JANUS_EDGE_REQUIRE_NATIVE=1 but {native.build_hint('libjanus_edge_emu.so')}")
        pytest.skip(native.build_hint("libjanus_edge_emu.so"))
    lib = ct.CDLL(path)
    P, I = ct.c_void_p, ct.c_int
    lib.je_emu_cfg_sample.argtypes = [P, I, I, I, I, ct.c_float, ct.c_float, I, ct.c_double, ct.c_uint64, P, P, I]
    lib.je_emu_kv_append.argtypes = [P, P, I, I, I, I, I, I, I, P, I]
    return lib


@pytest.mark.parametrize("v,n,has_uncond,dtype,kind,cfg", CASES)
def test_kernel_code_equals_host_library(emu, host, v, n, has_uncond, dtype, kind, cfg):
    rng = np.random.default_rng(v + n + 1)
    x = np.ascontiguousarray(_logits(rng, 2 * n if has_uncond else n, v, kind, dtype))
    for step in range(2 if v < 10_000 else 1):
        seed = int(rng.integers(0, 2**64, dtype=np.uint64))
        st, out = np.array([step], np.int64), np.full(2 * n, -7, np.int64)
        t, k, p = native.sampling_args(cfg.temperature, cfg.top_k, cfg.top_p)
        assert emu.je_emu_cfg_sample(x.ctypes.data, native.LOGIT_DTYPES[x.dtype.name], n, v, has_uncond, 5.0, t, k,
                                     p, seed, st.ctypes.data, out.ctypes.data, 2) == 0
        want = host.cfg_sample(x, n, has_uncond, 5.0, cfg.temperature, cfg.top_k, cfg.top_p, seed, step, 2)
        assert np.array_equal(out, want), (step, out, want)


@pytest.mark.parametrize("dtype,offset,vec", [(np.float32, 0, 16), (np.float16, 0, 16), (np.int8, 0, 16),
                                              (np.float16, 8, 8), (np.float16, 2, 2), (np.int8, 1, 1)])
def test_kv_kernel_code_equals_host_library(emu, host, dtype, offset, vec):
    import ctypes as ct
    rng = np.random.default_rng(1)
    rows, kvh, max_len, d, seq, L = 3, 2, 12, 16, 2, 3
    es = np.dtype(dtype).itemsize

    def mk(*shape):  # arrays placed `offset` bytes past a 16-byte boundary: every copy width gets used
        raw = np.zeros(int(np.prod(shape)) * es + 32, np.uint8)
        start = (-raw.ctypes.data) % 16 + offset
        a = raw[start:start + int(np.prod(shape)) * es].view(dtype).reshape(shape)
        a[...] = (rng.normal(size=shape) * 50).astype(dtype)
        return a

    cache, new = [mk(rows, kvh, max_len, d) for _ in range(2 * L)], [mk(rows, kvh, seq, d) for _ in range(2 * L)]
    want = [c.copy() for c in cache]
    for pos, per_row in [(np.array([4]), False), (np.array([0, 9, 3]), True), (np.array([11]), False)]:
        try:
            host.kv_append(want, new, pos if per_row else int(pos[0]), per_row=per_row)
        except ValueError:
            pass  # out of range: neither writes
        cp = (ct.c_void_p * len(cache))(*[c.ctypes.data for c in cache])
        np_ = (ct.c_void_p * len(new))(*[a.ctypes.data for a in new])
        pp = pos.astype(np.int64)
        assert emu.je_emu_kv_append(cp, np_, len(cache), rows, kvh, max_len, seq, d, es, pp.ctypes.data,
                                    int(per_row)) == vec
        assert all(np.array_equal(a, b) for a, b in zip(cache, want))
