"""Where a text-to-image decode step spends its time: ONNX Runtime's profiler on the step's graphs.

    python -m janus_edge.benchmarks.profile_lm BUNDLE [--steps 6] [--warmup 2] [--threads T] [--json OUT]

Opens the bundle with `enable_profiling` on the sessions of gen_embed, lm and gen_head, runs the prefill and
warm-up + `steps` decode steps (the cache allocated at its full final length, as in `bench`), and aggregates the
profiler's node events of the timed steps only: milliseconds per step by graph, by op type, and by the role of
the lm's nodes (attention projections, MLP, attention over the cache, norms/rotary/elementwise), plus the top
nodes. Profiling adds a little overhead per node; compare shares, not absolute times, with `bench`.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections import defaultdict

import numpy as np

from .common import StopAfter, ms
from .ours import DEFAULT_PROMPT

PROFILED = ("gen_embed", "lm", "gen_head")
# Every ORT session owns an intra-op thread pool whose threads spin after each run; with 2 cores, the pools of
# gen_head / gen_embed spin while lm runs (and back). `--spin` tries the runtime without that (benchmark only).
SPIN = {"default": "the runtime's sessions as they are", "lm": "the lm's threads spin, the other graphs' sleep",
        "off-all": "no spinning in any graph"}
PROJ = re.compile(r"(q_proj|k_proj|v_proj|o_proj)")
MLP = re.compile(r"(gate_proj|up_proj|down_proj|mlp)")


WEIGHT_OPS = ("MatMul", "Gemm", "FusedMatMul", "MatMulNBits", "MatMulInteger", "DynamicQuantizeMatMul",
              "MatMulIntegerToFloat", "QLinearMatMul")


def _role(node: str, op: str) -> str:
    if op in WEIGHT_OPS:
        if PROJ.search(node):
            return "attention projections (q/k/v/o)"
        if MLP.search(node):
            return "MLP (gate/up/down)"
        return "attention over the KV cache (QK^T, PV)"
    if op in ("Softmax",):
        return "attention over the KV cache (softmax)"
    if op in ("SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization", "LayerNormalization",
              "RMSNormalization"):
        return "norms"
    if op in ("QuantizeLinear", "DynamicQuantizeLinear", "DequantizeLinear"):
        return "activation (de)quantize"
    return "other (rotary, mask, elementwise, shape)"


def _backend(threads, prof_dir, spin: str = "default"):
    from janus_edge.runtime.ort_backend import OrtBackend, OrtGraph

    class ProfilingBackend(OrtBackend):
        """The ORT backend with the profiler on for the step's graphs (benchmark-only; runtime unchanged)."""

        sessions: dict = {}

        def open(self, path, spec, session_config=None, precision=None):
            # the runtime's options for this graph (the manifest's ort_session_config included: without it an int8
            # gen_head is not fused and dequantizes its weights every call)
            so = self.graph_options(spec, session_config, precision)
            if spec.name in PROFILED:
                so.enable_profiling = True
                so.profile_file_prefix = os.path.join(prof_dir, spec.name)
            sess = self.ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
            self.sessions[spec.name] = sess
            return OrtGraph(sess, spec)

    be = ProfilingBackend(threads=threads)
    if spin != "default":
        be.spin_graphs = ("lm",) if spin == "lm" else ()
    return be


def weight_bytes_by_node(path: str) -> dict[str, int]:
    """Weight MatMul node name -> bytes of the constant weights it consumes in the bundle's graph file (its
    initializer inputs, also through DequantizeLinear / Cast / Transpose / Reshape of initializers: the Q/DQ forms).
    ORT's profiler cannot say this: weights it prepacks at load (MatMulNBits, MatMulIntegerToFloat) count 0 bytes in
    its parameter_size / activation_size. ORT keeps a fused node's MatMul name, so the names match its events."""
    import onnx
    from onnx import TensorProto, helper

    m = onnx.load(path, load_external_data=False)
    half = (TensorProto.INT4, TensorProto.UINT4)
    init = {t.name: (int(np.prod(t.dims)) if len(t.dims) else 1) for t in m.graph.initializer}
    size = {t.name: ((init[t.name] + 1) // 2 if t.data_type in half else
                     init[t.name] * helper.tensor_dtype_to_np_dtype(t.data_type).itemsize) for t in m.graph.initializer}
    producer = {o: n for n in m.graph.node for o in n.output}

    def const_bytes(x: str, depth: int = 0) -> int:
        if x in size:
            return size[x]
        n = producer.get(x)
        if n is None or depth > 3 or n.op_type not in ("DequantizeLinear", "Cast", "Transpose", "Reshape"):
            return 0
        return sum(const_bytes(i, depth + 1) for i in n.input if i)

    out = {}
    for n in m.graph.node:
        if n.op_type in WEIGHT_OPS or n.domain == "com.microsoft" and n.op_type in WEIGHT_OPS:
            b = sum(const_bytes(i) for i in n.input[1:] if i)
            if b > 4096:  # a weight, not a scalar scale
                out[n.name] = b
    return out


