"""A/B of ONNX Runtime's intra-op thread spinning per graph, on the real decode step, in one process.

    python -m janus_edge.benchmarks.spin_ab BUNDLE [BUNDLE ...] [--images 1 4] [--steps 16] [--rounds 2] [--threads 2]
        [--json OUT]

For each bundle and image count, the runtime's pipeline is opened with `OrtBackend.spin_graphs` set to each
variant in turn (rounds alternate the order: A B, B A, ...), and the decode step (gen_embed + lm + gen_head + KV
append + sampling, between `on_step` callbacks, as `bench` times it) is timed over `--steps` steps after 2 warm-up
steps. Variants: `none` (every graph's threads sleep between kernels: the runtime's setting before this study),
`lm` (the lm's threads spin, the small graphs' sleep). Each variant's p50 over all its rounds is reported, with
the load average. Benchmark only.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from .common import StopAfter
from .ours import DEFAULT_PROMPT

VARIANTS = {"none": (), "lm": ("lm",)}


def _steps(bundle: str, spin: tuple, n: int, steps: int, threads: int | None) -> list[float]:
    from janus_edge.runtime.bundle import Bundle
    from janus_edge.runtime.ort_backend import OrtBackend
    from janus_edge.runtime.pipeline import Pipeline

    be = OrtBackend(threads=threads)
    be.spin_graphs = spin
    pipe = Pipeline(Bundle(bundle, be))
    ids = pipe.prompt_ids(DEFAULT_PROMPT)
    marks: list[float] = []

    def tick(i):
        marks.append(time.perf_counter())
        if i >= 2 + steps:
            raise StopAfter

    for limit_run in range(2):  # run 0: warm-up (arena allocation, first touches); run 1 timed
        marks.clear()
        try:
            pipe.generate_image(input_ids=ids, n=n, cfg_weight=5.0, temperature=1.0, seed=limit_run, decode=False,
                                on_step=tick)
        except StopAfter:
            pass
    return list(np.diff(marks)[2:] * 1e3)


def run(bundles, images=(1,), steps=16, rounds=2, threads=2) -> dict:
    out = {"schema": "janus-edge-spin-ab/1", "threads": threads, "steps": steps, "rounds": rounds,
           "time_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), "results": []}
    for b in bundles:
        for n in images:
            times = {v: [] for v in VARIANTS}
            loads = []
            for r in range(rounds):
                order = list(VARIANTS) if r % 2 == 0 else list(reversed(VARIANTS))
                for v in order:
                    times[v] += _steps(b, VARIANTS[v], n, steps, threads)
                    loads.append(round(os.getloadavg()[0], 2))
            row = {"bundle": b, "images": n, "rows": 2 * n, "loadavg_1min": loads,
                   "p50_ms": {v: round(float(np.median(t)), 2) for v, t in times.items()},
                   "steps_per_variant": {v: len(t) for v, t in times.items()}}
            row["lm_spin_speedup"] = round(row["p50_ms"]["none"] / row["p50_ms"]["lm"], 3)
            out["results"].append(row)
            print(f"{b} {n} image(s): step p50 " + ", ".join(f"spin {v}: {t} ms" for v, t in row["p50_ms"].items())
                  + f" (x{row['lm_spin_speedup']}); load {loads}", flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m janus_edge.benchmarks.spin_ab", description=__doc__.splitlines()[0])
    ap.add_argument("bundles", nargs="+")
    ap.add_argument("--images", type=int, nargs="+", default=[1])
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    if a.steps < 1 or a.rounds < 1 or min(a.images) < 1:
        print("error: --steps, --rounds and --images must be >= 1", file=sys.stderr)
        return 2
    res = run(a.bundles, a.images, a.steps, a.rounds, a.threads)
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(res, fh, indent=1)
            fh.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
