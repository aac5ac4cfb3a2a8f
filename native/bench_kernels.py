"""Time the native kernels on a GPU against the bytes they move (python native/bench_kernels.py [--iters N], installed or
from the source tree). Needs cuda-bindings and the built CUDA library. Prints one line per case:
microseconds per call (CUDA events around N launches in a captured graph, so launch overhead is amortised as in the
decode loop) and the DRAM bytes the kernel must move (kv_append: read + write of the new K/V; cfg_sample: one read of
the logits, the later passes hit L2) with the bandwidth that implies."""
from __future__ import annotations

import argparse

import numpy as np


def _source_tree_imports() -> None:
    """Run from an uninstalled checkout too: janus_edge.runtime is the repo's runtime/ (pyproject's package-dir)."""
    import os
    import sys
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, repo)
    import janus_edge
    if repo not in janus_edge.__path__:
        janus_edge.__path__.append(repo)


def main() -> None:
    _source_tree_imports()
    from cuda.bindings import runtime as rt

    from janus_edge.runtime.native import load_cuda_lib

    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=200)
    a = ap.parse_args()
    err, count = rt.cudaGetDeviceCount()
    if err != rt.cudaError_t.cudaSuccess or count == 0:
        raise SystemExit(f"error: no CUDA GPU here ({err})")
    k = load_cuda_lib()

    def ok(res):
        err, *rest = res
        assert err == rt.cudaError_t.cudaSuccess, err
        return rest[0] if len(rest) == 1 else None

    stream = ok(rt.cudaStreamCreate())
    s = int(stream)

    def alloc(nbytes, fill=None):
        p = int(ok(rt.cudaMalloc(nbytes)))
        if fill is not None:
            arr = np.ascontiguousarray(fill)
            ok(rt.cudaMemcpy(p, arr.ctypes.data, arr.nbytes, rt.cudaMemcpyKind.cudaMemcpyHostToDevice))
        return p

    def timed(launch) -> float:
        launch()                                            # warm up, then capture `iters` launches in one graph
        ok(rt.cudaStreamSynchronize(stream))
        ok(rt.cudaStreamBeginCapture(stream, rt.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal))
        for _ in range(a.iters):
            launch()
        graph = ok(rt.cudaStreamEndCapture(stream))
        gexec = ok(rt.cudaGraphInstantiate(graph, 0))
        e0, e1 = ok(rt.cudaEventCreate()), ok(rt.cudaEventCreate())
        ok(rt.cudaGraphLaunch(gexec, stream))
        ok(rt.cudaEventRecord(e0, stream))
        ok(rt.cudaGraphLaunch(gexec, stream))
        ok(rt.cudaEventRecord(e1, stream))
        ok(rt.cudaEventSynchronize(e1))
        ms = ok(rt.cudaEventElapsedTime(e0, e1))
        return ms * 1000 / a.iters

    def report(name, us, nbytes):
        print(f"{name:58s} {us:8.2f} us  {nbytes / 1e6:8.3f} MB  {nbytes / us / 1e3:7.1f} GB/s")

    zero = alloc(8, np.zeros(1, np.int64))
    # kv_append: Pro-1B (24 layers, 16 kv heads, D 128) and Pro-7B (30 layers, 32 kv heads), one step, fp16/fp32
    for name, layers, kvh in [("pro-1b", 24, 16), ("pro-7b", 30, 32)]:
        for rows in (2, 32):
            for dtype, es in [("float16", 2), ("float32", 4)]:
                max_len, d = 640, 128
                cache = [alloc(rows * kvh * max_len * d * es) for _ in range(2 * layers)]
                new = [alloc(rows * kvh * d * es) for _ in range(2 * layers)]
                us = timed(lambda: k.kv_append(cache, new, rows, kvh, max_len, 1, d, zero, dtype, s))
                report(f"kv_append {name} rows={rows} {dtype}", us, 2 * 2 * layers * rows * kvh * d * es)
                for p in cache + new:
                    rt.cudaFree(p)
    # cfg_sample: image vocab 16384 with CFG (n images), chat vocab 102400
    rng = np.random.default_rng(0)
    cases = [("plain", 1.0, None, None), ("top-k 4000", 1.0, 4000, None), ("top-p 0.9", 1.0, None, 0.9),
             ("top-k 4000 + top-p 0.9", 1.0, 4000, 0.9), ("greedy", 0.0, None, None)]
    for n, v, uncond, dtype in [(1, 16384, True, "float32"), (16, 16384, True, "float32"), (1, 16384, True, "float16"),
                                (1, 102400, False, "float32")]:
        rows = 2 * n if uncond else n
        x = (rng.normal(size=(rows, v)) * 3).astype(dtype)
        lp, op = alloc(x.nbytes, x), alloc(8 * rows)
        for label, t, tk, tp in cases:
            us = timed(lambda: k.cfg_sample(lp, n, v, uncond, 5.0, t, tk, tp, 1, zero, op, 2 if uncond else 1, s,
                                            dtype))
            report(f"cfg_sample n={n} V={v} {dtype} {label}", us, x.nbytes + 8 * rows)
        rt.cudaFree(lp)
        rt.cudaFree(op)


if __name__ == "__main__":
    main()
