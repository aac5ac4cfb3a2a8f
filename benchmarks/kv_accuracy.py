"""The perplexity cost of the KV cache's precision on the trained-LM test model (SmolLM2-135M inside Janus).

    python -m janus_edge.benchmarks.kv_accuracy FP32_BUNDLE --work DIR [--tokens N] [--out benchmarks/results/smollm2_kv]

Bundles (in DIR, made with `quantize_bundle`, one calibration shared through DIR/calib.npz): the fp32 lm with an
fp16 and an int8 cache (`--graphs gen_head`: gen_head is the only graph quantized, the lm's weights stay fp32, so
only the cache differs).
Each is compared with the fp32 bundle teacher-forced ONE token per lm call (quant/evaluate.py text_accuracy,
chunk 1): every earlier position is read back from the stored cache, as in decoding (a chunked prefill would attend
to its own chunk in fp32). Held-out texts per domain (quant/data, never used by the calibration), the first
`--tokens` tokens of each. Writes OUT.json and OUT.md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

VARIANTS = {  # name: (QuantOptions fields, what differs from the fp32 bundle)
    "fp32 lm, fp16 KV": ({"mode": "int4", "graphs": "gen_head", "kv_dtype": "float16"}, "the cache only"),
    "fp32 lm, int8 KV": ({"mode": "int4", "graphs": "gen_head", "kv_dtype": "int8"}, "the cache only"),
}


def run(fp32: str, work: str, tokens: int, threads: int | None = 2) -> dict:
    from janus_edge.quant import evaluate as E
    from janus_edge.quant.api import QuantOptions, quantize_bundle
    from janus_edge.quant.calib import HELDOUT_DOMAINS, read_text

    os.makedirs(work, exist_ok=True)
    calib = {"calib": {"cache": os.path.join(work, "calib.npz")}}
    fp = E.open_bundle(fp32, threads=threads)
    out = {"schema": "janus-edge-kv-accuracy/1", "bundle": os.path.abspath(fp32), "tokens_per_domain": tokens,
           "eval": "teacher-forced, one token per lm call (every past position read from the cache)",
           "loadavg_start": [round(v, 2) for v in os.getloadavg()],
           "time_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), "variants": {}}
    for name, (kw, what) in VARIANTS.items():
        d = os.path.join(work, name.replace(" ", "_").replace(",", "").replace("(", "").replace(")", ""))
        t = time.time()
        quantize_bundle(fp32, d, QuantOptions(force=True, progress=False, report=False, extra=calib, **kw))
        q = E.open_bundle(d, threads=threads)
        res = {}
        for dom, path in HELDOUT_DOMAINS.items():
            ids = E.text_ids(fp, read_text(path), max_tokens=tokens)
            res[dom] = E.text_accuracy(fp, q, ids, chunk=1)
        out["variants"][name] = {"options": kw, "differs": what, "domains": res, "seconds": round(time.time() - t, 1)}
        print(f"{name:28s} " + "  ".join(f"{k}: {v['ppl_fp']:.3f} -> {v['ppl_q']:.3f} ({v['ppl_delta_pct']:+.2f}%)"
                                         for k, v in res.items()), flush=True)
    return out


def markdown(r: dict) -> str:
    doms = list(next(iter(r["variants"].values()))["domains"])
    lines = [f"# KV-cache precision: perplexity on the trained LM ({r['time_utc']} UTC)", "",
             f"{r['eval']}; first {r['tokens_per_domain']} tokens of each held-out domain; "
             f"vs the fp32 bundle. Written by benchmarks/kv_accuracy.py.", "",
             "| variant | differs from fp32 | " + " | ".join(f"{d} ppl (delta)" for d in doms) + " | top-1 agreement |",
             "|---|---|" + "---|" * len(doms) + "---|"]
    for name, v in r["variants"].items():
        cells = [f"{v['domains'][d]['ppl_q']:.3f} ({v['domains'][d]['ppl_delta_pct']:+.2f}%)" for d in doms]
        agree = min(v["domains"][d]["top1_agreement"] for d in doms)
        lines.append(f"| {name} | {v['differs']} | " + " | ".join(cells) + f" | >= {agree:.3f} |")
    fp = next(iter(r["variants"].values()))["domains"]
    lines += ["", "fp32 perplexity: " + ", ".join(f"{d} {fp[d]['ppl_fp']:.3f}" for d in doms)]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m janus_edge.benchmarks.kv_accuracy", description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--work", required=True)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="OUT.json and OUT.md")
    a = ap.parse_args(argv)
    if a.tokens < 2 or not os.path.isfile(os.path.join(a.bundle, "manifest.json")):
        print("error: --tokens must be >= 2 and BUNDLE a bundle directory", file=sys.stderr)
        return 2
    r = run(a.bundle, a.work, a.tokens, a.threads)
    md = markdown(r)
    print(md)
    if a.out:
        with open(a.out + ".json", "w") as fh:
            json.dump(r, fh, indent=1)
            fh.write("\n")
        with open(a.out + ".md", "w") as fh:
            fh.write(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
