"""The CUDA kernels on a real GPU (through cuda-bindings): against the host library and numpy, against the ORT
backend's tokens for a fixed seed, and captured in a CUDA graph and replayed. Skipped without a GPU, cuda-bindings
or the built CUDA library. Memory checks: `compute-sanitizer --tool memcheck python -m pytest -m gpu
tests/test_native_gpu.py` (also `--tool racecheck` and `--tool synccheck`).
"""
import numpy as np
import pytest

from janus_edge.errors import BackendUnavailable
from janus_edge.runtime import native
from janus_edge.runtime.sampling import SamplingConfig, SeededSampler, cfg_combine, sample
from test_native_host import CASES, _logits

pytestmark = pytest.mark.gpu


class Dev:
    """Just enough of cuda.bindings.runtime: checked calls, device buffers as (ptr, nbytes), one stream."""

    def __init__(self, rt):
        self.rt, self.bufs = rt, []
        self.stream = self.ok(rt.cudaStreamCreate())

    def ok(self, res):
        err, *rest = res if isinstance(res, tuple) else (res,)
        assert err == self.rt.cudaError_t.cudaSuccess, err
        return rest[0] if len(rest) == 1 else (rest or None)

    @property
    def s(self) -> int:
        return int(self.stream)

    def alloc(self, nbytes: int) -> int:
        p = self.ok(self.rt.cudaMalloc(max(nbytes, 1)))
        self.bufs.append(p)
        return int(p)

    def put(self, a: np.ndarray, ptr: int | None = None) -> int:
        a = np.ascontiguousarray(a)
        ptr = self.alloc(a.nbytes) if ptr is None else ptr
        self.ok(self.rt.cudaMemcpy(ptr, a.ctypes.data, a.nbytes, self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice))
        return ptr

    def get(self, ptr: int, shape, dtype) -> np.ndarray:
        out = np.empty(shape, dtype)
        self.ok(self.rt.cudaStreamSynchronize(self.stream))
        self.ok(self.rt.cudaMemcpy(out.ctypes.data, ptr, out.nbytes, self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost))
        return out

    def sync(self):
        self.ok(self.rt.cudaStreamSynchronize(self.stream))

    def close(self):
        for p in self.bufs:
            self.rt.cudaFree(p)
        self.rt.cudaStreamDestroy(self.stream)


@pytest.fixture(scope="module")
def gpu():
    rt = pytest.importorskip("cuda.bindings.runtime", reason="cuda-bindings not installed")
    err, n = rt.cudaGetDeviceCount()
    if err != rt.cudaError_t.cudaSuccess or n == 0:
        pytest.skip(f"no CUDA GPU here ({err})")
    try:
        k = native.load_cuda_lib()
    except BackendUnavailable as e:
        pytest.skip(str(e))
    d = Dev(rt)
    yield k, d
    d.close()


@pytest.fixture(scope="module")
def host():
    try:
        return native.load_host_lib()
    except BackendUnavailable as e:
        pytest.skip(str(e))


def _run_kernel(k, d, x, n, has_uncond, w, cfg, seed, step, rows):
    lp, sp = d.put(x), d.put(np.array([step], np.int64))
    op = d.put(np.full(rows * n, -7, np.int64))
    k.cfg_sample(lp, n, x.shape[1], has_uncond, w, cfg.temperature, cfg.top_k, cfg.top_p, seed, sp, op, rows,
                 d.s, dtype=x.dtype.name)
    return d.get(op, rows * n, np.int64)


@pytest.mark.parametrize("v,n,has_uncond,dtype,kind,cfg", CASES)
def test_cfg_sample_kernel_equals_host_and_numpy(gpu, host, v, n, has_uncond, dtype, kind, cfg):
    k, d = gpu
    rng = np.random.default_rng(v + n)
    x = _logits(rng, 2 * n if has_uncond else n, v, kind, dtype)
    for step in range(8):
        seed = int(rng.integers(0, 2**64, dtype=np.uint64))
        got = _run_kernel(k, d, x, n, has_uncond, 5.0, cfg, seed, step, 2)
        want = host.cfg_sample(x, n, has_uncond, 5.0, cfg.temperature, cfg.top_k, cfg.top_p, seed, step, 2, "radix")
        l = cfg_combine(x[:n], x[n:], 5.0) if has_uncond else x
        assert np.array_equal(got, want), (step, got, want)
        assert np.array_equal(got, np.tile(sample(l, cfg, SeededSampler(seed), step), 2))