def _static_bytes(static: dict[str, int], node: str) -> int | None:
    """The weights of a profiled node: by its name, else by the source node whose name it extends (ORT renames some
    fused nodes, e.g. a MatMulNBits that took in its bias Add)."""
    if node in static:
        return static[node]
    hits = [k for k in static if node.startswith(k)]
    return static[max(hits, key=len)] if hits else None


def _events(path: str) -> list[dict]:
    with open(path) as fh:
        return json.load(fh)


def _step_windows(events, skip: int) -> list[tuple[float, float]]:
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") == "Session" and e["name"] == "model_run")
    return runs[skip:]


def profile(bundle: str, steps: int = 6, warmup: int = 2, threads: int | None = None, prompt: str = DEFAULT_PROMPT,
            spin: str = "default", keep_traces: bool = False, images: int = 1, bandwidth_gbps: float | None = None):
    """images: the batch (2 CFG rows each). bandwidth_gbps: the floor's rate (bandwidth.py, measured in the same
    run by `main`); with it each role gets floor_ms = the bytes its nodes read / the rate, and its floor ratio."""
    from janus_edge.runtime.bundle import Bundle
    from janus_edge.runtime.pipeline import Pipeline

    prof_dir = tempfile.mkdtemp(prefix="janus-edge-profile-")
    be = _backend(threads, prof_dir, spin)
    pipe = Pipeline(Bundle(bundle, be))
    for g in PROFILED:
        pipe.bundle.graph(g)
    ids = pipe.prompt_ids(prompt)
    limit = warmup + steps
    marks: list[float] = []

    def tick(i):
        marks.append(time.perf_counter())
        if i >= limit:
            raise StopAfter

    try:
        pipe.generate_image(input_ids=ids, n=images, cfg_weight=5.0, temperature=1.0, seed=0, decode=False, on_step=tick)
    except StopAfter:
        pass
    step_s = np.diff(marks)[warmup:]
    # lm: run 0 is the prefill, then one run per decode step; gen_embed: one per step; gen_head: one per token
    skip = {"lm": 1 + warmup, "gen_embed": warmup, "gen_head": 1 + warmup}
    from janus_edge.contract import load_manifest

    man = load_manifest(bundle)
    static = {g: weight_bytes_by_node(os.path.join(bundle, man.graphs[g].file)) for g in PROFILED}
    per_graph, by_op, by_role, by_node = {}, defaultdict(float), defaultdict(float), defaultdict(float)
    bytes_role, bytes_op = defaultdict(float), defaultdict(float)
    for g in PROFILED:
        events = _events(be.sessions[g].end_profiling())
        windows = _step_windows(events, skip[g])[:steps]
        per_graph[g] = sum(b - a for a, b in windows) / 1e3 / max(1, len(windows))  # ms per step (model_run)
        for e in events:
            if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
                continue
            if not any(a <= e["ts"] <= b for a, b in windows):
                continue
            args = e.get("args", {})
            op = args.get("op_name", "?")
            node = e["name"][: -len("_kernel_time")]
            d = e["dur"] / 1e3 / len(windows)
            # what the node read: its initializers (weights) + its inputs (the KV cache for attention)
            nb = _static_bytes(static[g], node)
            if nb is None:
                nb = int(args.get("parameter_size", 0)) + int(args.get("activation_size", 0))
            nb /= len(windows)
            by_op[f"{g}:{op}"] += d
            bytes_op[f"{g}:{op}"] += nb
            role = _role(node, op) if g == "lm" else f"{g} (whole graph)"
            by_role[role] += d
            bytes_role[role] += nb
            if g == "lm":
                by_node[node] += d
    if not keep_traces:
        shutil.rmtree(prof_dir, ignore_errors=True)
    step_ms = float(np.median(step_s)) * 1e3
    graphs_ms = sum(per_graph.values())
    top = sorted(by_node.items(), key=lambda kv: -kv[1])[:15]
    roles = {k: _floor_row(v, bytes_role[k], bandwidth_gbps) for k, v in sorted(by_role.items(), key=lambda kv: -kv[1])}
    ops = {k: _floor_row(v, bytes_op[k], bandwidth_gbps) for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])}
    total_bytes = sum(bytes_role.values())
    return {"bundle": bundle, "threads": threads, "spin": spin, "images": images, "rows": 2 * images,
            "steps_profiled": int(len(step_s)), "prompt_len": len(ids), "bandwidth_gbps": bandwidth_gbps,
            "roles": roles, "ops": ops, "bytes_read_per_step": int(total_bytes),
            "floor_ms_per_step": round(total_bytes / bandwidth_gbps / 1e6, 3) if bandwidth_gbps else None,
            "floor_ratio_step": round(step_ms / (total_bytes / bandwidth_gbps / 1e6), 3) if bandwidth_gbps else None,
            "step_ms_p50_while_profiling": round(step_ms, 3),
            "graph_ms_per_step": {g: round(v, 3) for g, v in per_graph.items()},
            "outside_graphs_ms_per_step": round(step_ms - graphs_ms, 3),
            "outside_graphs_note": "kv_append + sampling + Python between the graph runs",
            "lm_top_nodes_ms": [[n, round(v, 3)] for n, v in top],
            "profile_dir": prof_dir if keep_traces else None,
            "step_ms": [ms(s) for s in step_s]}


