"""Human-readable output of a bench result: the stdout summary and the step-latency plot.

    python -m janus_edge.benchmarks.report RESULT.json [--plot OUT.png]   # summary again / redraw the plot
"""
from __future__ import annotations

import argparse
import json
import os
import sys


def _f(v, fmt: str = ".1f", unit: str = "") -> str:
    return "-" if v is None else f"{v:{fmt}}{unit}"


def _label(r: dict) -> str:
    n = f", {r['n']} images" if r.get("n", 1) != 1 else ""
    return f"{os.path.basename(os.path.normpath(r['bundle']))} ({r.get('dtype')}, {r.get('backend')}{n})"


def summary(res: dict) -> str:
    env, bw = res["environment"], res["bandwidth"]
    lines = [f"janus-edge bench: task {res['task']}, {env['cpu']}, {env['cores']} cores, threads {env['threads']}, "
             f"backend {env['backend']}",
             f"bandwidth {bw['bandwidth_gbps']:.1f} GB/s (best of {len(bw.get('runs_gbps', [])) or 1}; "
             f"{bw['method']}); numpy 1-thread sum {_f(bw.get('numpy_sum_1thread_gbps'))} GB/s"]
    busy = [("bandwidth probe", bw.get("other_processes_cores"))]
    rows = list(res["results"])
    if "baseline" in res:
        rows.append({**res["baseline"], "bundle": "transformers", "dtype": "float32", "backend": "torch"})
    for r in rows:
        name = _label(r) if r["bundle"] != "transformers" else "transformers baseline (float32, torch)"
        lines.append(f"- {name}")
        if res["task"] == "t2i":
            extra = " (extrapolated)" if r.get("image_s_extrapolated") else ""
            lines.append(f"    prefill {_f(r.get('prefill_ms'))} ms | decode step p50 {_f(r['decode_step_ms_p50'])} ms"
                         f" p90 {_f(r['decode_step_ms_p90'])} ms over {r['steps_timed']} steps | VQ decode "
                         f"{_f(r.get('vq_decode_ms'))} ms | image {_f(r.get('image_s'), '.2f')} s{extra}")
        else:
            lines.append(f"    image encode {_f(r.get('image_encode_ms'))} ms | TTFT {_f(r.get('ttft_ms'))} ms | "
                         f"step p50 {_f(r.get('decode_step_ms_p50'))} ms p90 {_f(r.get('decode_step_ms_p90'))} ms | "
                         f"{_f(r.get('tokens_per_s'), '.2f')} tokens/s")
        if r.get("floor_ms") is not None:
            lines.append(f"    floor {r['floor_ms']:.1f} ms ({r['bytes_per_step'] / 1e9:.3f} GB/step: weights "
                         f"{r['weight_bytes_per_step'] / 1e9:.3f} + KV {r['kv_bytes_per_step'] / 1e6:.1f} MB) -> "
                         f"ratio {r['floor_ratio']:.2f} (full-cache floor {r['floor_ms_full_cache']:.1f} ms, "
                         f"ratio {r['floor_ratio_full_cache']:.2f}); achieved {r['achieved_gbps']:.1f} GB/s")
        if r.get("images_step_ratio"):
            lines.append(f"    {r['n']} images ({r['rows']} rows): step {r['images_step_ratio']:.2f}x that of "
                         f"{r['images_step_ratio_vs_n']} image(s)")
        if r.get("kernels"):
            lines.append("    kernels ran (ORT, after its fusions): " + "; ".join(
                f"{g}: " + ", ".join(f"{op} x{c}" for op, c in ops.items()) for g, ops in r["kernels"].items()))
        busy.append((name, r.get("other_processes_cores")))
        lines.append(f"    peak RSS {_f(r.get('peak_rss_mb'), '.0f')} MB" +
                     (f" | speedup vs transformers {r['speedup']:.2f}x" if r.get("speedup") else ""))
    noisy = [f"{what} {c:.2f}" for what, c in busy if c is not None and c >= 0.2]
    if noisy:
        lines.append(f"WARNING: other processes used CPU during the measurement (cores): {'; '.join(noisy)}; "
                     f"timings and bandwidth are disturbed, re-run on a quiet machine")
    return "\n".join(lines)


def plot(res: dict, path: str) -> None:
    """Decode-step latency (ms) over step index: one line per bundle/backend, one for the baseline (run 0;
    the warm-up steps, discarded from the statistics, are drawn as well and shaded)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=110)
    series = [(_label(r), r) for r in res["results"]]
    if "baseline" in res:
        series.append(("transformers (float32, torch)", res["baseline"]))
    warm = 0
    for label, r in series:
        if r.get("step_ms"):
            p50 = r.get("decode_step_ms_p50")
            ax.plot(r["step_index"], r["step_ms"], marker=".", lw=1, label=f"{label}: p50 {p50:.1f} ms")
            warm = max(warm, r.get("warmup_steps", 0))
        if r.get("floor_ms") is not None and r is res["results"][0]:
            ax.axhline(r["floor_ms"], ls="--", lw=1, color="gray", label=f"bandwidth floor {r['floor_ms']:.1f} ms")
    if warm:
        ax.axvspan(0.5, warm + 0.5, color="0.9", label="warm-up (discarded)")
    env = res["environment"]
    ax.set_title(f"janus-edge {res['task']} decode step: {env['cpu']}, {env['threads']} threads, "
                 f"{res['bandwidth_gbps']:.0f} GB/s", fontsize=9)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("decode step index")
    ax.set_ylabel("latency (ms)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m janus_edge.benchmarks.report", description="bench JSON -> summary")
    ap.add_argument("json")
    ap.add_argument("--plot", default=None, help="redraw the step-latency plot to this PNG")
    a = ap.parse_args(argv)
    try:
        with open(a.json) as fh:
            res = json.load(fh)
    except (OSError, json.JSONDecodeError) as e:
        print(f"error: cannot read {a.json}: {e}", file=sys.stderr)
        return 2
    print(summary(res))
    if a.plot:
        plot(res, a.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
