"""What the online Hadamard on down_proj's input (quant/rotate.py online_down, the `rotall-` methods) adds to a
Pro-1B decode step on ONNX Runtime's CPU: the same graph form the rewrite writes, timed against the INT4 down_proj
MatMuls it precedes (issue 25). Random weights; Pro-1B sizes (24 layers, intermediate 5632 = 11 x 512, hidden 2048).

    python -m janus_edge.benchmarks.online_hadamard_cost [--rows 2] [--reps 30] [--out benchmarks/results/...]

Two graphs, each a chain of 24 [rows, 5632] -> INT4 DQ down_proj [5632, 2048] -> INT4 DQ up [2048, 5632] pairs (the
up only carries the chain), one with the online rotation before every down_proj (Reshape -> MatMul H_512 ->
MatMul G^T [11, 11] -> Reshape), one without; both in the bundle's form (fused by ORT into MatMulNBits, accuracy
level 4). Alternating timed runs; the median difference is the rotation's cost per step (all 24 layers).
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def build(layers: int, inter: int, hidden: int, rotate: bool, seed: int = 0):
    from onnx import TensorProto, helper, numpy_helper

    from janus_edge.quant import rotate as R
    from janus_edge.quant.int4 import pack_int4

    rng = np.random.default_rng(seed)
    nodes, inits = [], []

    def int4(name, K, N):
        q = rng.integers(-8, 8, (K, N), dtype=np.int8)
        inits.append(helper.make_tensor(name + "_q", TensorProto.INT4, [K, N], pack_int4(q), raw=True))
        inits.append(numpy_helper.from_array((rng.random((K // 128, N)) * 0.01).astype(np.float32), name + "_s"))
        nodes.append(helper.make_node("DequantizeLinear", [name + "_q", name + "_s"], [name + "_w"], axis=0,
                                      block_size=128))
        return name + "_w"

    Hp, G = R.online_factors(inter)
    if rotate:
        inits += [numpy_helper.from_array(Hp.astype(np.float32), "H"),
                  numpy_helper.from_array(np.ascontiguousarray(G.T).astype(np.float32), "GT"),
                  numpy_helper.from_array(np.array([0, 0, G.shape[0], Hp.shape[0]], np.int64), "split"),
                  numpy_helper.from_array(np.array([0, 0, inter], np.int64), "join")]
    x = "x"
    for i in range(layers):
        if rotate:
            nodes += [helper.make_node("Reshape", [x, "split"], [f"r{i}"]),
                      helper.make_node("MatMul", [f"r{i}", "H"], [f"h{i}"]),
                      helper.make_node("MatMul", ["GT", f"h{i}"], [f"g{i}"]),
                      helper.make_node("Reshape", [f"g{i}", "join"], [f"x{i}r"])]
            x = f"x{i}r"
        nodes.append(helper.make_node("MatMul", [x, int4(f"down{i}", inter, hidden)], [f"y{i}"]))
        nodes.append(helper.make_node("MatMul", [f"y{i}", int4(f"up{i}", hidden, inter)], [f"x{i}"]))
        x = f"x{i}"
    g = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", 1, inter])],
                          [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["rows", 1, inter])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/pro1b_online_hadamard_cpu2")
    a = ap.parse_args(argv)
    import onnxruntime as ort

    from janus_edge.benchmarks.common import write_results
    from janus_edge.runtime.ort_backend import OrtBackend

    sess = {}
    for rot in (False, True):
        so = OrtBackend().options()
        so.intra_op_num_threads = a.threads
        sess[rot] = ort.InferenceSession(build(24, 5632, 2048, rot).SerializeToString(), so,
                                         providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((a.rows, 1, 5632)).astype(np.float32)
    times = {False: [], True: []}
    for _ in range(3):
        for rot in (False, True):
            sess[rot].run(None, {"x": x})
    for _ in range(a.reps):
        for rot in (False, True):
            t = time.perf_counter()
            sess[rot].run(None, {"x": x})
            times[rot].append(1e3 * (time.perf_counter() - t))
    med = {k: float(np.median(v)) for k, v in times.items()}
    res = {"what": "24 x (INT4 down_proj 5632x2048 + INT4 up 2048x5632) per run, with / without the online rotation "
                   "of down_proj's input (Reshape, MatMul H_512, MatMul G^T 11x11, Reshape); ORT CPU, MatMulNBits "
                   "accuracy level 4; random weights", "rows": a.rows, "threads": a.threads, "reps": a.reps,
           "median_ms_without": round(med[False], 3), "median_ms_with": round(med[True], 3),
           "rotation_ms_per_step": round(med[True] - med[False], 3),
           "rotation_share_of_chain": round((med[True] - med[False]) / med[False], 4),
           "constant_bytes_fp32": int(512 * 512 * 4 + 11 * 11 * 4), "machine": "shared 2-core VM (contended)"}
    print(res, file=sys.stderr)
    write_results(res, a.out, lambda r: "\n".join(f"- {k}: {v}" for k, v in r.items()) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