def _floor_row(ms_: float, nbytes: float, gbps: float | None) -> dict:
    row = {"ms": round(ms_, 3), "bytes": int(nbytes), "gbps": round(nbytes / ms_ / 1e6, 2) if ms_ > 0 else None}
    if gbps:
        f = nbytes / gbps / 1e6
        row.update(floor_ms=round(f, 3), floor_ratio=round(ms_ / f, 2) if f > 0 else None)
    return row


def format_profile(p: dict) -> str:
    lines = [f"profile of {p['bundle']} ({p['rows']} rows, spin: {p['spin']}): {p['steps_profiled']} decode steps, "
             f"step p50 {p['step_ms_p50_while_profiling']:.1f} ms while profiling"
             + (f", floor {p['floor_ms_per_step']:.1f} ms at {p['bandwidth_gbps']:.1f} GB/s (x{p['floor_ratio_step']:.2f})"
                if p.get("floor_ms_per_step") else "")]
    lines.append("  per graph (ms/step): " + ", ".join(f"{g} {v:.2f}" for g, v in p["graph_ms_per_step"].items())
                 + f", outside the graphs {p['outside_graphs_ms_per_step']:.2f} ({p['outside_graphs_note']})")
    lines.append(f"  {'role':45s} {'ms/step':>8s} {'MB read':>8s} {'GB/s':>6s} {'floor ms':>8s} {'ratio':>6s}")
    for k, r in p["roles"].items():
        lines.append(f"    {k:43s} {r['ms']:8.2f} {r['bytes'] / 1e6:8.1f} {r['gbps'] or 0:6.1f} "
                     f"{r.get('floor_ms', 0):8.2f} {r.get('floor_ratio') or 0:6.2f}")
    lines.append("  by op type (ms/step, GB/s):")
    lines += [f"    {k:45s} {r['ms']:8.2f} {r['gbps'] or 0:6.1f}" for k, r in list(p["ops"].items())[:12]]
    lines.append("  top lm nodes (ms/step):")
    lines += [f"    {n[:70]:70s} {v:7.2f}" for n, v in p["lm_top_nodes_ms"][:6]]
    return "\n".join(lines)


