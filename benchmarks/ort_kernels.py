"""What ONNX Runtime's CPU kernels reach on the decode shapes (2-8 rows x K x N), next to the bandwidth probe.

    python -m janus_edge.benchmarks.ort_kernels [--threads 2] [--rows 1 2 8] [--mb 384] [--forms F ...] [--json OUT]

Each form is one session holding L independent weight nodes of one shape (Pro-1B's MLP: 2048x5632 and 5632x2048),
L chosen so the form's weights total >= `--mb` MiB (more than this machine's L3, so they stream from DRAM as the
lm's ~0.7 GB do in a step). One call runs all L nodes on the same input x [rows, K]; the rate of a form is the
bytes of its weight initializers (packed codes + scales, what the graph must read) times calls over seconds, the
best of `--runs` runs of `--iters` calls (as bandwidth.py). `floor_ratio` = probe GB/s / form GB/s (1.0 = at the
floor). The kernel ORT actually ran (after its fusions) is read from a one-node profiled session of the same form.

Forms (`FORMS`): fp32 MatMul; int4 MatMulNBits at block 32/64/128 and accuracy level 1 (fp32 compute) or 4 (int8
compute); the bundle's int4 QDQ form (DequantizeLinear INT4 block -> MatMul, fused at load); 8-bit MatMulNBits
(the int8 bundles' W8A16 form); the int8 bundles' static W8A8 QDQ form (fused into MatMulIntegerToFloat) with and
without `session.x64quantprecision`; DynamicQuantizeMatMul (per-tensor dynamic int8 activation); and the runtime's
thread settings (spinning on, 1 thread) for the fastest int4 / int8 forms. Beside ORT's: `native_q4_*`, the int4
GEMM of libjanus_edge_cpu (runtime/cpu_kernels.py: the same weights and activation quantization as MatMulNBits at
accuracy level 4, AVX-512 VNNI / AVX2 paths) called through ctypes, one call per weight node. Benchmark only:
nothing here is timed in a test.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

SHAPES = {"mlp_up": (2048, 5632), "mlp_down": (5632, 2048)}
RUNTIME_CONFIG = {"session.intra_op.allow_spinning": "0"}  # what runtime/ort_backend.py sets for every graph


def _form(kind, **kw):
    return {"kind": kind, **kw}


FORMS = {
    "fp32": _form("fp32"),
    "int4_b32_acc4": _form("nbits", bits=4, block=32, acc=4),
    "int4_b64_acc4": _form("nbits", bits=4, block=64, acc=4),
    "int4_b128_acc4": _form("nbits", bits=4, block=128, acc=4),
    "int4_b32_acc1": _form("nbits", bits=4, block=32, acc=1),
    "int4_b128_acc1": _form("nbits", bits=4, block=128, acc=1),
    "int4_qdq_b128": _form("qdq4", block=128, config={"session.qdq_matmulnbits_accuracy_level": "4"}),
    "int4_qdq_b32": _form("qdq4", block=32, config={"session.qdq_matmulnbits_accuracy_level": "4"}),
    "int8_nbits_b32_acc4": _form("nbits", bits=8, block=32, acc=4),
    "int8_nbits_b128_acc4": _form("nbits", bits=8, block=128, acc=4),
    "int8_w8a8_qdq_x64prec": _form("w8a8", config={"session.x64quantprecision": "1"}),
    "int8_w8a8_qdq": _form("w8a8"),
    "int8_dynamic": _form("dyn"),
    "int4_b32_acc4_spin": _form("nbits", bits=4, block=32, acc=4, spin=True),
    "int4_b128_acc4_spin": _form("nbits", bits=4, block=128, acc=4, spin=True),
    "int8_w8a8_qdq_spin": _form("w8a8", spin=True),
    "int4_b128_acc4_1thread": _form("nbits", bits=4, block=128, acc=4, threads=1),
    "int8_w8a8_qdq_1thread": _form("w8a8", threads=1),
    "native_q4_b128": _form("native", block=128),
    "native_q4_b128_avx2": _form("native", block=128, isa="avx2"),
    "native_q4_b128_1thread": _form("native", block=128, threads=1),
}


def _nbits_init(rng, K, N, bits, block, i):
    from onnx import numpy_helper

    blob = block * bits // 8
    b = rng.integers(0, 256, size=(N, K // block, blob), dtype=np.uint8)
    s = (rng.random((N * (K // block),), dtype=np.float32) * 0.01 + 0.001).astype(np.float32)
    return [numpy_helper.from_array(b, f"w{i}"), numpy_helper.from_array(s, f"s{i}")]


def _nodes(form, K, N, L, seed=0):
    """-> (nodes, initializers, opset imports) of L weight nodes reading x, outputs y0..y{L-1}."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    kind, nodes, inits = form["kind"], [], []
    for i in range(L):
        y = f"y{i}"
        if kind == "fp32":
            inits.append(numpy_helper.from_array(rng.standard_normal((K, N), dtype=np.float32) * 0.02, f"w{i}"))
            nodes.append(helper.make_node("MatMul", ["x", f"w{i}"], [y]))
        elif kind == "nbits":
            inits += _nbits_init(rng, K, N, form["bits"], form["block"], i)
            nodes.append(helper.make_node("MatMulNBits", ["x", f"w{i}", f"s{i}"], [y], domain="com.microsoft", K=K,
                                          N=N, bits=form["bits"], block_size=form["block"],
                                          accuracy_level=form["acc"]))
        elif kind == "qdq4":
            B = form["block"]
            packed = rng.integers(0, 256, size=(K * N // 2,), dtype=np.uint8)
            t = helper.make_tensor(f"w{i}", TensorProto.INT4, [K, N], packed.tobytes(), raw=True)
            inits += [t, numpy_helper.from_array(rng.random((K // B, N), dtype=np.float32) * 0.01, f"s{i}")]
            nodes += [helper.make_node("DequantizeLinear", [f"w{i}", f"s{i}"], [f"wd{i}"], axis=0, block_size=B),
                      helper.make_node("MatMul", ["x", f"wd{i}"], [y])]
        elif kind == "w8a8":
            inits += [numpy_helper.from_array(rng.integers(-127, 128, (K, N), dtype=np.int8), f"w{i}"),
                      numpy_helper.from_array(rng.random((N,), dtype=np.float32) * 0.001, f"s{i}"),
                      numpy_helper.from_array(np.zeros((N,), np.int8), f"z{i}"),
                      numpy_helper.from_array(np.array(0.02, np.float32), f"sx{i}"),
                      numpy_helper.from_array(np.array(0, np.int8), f"zx{i}")]
            nodes += [helper.make_node("QuantizeLinear", ["x", f"sx{i}", f"zx{i}"], [f"xq{i}"]),
                      helper.make_node("DequantizeLinear", [f"xq{i}", f"sx{i}", f"zx{i}"], [f"xd{i}"]),
                      helper.make_node("DequantizeLinear", [f"w{i}", f"s{i}", f"z{i}"], [f"wd{i}"], axis=1),
                      helper.make_node("MatMul", [f"xd{i}", f"wd{i}"], [y])]
        elif kind == "dyn":
            inits += [numpy_helper.from_array(rng.integers(-127, 128, (K, N), dtype=np.int8), f"w{i}"),
                      numpy_helper.from_array(rng.random((N,), dtype=np.float32) * 0.001, f"s{i}"),
                      numpy_helper.from_array(np.zeros((N,), np.int8), f"z{i}")]
            nodes.append(helper.make_node("DynamicQuantizeMatMul", ["x", f"w{i}", f"s{i}", f"z{i}"], [y],
                                          domain="com.microsoft"))
        else:
            raise ValueError(kind)
    return nodes, inits


def weight_bytes(inits) -> int:
    """Bytes the graph must read per call: every weight initializer (codes, scales, zero points; not the tiny
    scalar activation scales)."""
    return sum(len(t.raw_data) for t in inits if len(t.raw_data) > 64)


def _session(form, K, N, L, threads, profile_dir=None):
    import onnxruntime as ort
    from onnx import TensorProto, helper

    nodes, inits = _nodes(form, K, N, L)
    graph = helper.make_graph(nodes, "ort_kernels", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["r", K])],
                              [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, ["r", N]) for i in range(L)],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    t = form.get("threads", threads)
    if t:
        so.intra_op_num_threads, so.inter_op_num_threads = t, 1
    so.log_severity_level = 3
    cfg = dict(RUNTIME_CONFIG)
    if form.get("spin"):
        cfg["session.intra_op.allow_spinning"] = "1"
    cfg.update(form.get("config", {}))
    for k, v in cfg.items():
        so.add_session_config_entry(k, v)
    if profile_dir:
        so.enable_profiling, so.profile_file_prefix = True, os.path.join(profile_dir, "k")
    nbytes = weight_bytes(inits)
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess, nbytes, cfg


def _native_runner(form, K, N, mb, threads, seed=0):
    """libjanus_edge_cpu's GEMM over L packed int4 weights (one random matrix packed once, L copies in memory, L
    chosen as for the ORT forms) -> (call, weight bytes, L, config)."""
    from janus_edge.runtime.cpu_kernels import PackedQ4, load_cpu_lib

    kern = load_cpu_lib()
    rng = np.random.default_rng(seed)
    B = form["block"]
    p = kern.pack_q4(rng.integers(-8, 8, (K, N)).astype(np.int8),
                     (rng.random((K // B, N), dtype=np.float32) * 0.01 + 0.001).astype(np.float32))
    L = max(1, -(-mb * 2**20 // p.nbytes))
    packed = [PackedQ4(p.data.copy(), p.scales.copy(), K, N, B) for _ in range(L)]
    t, isa = form.get("threads", threads), form.get("isa", kern.best_isa)

    def call(x, y):
        for p in packed:
            kern.gemm_q4(x, p, t, isa, y)
    return call, sum(p.nbytes for p in packed), L, {"isa": isa, "threads": t or kern.default_threads}


def kernels_run(form, K, N, threads) -> list[str]:
    """The op types ORT ran for this form (a one-node session, profiled)."""
    if form["kind"] == "native":
        from janus_edge.runtime.cpu_kernels import load_cpu_lib
        return [f"libjanus_edge_cpu q4 ({form.get('isa', load_cpu_lib().best_isa)})"]
    with tempfile.TemporaryDirectory() as d:
        sess, _, _ = _session(form, K, N, 1, threads, profile_dir=d)
        sess.run(None, {"x": np.ones((2, K), np.float32)})
        with open(sess.end_profiling()) as fh:
            ev = json.load(fh)
    return sorted({e["args"]["op_name"] for e in ev if e.get("cat") == "Node" and "op_name" in e.get("args", {})})


def time_form(name, form, K, N, rows, threads, mb, runs, iters) -> list[dict]:
    if form["kind"] == "native":
        call, nbytes, L, cfg = _native_runner(form, K, N, mb, threads)
    else:
        per = weight_bytes(_nodes(form, K, N, 1)[1])
        L = max(1, -(-mb * 2**20 // per))
        sess, nbytes, cfg = _session(form, K, N, L, threads)

        def call(x, y):
            sess.run(None, {"x": x})
    out = []
    for r in rows:
        x = np.random.default_rng(1).standard_normal((r, K), dtype=np.float32)
        y = np.empty((r, N), np.float32)
        for _ in range(2):
            call(x, y)
        rates = []
        for _ in range(runs):
            t = time.perf_counter()
            for _ in range(iters):
                call(x, y)
            rates.append(nbytes * iters / (time.perf_counter() - t) / 1e9)
        best = max(rates)
        out.append({"form": name, "shape": [K, N], "rows": r, "nodes": L, "weight_bytes": nbytes,
                    "gbps": round(best, 2), "gbps_median": round(float(np.median(rates)), 2),
                    "ms_per_weight": round(nbytes / best / 1e6 / L, 4),
                    "gmacs": round(r * K * N * L / (nbytes / best / 1e9) / 1e9, 1),
                    "threads": form.get("threads", threads), "session_config": cfg})
    return out


def run(forms, rows=(1, 2, 8), threads=2, mb=384, runs=5, iters=3, shapes=None, probe_mb=1024) -> dict:
    from .bandwidth import measure_bandwidth
    from .common import cpu_flags, cpu_model

    import onnxruntime as ort

    load0 = os.getloadavg()
    probe = measure_bandwidth(probe_mb, threads)
    bw = probe["bandwidth_gbps"]
    print(f"bandwidth probe: {bw:.1f} GB/s ({probe['method']})", flush=True)
    results, kernels = [], {}
    for sname, (K, N) in (shapes or SHAPES).items():
        for name in forms:
            f = FORMS[name]
            kernels[name] = kernels_run(f, K, N, threads)
            for row in time_form(name, f, K, N, rows, threads, mb, runs, iters):
                row["floor_ratio"] = round(bw / row["gbps"], 2)
                row["kernels"] = kernels[name]
                results.append(row)
                print(f"{sname:9s} {name:24s} rows {row['rows']}: {row['gbps']:6.1f} GB/s  floor x{row['floor_ratio']:5.2f}"
                      f"  {row['ms_per_weight']:.3f} ms/weight  {row['gmacs']:6.1f} GMAC/s  [{','.join(row['kernels'])}]",
                      flush=True)
    probe2 = measure_bandwidth(probe_mb, threads)
    return {"schema": "janus-edge-ort-kernels/1", "cpu": cpu_model(),
            "cpu_flags": [f for f in cpu_flags() if f.startswith(("avx", "amx", "fma", "f16c"))],
            "onnxruntime": ort.__version__, "threads": threads, "bandwidth_gbps": max(bw, probe2["bandwidth_gbps"]),
            "probe_gbps": [bw, probe2["bandwidth_gbps"]], "loadavg_start": [round(v, 2) for v in load0],
            "loadavg_end": [round(v, 2) for v in os.getloadavg()], "mb_per_form": mb, "runs": runs, "iters": iters,
            "time_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), "results": results}


def markdown(r: dict) -> str:
    rows = sorted({x["rows"] for x in r["results"]})
    lines = [f"# ONNX Runtime {r['onnxruntime']} kernels (and libjanus_edge_cpu's) on the decode shapes ({r['time_utc']} UTC)", "",
             f"CPU: {r['cpu']} ({', '.join(r['cpu_flags'])}); {r['threads']} threads; bandwidth probe {r['probe_gbps']} "
             f"GB/s (ratios use the first, taken before any form: {r['probe_gbps'][0]}); load average {r['loadavg_start']} -> {r['loadavg_end']}; "
             f">= {r['mb_per_form']} MiB of weights per form, best of {r['runs']} x {r['iters']} calls. GB/s = the "
             "form's weight bytes (codes + scales) / time; ratio = probe / GB/s (1.0 = at the floor). Written by "
             "benchmarks/ort_kernels.py.", "",
             "| shape K x N | form | kernels ran | " + " | ".join(f"{n} rows GB/s (ratio)" for n in rows) + " |",
             "|---|---|---|" + "---|" * len(rows)]
    keys = []
    for x in r["results"]:
        k = (tuple(x["shape"]), x["form"])
        if k not in keys:
            keys.append(k)
    for shape, form in keys:
        cells = []
        for n in rows:
            x = next((y for y in r["results"] if tuple(y["shape"]) == shape and y["form"] == form and y["rows"] == n), None)
            cells.append(f"{x['gbps']:.1f} ({x['floor_ratio']:.2f})" if x else "")
        kern = next(y["kernels"] for y in r["results"] if y["form"] == form)
        lines.append(f"| {shape[0]} x {shape[1]} | {form} | {', '.join(kern)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m janus_edge.benchmarks.ort_kernels", description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 2, 8])
    ap.add_argument("--mb", type=int, default=384, help="MiB of weights per form (default 384: more than the L3)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--forms", nargs="+", default=list(FORMS), help="of: " + " ".join(FORMS))
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), help="of: " + " ".join(SHAPES))
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    bad = [f for f in a.forms if f not in FORMS] + [s for s in a.shapes if s not in SHAPES]
    if bad or a.mb < 1 or min(a.rows) < 1:
        print(f"error: unknown form/shape {bad}" if bad else "error: --mb and --rows must be >= 1", file=sys.stderr)
        return 2
    res = run(a.forms, a.rows, a.threads, a.mb, a.runs, a.iters, {s: SHAPES[s] for s in a.shapes})
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(res, fh, indent=1)
            fh.write("\n")
        with open(os.path.splitext(a.json)[0] + ".md", "w") as fh:
            fh.write(markdown(res))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
