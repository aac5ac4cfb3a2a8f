"""What the demo's live preview costs against the decode step (issue 24: <= 2% of the decode).

    python -m janus_edge.benchmarks.demo_preview BUNDLE [BUNDLE ...] --json benchmarks/results/demo_preview_cpu2.json

For each bundle, in one process: a t2i request through the scheduler (as the page runs it) with the page's preview
work done on the consumer side (one mosaic per completed row of tokens), timed per step and per preview update; the
same request again without previews (the steps' time with and without the consumer's work). Then the preview alone at
the real Janus shape (24 x 24 tokens, 16384 codes, n = 1 and 4 images) for comparison with any step time.
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np


def _request(backend, with_preview: bool, n: int, seed: int) -> dict:
    """One t2i request as the page runs it: the page's preview schedule (`PreviewStream`, its 1% budget included),
    or none (table None: the steps alone)."""
    from janus_edge.demo.app import PREVIEW_BUDGET
    from janus_edge.demo.backends import T2IRequest
    from janus_edge.demo.preview import PreviewStream

    stream = PreviewStream(backend.table if with_preview else None, backend.dims.num_image_tokens, PREVIEW_BUDGET)
    job = backend.t2i(T2IRequest("a red circle in the top left", n=n, seed=seed))
    for tok in job.updates():
        stream.add(tok)
    job.handle.result()
    out = stream.figures()
    out.pop("summary")
    return {"n": n, **({k: out[k] for k in ("steps", "step_ms")} if not with_preview else out)}


def measure_bundle(path: str, n: int = 1) -> dict:
    from janus_edge.demo.backends import LocalBackend

    be = LocalBackend(path)
    try:
        _request(be, False, n, 0)  # warm-up
        return {"bundle": path, "dims": {k: getattr(be.dims, k) for k in ("num_image_tokens", "image_vocab_size",
                                                                          "hidden_size", "num_layers")},
                "colour_table_s": be.table_s, "with_preview": _request(be, True, n, 1),
                "without_preview": _request(be, False, n, 1)}
    finally:
        be.close()


def measure_janus_shape(repeats: int = 200) -> list[dict]:
    """The preview alone at Janus's 24 x 24 tokens and 16384 codes, half the image drawn."""
    from janus_edge.demo.preview import preview_html

    rng = np.random.default_rng(0)
    table = rng.integers(0, 256, (16384, 3), dtype=np.uint8)
    out = []
    for n in (1, 4):
        tokens = rng.integers(0, 16384, (n, 288))
        t0 = time.perf_counter()
        for _ in range(repeats):
            preview_html(table, tokens, 576)
        out.append({"n": n, "grid": 24, "ms_per_update": 1e3 * (time.perf_counter() - t0) / repeats})
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle", nargs="*")
    p.add_argument("--json", default=None)
    p.add_argument("--images", type=int, default=1)
    a = p.parse_args(argv)
    import os

    load0 = os.getloadavg()[0]
    res = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": platform.processor() or
           platform.machine(), "cores": os.cpu_count(), "bundles": [measure_bundle(b, a.images) for b in a.bundle],
           "janus_shape_preview": measure_janus_shape(), "load_avg_1min_before_after": [load0, os.getloadavg()[0]]}
    text = json.dumps(res, indent=2)
    print(text)
    if a.json:
        with open(a.json, "w") as fh:
            fh.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