def markdown(out: dict) -> str:
    """The run as markdown: one table per profile (role, ms, MB read, GB/s, floor ms, ratio)."""
    lines = [f"# Decode-step profile ({out['time_utc']} UTC)", "",
             f"CPU: {out['cpu']} ({', '.join(out['cpu_flags'])}); {out['threads']} threads; bandwidth probe "
             f"{out['probe_gbps']} GB/s (floors use {out['bandwidth_gbps']}); load average at start "
             f"{out['loadavg_start']}. Written by benchmarks/profile_lm.py from ONNX Runtime's profiler (per-node "
             "times include its overhead; bytes = a weight node's weights in the bundle's graph file, other nodes' "
             "inputs as ORT's profiler reports them: the KV cache for attention).", ""]
    for p in out["profiles"]:
        lines += [f"## {os.path.basename(p['bundle'].rstrip('/'))}, {p['rows']} rows", "",
                  f"step p50 {p['step_ms_p50_while_profiling']:.1f} ms while profiling; graphs "
                  + ", ".join(f"{g} {v:.2f}" for g, v in p["graph_ms_per_step"].items())
                  + f" ms; outside the graphs (KV append, sampling, Python) {p['outside_graphs_ms_per_step']:.2f} ms;"
                  f" bytes read {p['bytes_read_per_step'] / 1e6:.1f} MB, floor {p['floor_ms_per_step']} ms "
                  f"(x{p['floor_ratio_step']}); load average after {p['loadavg_after']}", "",
                  "| role | ms/step | MB read | GB/s | floor ms | ratio |", "|---|---|---|---|---|---|"]
        for k, r in p["roles"].items():
            lines.append(f"| {k} | {r['ms']:.2f} | {r['bytes'] / 1e6:.1f} | {r['gbps'] or 0:.1f} | "
                         f"{r.get('floor_ms', 0):.2f} | {r.get('floor_ratio') or 0:.2f} |")
        lines += ["", "| op | ms/step | GB/s |", "|---|---|---|"]
        lines += [f"| {k} | {r['ms']:.2f} | {r['gbps'] or 0:.1f} |" for k, r in list(p["ops"].items())[:10]]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m janus_edge.benchmarks.profile_lm", description=__doc__.splitlines()[0])
    ap.add_argument("bundles", nargs="+", metavar="bundle")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--images", type=int, nargs="+", default=[1], help="batch sizes to profile (2 rows each)")
    ap.add_argument("--probe-mb", type=int, default=1024, help="bandwidth probe size, MiB (0: no probe, no floors)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--keep-traces", action="store_true", help="keep ONNX Runtime's raw trace files")
    ap.add_argument("--spin", default="default", choices=list(SPIN),
                    help="experiment: ONNX Runtime intra-op thread spinning (" + "; ".join(f"{k}: {v}" for k, v in SPIN.items()) + ")")
    a = ap.parse_args(argv)
    if a.steps < 1 or a.warmup < 0 or min(a.images) < 1 or a.probe_mb < 0:
        print("error: --steps and --images must be >= 1, --warmup and --probe-mb >= 0", file=sys.stderr)
        return 2
    from .bandwidth import measure_bandwidth
    from .common import cpu_flags, cpu_model

    load0, probes = os.getloadavg(), []
    if a.probe_mb:
        probes.append(measure_bandwidth(a.probe_mb, a.threads))
    bw = probes[0]["bandwidth_gbps"] if probes else None
    runs = []
    for b in a.bundles:
        for n in a.images:
            p = profile(b, a.steps, a.warmup, a.threads, spin=a.spin, keep_traces=a.keep_traces, images=n,
                        bandwidth_gbps=bw)
            p["loadavg_after"] = [round(v, 2) for v in os.getloadavg()]
            print(format_profile(p), flush=True)
            runs.append(p)
    if a.probe_mb:
        probes.append(measure_bandwidth(a.probe_mb, a.threads))
    if a.json:
        out = {"schema": "janus-edge-profile/2", "cpu": cpu_model(),
               "cpu_flags": [f for f in cpu_flags() if f.startswith(("avx", "amx", "fma"))],
               "time_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), "threads": a.threads,
               "loadavg_start": [round(v, 2) for v in load0], "bandwidth_gbps": bw,
               "probe_gbps": [q["bandwidth_gbps"] for q in probes],
               "bandwidth_note": "floors use the first probe (taken before any bundle was loaded)", "profiles": runs}
        with open(a.json, "w") as fh:
            json.dump(out, fh, indent=1)
            fh.write("\n")
        if a.probe_mb:
            with open(os.path.splitext(a.json)[0] + ".md", "w") as fh:
                fh.write(markdown(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
