"""Markdown tables from bench JSON files: `python -m janus_edge.benchmarks.table benchmarks/results/*.json`.

One row per measured bundle (and one per baseline), grouped by task; paste the output into a README.
"""
from __future__ import annotations

import argparse
import json
import os
import sys


def _f(v, fmt: str = ".1f") -> str:
    return "–" if v is None else f"{v:{fmt}}"


T2I_COLS = ("run", "what", "threads", "prefill ms", "step p50 ms", "step p90 ms", "image s", "floor ms",
            "floor ratio", "GB/s (probe)", "peak RSS MB", "speedup")
CHAT_COLS = ("run", "what", "threads", "image encode ms", "TTFT ms", "step p50 ms", "tokens/s", "floor ms",
             "floor ratio", "GB/s (probe)", "peak RSS MB", "speedup")


def _rows(res: dict, name: str) -> list[list[str]]:
    env = res["environment"]
    items = [(f"{os.path.basename(os.path.normpath(r['bundle']))} {r.get('dtype')} ({r.get('backend')})"
              + (f", {r['n']} images ({r['images_step_ratio']:.2f}x the step of {r['images_step_ratio_vs_n']})"
                 if r.get("images_step_ratio") else ""), r) for r in res["results"]]
    if "baseline" in res:
        items.append(("transformers float32 (torch)", res["baseline"]))
    out = []
    for what, r in items:
        common = [name, what, str(env.get("threads"))]
        tail = [_f(r.get("floor_ms")), _f(r.get("floor_ratio"), ".2f"), _f(res.get("bandwidth_gbps")),
                _f(r.get("peak_rss_mb"), ".0f"), (_f(r.get("speedup"), ".2f") + "x") if r.get("speedup") else "–"]
        if res["task"] == "t2i":
            image = _f(r.get("image_s")) + (" (extrap.)" if r.get("image_s_extrapolated") else "")
            mid = [_f(r.get("prefill_ms")), _f(r.get("decode_step_ms_p50")), _f(r.get("decode_step_ms_p90")), image]
        else:
            mid = [_f(r.get("image_encode_ms")), _f(r.get("ttft_ms")), _f(r.get("decode_step_ms_p50")),
                   _f(r.get("tokens_per_s"), ".2f")]
        out.append(common + mid + tail)
    return out


def _md(cols, rows) -> str:
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def tables(paths: list[str]) -> str:
    by_task: dict[str, list] = {"t2i": [], "chat": []}
    cpus = set()
    for p in paths:
        with open(p) as fh:
            res = json.load(fh)
        if res.get("schema", "").split("/")[0] != "janus-edge-bench":
            continue
        cpus.add(f"{res['environment']['cpu']} ({res['environment']['cores']} cores)")
        by_task[res["task"]] += _rows(res, os.path.splitext(os.path.basename(p))[0])
    parts = []
    if by_task["t2i"]:
        parts.append("Text-to-image, one image, CFG batch 2 (decode step = gen_embed + lm + gen_head + sampling):\n\n"
                     + _md(T2I_COLS, by_task["t2i"]))
    if by_task["chat"]:
        parts.append("Chat, one image + question, greedy:\n\n" + _md(CHAT_COLS, by_task["chat"]))
    if cpus:
        parts.append("Machines: " + "; ".join(sorted(cpus)) + ". floor = bytes a step must read (weights + valid KV "
                     "prefix) / best streaming read rate measured in the same run; speedup = transformers p50 / ours.")
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m janus_edge.benchmarks.table", description=__doc__.splitlines()[0])
    ap.add_argument("json", nargs="+", help="bench result files")
    a = ap.parse_args(argv)
    missing = [p for p in a.json if not os.path.isfile(p)]
    if missing:
        print(f"error: no such file: {missing[0]}", file=sys.stderr)
        return 2
    print(tables(a.json))
    return 0


if __name__ == "__main__":
    sys.exit(main())
