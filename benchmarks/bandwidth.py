"""The machine's streaming read bandwidth, measured in the same process as the bundle runs.

Method (the floor's denominator): an ONNX Runtime CPU session holding ONE MatMul, input x [2, K] times a weight
initializer W [K, N] of about `mb` MiB fp32 (K = 8192), with the same intra-op thread count as the bundle sessions:
a batch-2 MatMul has 2 FLOP per weight, so it is bound by reading W, exactly as a CFG decode step is bound by reading
the weights. W is handed to ONNX Runtime from memory (`SessionOptions.add_external_initializers`), so building
the probe costs no 1 GB protobuf. Each of `runs` runs times `iters` back-to-back calls; the rate of a run is
bytes(W) * iters / seconds, and the result is the BEST run (the machines here are noisy: the same probe reads
37-50 GB/s across runs; the best is the closest to what the hardware can stream, and a floor taken from a low
sample would give ratios below 1). The single-thread numpy sum rate is recorded for information.
Without `onnx` importable, the probe falls back to numpy (a multi-threaded copy is not available there: the
fallback is numpy's single-thread sum and copy rates, and `method` says so).
"""
from __future__ import annotations

import gc
import time

import numpy as np

K = 8192


def _numpy_rates(mb: int, runs: int) -> dict:
    n = max(1, mb * 2**20 // 4)
    a = np.full(n, 0.5, dtype=np.float32)  # real pages (np.zeros would read one shared zero page)
    b = np.empty_like(a)
    best_sum = best_copy = 0.0
    for _ in range(max(1, runs)):
        t = time.perf_counter()
        a.sum()
        best_sum = max(best_sum, a.nbytes / (time.perf_counter() - t) / 1e9)
        t = time.perf_counter()
        np.copyto(b, a)
        best_copy = max(best_copy, 2 * a.nbytes / (time.perf_counter() - t) / 1e9)  # read + write
    return {"numpy_sum_1thread_gbps": round(best_sum, 2), "numpy_copy_1thread_gbps": round(best_copy, 2),
            "numpy_bytes": int(a.nbytes)}


def _ort_session(n_cols: int, threads: int | None):
    import onnxruntime as ort
    from onnx import TensorProto, helper

    w = np.full((K, n_cols), 0.01, dtype=np.float32)
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, K])
    y_info = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, n_cols])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "bandwidth_probe", [x_info], [y_info])
    init = graph.initializer.add()  # declared external; its bytes come from memory through the session options
    init.name, init.data_type = "w", TensorProto.FLOAT
    init.dims.extend([K, n_cols])
    init.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "w.bin"), ("offset", "0"), ("length", str(w.nbytes))):
        e = init.external_data.add()
        e.key, e.value = key, value
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.log_severity_level = 3
    so.add_external_initializers(["w"], [ort.OrtValue.ortvalue_from_numpy(w)])
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess, w


def measure_bandwidth(mb: int = 1024, threads: int | None = None, runs: int = 7, iters: int = 5) -> dict:
    """-> {"bandwidth_gbps": best, "method": ..., "runs_gbps": [...], ...}."""
    n_cols = max(64, (mb * 2**20) // (4 * K))
    out: dict = {"probe_mb": mb, "threads": threads}
    try:
        import onnx  # noqa: F401
    except ImportError:
        rates = _numpy_rates(mb, runs)
        out.update(rates, bandwidth_gbps=max(rates["numpy_sum_1thread_gbps"], rates["numpy_copy_1thread_gbps"] / 2),
                   method="numpy fallback (onnx is not importable: pip install janus-edge[export]); single-thread "
                          "sum/copy, likely BELOW the machine's multi-thread rate, so floor ratios are optimistic")
        return out
    sess, w = _ort_session(n_cols, threads)
    x = np.ones((2, K), np.float32)
    y = np.empty((2, n_cols), np.float32)
    io = sess.io_binding()
    io.bind_input("x", "cpu", 0, np.float32, list(x.shape), x.ctypes.data)
    io.bind_output("y", "cpu", 0, np.float32, list(y.shape), y.ctypes.data)
    for _ in range(2):  # warm-up: first touches, thread pool start
        sess.run_with_iobinding(io)
    if not np.allclose(y[:, :4], 0.01 * K, rtol=1e-3):
        raise RuntimeError(f"bandwidth probe computed {y[0, :4]}, expected {0.01 * K}")
    rates = []
    for _ in range(max(1, runs)):
        t = time.perf_counter()
        for _ in range(iters):
            sess.run_with_iobinding(io)
        rates.append(w.nbytes * iters / (time.perf_counter() - t) / 1e9)
    nbytes = int(w.nbytes)
    del sess, io, w
    gc.collect()
    out.update(bandwidth_gbps=round(max(rates), 3), runs_gbps=[round(r, 2) for r in rates],
               median_gbps=round(float(np.median(rates)), 3), probe_bytes=nbytes,
               method=f"onnxruntime MatMul [2,{K}] x [{K},{n_cols}] fp32 initializer ({nbytes / 2**20:.0f} MiB), "
                      f"{threads or 'default'} intra-op threads, best of {len(rates)} runs x {iters} calls")
    out.update(_numpy_rates(min(mb, 512), 3))
    return out