def test_kernel_tokens_equal_the_ort_backend_for_a_fixed_seed(gpu, request, monkeypatch):
    """Run the ORT pipeline with a seed, record each step's logits, and let the kernel sample them: same tokens."""
    from janus_edge import Pipeline
    from janus_edge.runtime import decode
    k, d = gpu
    tiny_bundle = request.getfixturevalue("tiny_bundle")  # after `gpu`: no bundle export where the test skips
    seen, real = [], decode.sample

    def spy(logits, cfg, rng, step=0, images=None):
        out = real(logits, cfg, rng, step, images)
        seen.append((np.array(logits, np.float32), step, out))
        return out

    monkeypatch.setattr(decode, "sample", spy)
    p = Pipeline.from_bundle(tiny_bundle, threads=1)
    for cfg in [SamplingConfig(1.0), SamplingConfig(0.9, top_k=50, top_p=0.9)]:
        seen.clear()
        res = p.generate_image("a red fox", n=2, seed=1234, temperature=cfg.temperature, top_k=cfg.top_k,
                               top_p=cfg.top_p, decode=False)
        assert len(seen) == res.tokens.shape[1]
        for logits, step, want in seen:
            got = _run_kernel(k, d, logits, 2, False, 1.0, cfg, 1234, step, 1)
            assert np.array_equal(got, want), step


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int8])
def test_kv_append_kernel_equals_host(gpu, host, dtype):
    k, d = gpu
    rng = np.random.default_rng(0)
    rows, kvh, max_len, hd, seq, L = 4, 3, 40, 64, 3, 5
    mk = lambda *s: (rng.normal(size=s) * 50).astype(dtype)
    cache = [mk(rows, kvh, max_len, hd) for _ in range(2 * L)]
    new = [mk(rows, kvh, seq, hd) for _ in range(2 * L)]
    cp, npp = [d.put(c) for c in cache], [d.put(n) for n in new]
    for pos, per_row in [(np.array([11]), False), (np.array([0, 5, 37, 20]), True), (np.array([38]), False)]:
        pp = d.put(pos.astype(np.int64))
        k.kv_append(cp, npp, rows, kvh, max_len, seq, hd, pp, np.dtype(dtype).name, d.s, per_row=per_row)
        try:
            host.kv_append(cache, new, pos if per_row else int(pos[0]), per_row=per_row)
        except ValueError:  # out of range: neither writes
            pass
        for c, ptr in zip(cache, cp):
            assert np.array_equal(d.get(ptr, c.shape, dtype), c)


def test_kv_append_kernel_prefill_chunk_larger_than_one_grid(gpu, host):
    """A prefill chunk of 2M copy units: more than one grid-stride round (4096 blocks x 256 threads)."""
    k, d = gpu
    rng = np.random.default_rng(2)
    rows, kvh, max_len, hd, seq = 32, 32, 200, 128, 128
    cache = [np.zeros((rows, kvh, max_len, hd), np.float16) for _ in range(2)]
    new = [rng.normal(size=(rows, kvh, seq, hd)).astype(np.float16) for _ in range(2)]
    cp, npp = [d.put(c) for c in cache], [d.put(n) for n in new]
    k.kv_append(cp, npp, rows, kvh, max_len, seq, hd, d.put(np.array([50], np.int64)), "float16", d.s)
    host.kv_append(cache, new, 50)
    for c, ptr in zip(cache, cp):
        assert np.array_equal(d.get(ptr, c.shape, np.float16), c)


