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
SPIN = {"default": "the runtime's sessions as they are", "off-small": "no spinning in every graph but lm",
        "off-all": "no spinning in any graph"}
PROJ = re.compile(r"(q_proj|k_proj|v_proj|o_proj)")
MLP = re.compile(r"(gate_proj|up_proj|down_proj|mlp)")


def _role(node: str, op: str) -> str:
    if op in ("MatMul", "Gemm", "FusedMatMul", "MatMulNBits", "MatMulInteger", "DynamicQuantizeMatMul"):
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
    return "other (rotary, mask, elementwise, shape)"


def _backend(threads, prof_dir, spin: str = "default"):
    from janus_edge.runtime.ort_backend import OrtBackend, OrtGraph

    class ProfilingBackend(OrtBackend):
        """The ORT backend with the profiler on for the step's graphs (benchmark-only; runtime unchanged)."""

        sessions: dict = {}

        def open(self, path, spec):
            so = self.options()
            if spin == "off-all" or (spin == "off-small" and spec.name != "lm"):
                so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            if spec.name in PROFILED:
                so.enable_profiling = True
                so.profile_file_prefix = os.path.join(prof_dir, spec.name)
            sess = self.ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
            self.sessions[spec.name] = sess
            return OrtGraph(sess, spec)

    return ProfilingBackend(threads=threads)


def _events(path: str) -> list[dict]:
    with open(path) as fh:
        return json.load(fh)


def _step_windows(events, skip: int) -> list[tuple[float, float]]:
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") == "Session" and e["name"] == "model_run")
    return runs[skip:]


def profile(bundle: str, steps: int = 6, warmup: int = 2, threads: int | None = None, prompt: str = DEFAULT_PROMPT,
            spin: str = "default", keep_traces: bool = False):
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
        pipe.generate_image(input_ids=ids, n=1, cfg_weight=5.0, temperature=1.0, seed=0, decode=False, on_step=tick)
    except StopAfter:
        pass
    step_s = np.diff(marks)[warmup:]
    # lm: run 0 is the prefill, then one run per decode step; gen_embed: one per step; gen_head: one per token
    skip = {"lm": 1 + warmup, "gen_embed": warmup, "gen_head": 1 + warmup}
    per_graph, by_op, by_role, by_node = {}, defaultdict(float), defaultdict(float), defaultdict(float)
    for g in PROFILED:
        events = _events(be.sessions[g].end_profiling())
        windows = _step_windows(events, skip[g])[:steps]
        per_graph[g] = sum(b - a for a, b in windows) / 1e3 / max(1, len(windows))  # ms per step (model_run)
        for e in events:
            if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
                continue
            if not any(a <= e["ts"] <= b for a, b in windows):
                continue
            op = e.get("args", {}).get("op_name", "?")
            node = e["name"][: -len("_kernel_time")]
            d = e["dur"] / 1e3 / len(windows)
            by_op[f"{g}:{op}"] += d
            if g == "lm":
                by_role[_role(node, op)] += d
                by_node[node] += d
    if not keep_traces:
        shutil.rmtree(prof_dir, ignore_errors=True)
    step_ms = float(np.median(step_s)) * 1e3
    graphs_ms = sum(per_graph.values())
    top = sorted(by_node.items(), key=lambda kv: -kv[1])[:15]
    return {"bundle": bundle, "threads": threads, "spin": spin, "steps_profiled": int(len(step_s)), "prompt_len": len(ids),
            "step_ms_p50_while_profiling": round(step_ms, 3),
            "graph_ms_per_step": {g: round(v, 3) for g, v in per_graph.items()},
            "outside_graphs_ms_per_step": round(step_ms - graphs_ms, 3),
            "outside_graphs_note": "kv_append + sampling + Python between the graph runs",
            "lm_ms_by_role": {k: round(v, 3) for k, v in sorted(by_role.items(), key=lambda kv: -kv[1])},
            "ms_by_op": {k: round(v, 3) for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])},
            "lm_top_nodes_ms": [[n, round(v, 3)] for n, v in top],
            "profile_dir": prof_dir if keep_traces else None,
            "step_ms": [ms(s) for s in step_s]}


def format_profile(p: dict) -> str:
    lines = [f"profile of {p['bundle']} (spin: {p['spin']}): {p['steps_profiled']} decode steps, step p50 "
             f"{p['step_ms_p50_while_profiling']:.1f} ms while profiling"]
    lines.append("  per graph (ms/step): " + ", ".join(f"{g} {v:.2f}" for g, v in p["graph_ms_per_step"].items())
                 + f", outside the graphs {p['outside_graphs_ms_per_step']:.2f}")
    lm = p["graph_ms_per_step"].get("lm") or 1.0
    lines.append("  lm by role (ms/step, share of lm):")
    lines += [f"    {k:45s} {v:8.2f}  {100 * v / lm:5.1f}%" for k, v in p["lm_ms_by_role"].items()]
    lines.append("  by op type (ms/step):")
    lines += [f"    {k:45s} {v:8.2f}" for k, v in list(p["ms_by_op"].items())[:12]]
    lines.append("  top lm nodes (ms/step):")
    lines += [f"    {n[:70]:70s} {v:7.2f}" for n, v in p["lm_top_nodes_ms"][:8]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m janus_edge.benchmarks.profile_lm", description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument("--keep-traces", action="store_true", help="keep ONNX Runtime's raw trace files")
    ap.add_argument("--spin", default="default", choices=list(SPIN),
                    help="experiment: ONNX Runtime intra-op thread spinning (" + "; ".join(f"{k}: {v}" for k, v in SPIN.items()) + ")")
    a = ap.parse_args(argv)
    if a.steps < 1 or a.warmup < 0:
        print("error: --steps must be >= 1 and --warmup >= 0", file=sys.stderr)
        return 2
    p = profile(a.bundle, a.steps, a.warmup, a.threads, spin=a.spin, keep_traces=a.keep_traces)
    print(format_profile(p))
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(p, fh, indent=1)
            fh.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