def _warm_up(k, d, rows, kvh, max_len, hd, n, V) -> None:
    """Launch every kernel the capture records once, on scratch buffers, and wait: with lazy module loading
    (CUDA_MODULE_LOADING=LAZY, the default since CUDA 12.2) a kernel's first launch loads its module, which a
    stream capture may not do."""
    cache, new = d.alloc(rows * kvh * max_len * hd * 2), d.alloc(rows * kvh * hd * 2)
    pos, step = d.put(np.array([0], np.int64)), d.put(np.array([0], np.int64))
    logits, out = d.put(np.zeros((2 * n, V), np.float32)), d.alloc(rows * 8)
    k.kv_append([cache], [new], rows, kvh, max_len, 1, hd, pos, "float16", d.s)
    k.cfg_sample(logits, n, V, True, 3.0, 1.0, 0, 1.0, 0, step, out, rows, d.s)
    k.add_i64(pos, 1, 1, d.s)
    if getattr(k, "nonfinite", None) is not None:
        k.nonfinite(logits, 2 * n * V, d.put(np.zeros(1, np.uint64)), "float32", d.s)
    d.sync()


def test_kernels_in_a_captured_cuda_graph_replay_with_new_positions_and_steps(gpu, host):
    k, d = gpu
    rt = d.rt
    rng = np.random.default_rng(3)
    rows, kvh, max_len, hd, L, n, V, seed = 2, 2, 16, 32, 3, 1, 4096, 77
    cfg = SamplingConfig(1.0, top_k=300, top_p=0.9)
    cache = [np.zeros((rows, kvh, max_len, hd), np.float16) for _ in range(2 * L)]
    cp = [d.put(c) for c in cache]
    newp = [d.alloc(rows * kvh * hd * 2) for _ in range(2 * L)]
    pos, step = d.put(np.array([0], np.int64)), d.put(np.array([0], np.int64))
    logits = d.alloc(2 * n * V * 4)
    out = d.put(np.zeros(rows, np.int64))
    _warm_up(k, d, rows, kvh, max_len, hd, n, V)  # first launches load modules: never inside a capture
    d.ok(rt.cudaStreamBeginCapture(d.stream, rt.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal))
    k.kv_append(cp, newp, rows, kvh, max_len, 1, hd, pos, "float16", d.s)
    k.cfg_sample(logits, n, V, True, 3.0, cfg.temperature, cfg.top_k, cfg.top_p, seed, step, out, rows, d.s)
    k.add_i64(pos, 1, 1, d.s)
    k.add_i64(step, 1, 1, d.s)
    graph = d.ok(rt.cudaStreamEndCapture(d.stream))
    gexec = d.ok(rt.cudaGraphInstantiate(graph, 0))
    try:
        for i in range(6):
            new = [(rng.normal(size=(rows, kvh, 1, hd))).astype(np.float16) for _ in range(2 * L)]
            x = _logits(rng, 2 * n, V, "ties" if i % 2 else "normal")
            for a, p in zip(new, newp):
                d.put(a, p)
            d.put(x, logits)
            d.ok(rt.cudaGraphLaunch(gexec, d.stream))
            d.sync()
            for c, a in zip(cache, new):
                c[:, :, i:i + 1] = a
            for c, p in zip(cache, cp):
                assert np.array_equal(d.get(p, c.shape, np.float16), c)
            want = host.cfg_sample(x, n, True, 3.0, cfg.temperature, cfg.top_k, cfg.top_p, seed, i, rows, "radix")
            assert np.array_equal(d.get(out, rows, np.int64), want), i
        assert d.get(step, 1, np.int64)[0] == 6 and d.get(pos, 1, np.int64)[0] == 6
    finally:
        rt.cudaGraphExecDestroy(gexec)
        rt.cudaGraphDestroy(graph)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_nonfinite_kernel_flags_nan_over_inf(gpu, dtype):
    k, d = gpu
    if getattr(k, "nonfinite", None) is None:
        pytest.fail("the CUDA library lacks je_cuda_nonfinite: rebuild it (cmake --build build)")
    for poison, want in ((None, 0), (np.inf, 1), (-np.inf, 1), (np.nan, 2)):
        x = np.random.default_rng(0).standard_normal((3, 5000)).astype(dtype)
        if poison is not None:
            x[2, 4321] = poison
        flag = d.put(np.zeros(1, np.uint64))
        k.nonfinite(d.put(x), x.size, flag, np.dtype(dtype).name, d.s)
        assert int(d.get(flag, 1, np.uint64)[0]) == want, (poison, dtype)
