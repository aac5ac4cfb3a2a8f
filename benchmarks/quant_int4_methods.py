"""INT4 methods on the trained-LM test model, per held-out domain (issue 25): one table, generated.

    python -m janus_edge.benchmarks.quant_int4_methods FP32_BUNDLE --work DIR
        [--out benchmarks/results/smollm2_int4_methods_domains] [--methods rtn,clip,...] [--graphs lm,lm_head]

One calibration (cached in DIR/calib.npz, its time recorded); the fp32 bundle's teacher-forced NLL and argmax per
domain computed once (DIR/fp_ref.npz); then per method a quantized bundle (quantize_bundle, `--graphs`, report off)
and, on every domain of quant/data (calib.HELDOUT_DOMAINS) apart, the perplexity delta and top-1 agreement against
fp32, the goals checked per domain (evaluate.check_goals), and the quantized graphs' weight bytes against the pure
INT4 (rtn) bundle's. A row "METHOD+mix" is the method with the MatMuls int4_budget.py chose (`--mix` its JSON,
chosen on the calibration text within 1.15x the bytes) in INT8 per channel. Resumable (DIR/state.json). Writes
OUT.json and OUT.md.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

import numpy as np

METHODS = ("rtn", "clip", "awq-clip", "gptq", "rot-clip", "rot-awq-clip", "rot-gptq", "awq", "gptq-ao",
           "rotall-gptq-ao")
MIX_SUFFIX = "+mix"  # a row "METHOD+mix": the method with --mix FILE's chosen MatMuls in INT8 per channel


def log(msg: str) -> None:
    print(f"[int4-methods] {msg}", file=sys.stderr, flush=True)


def tf_stats(bundle, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Teacher-forced per-token NLL and argmax of one bundle (evaluate.tf_logits)."""
    from janus_edge.quant import evaluate as E

    nll, arg = [], []
    for s, lg in E.tf_logits(bundle, ids):
        tgt = ids[s + 1:s + 1 + len(lg)]
        lg = lg[:len(tgt)]
        nll.append(E._nll(lg, tgt))
        arg.append(lg.argmax(-1))
    return np.concatenate(nll), np.concatenate(arg)


def compare(ref: tuple, got: tuple) -> dict:
    (nf, af), (nq, aq) = ref, got
    pf, pq = float(np.exp(nf.mean())), float(np.exp(nq.mean()))
    return {"tokens": len(nf), "ppl_fp": round(pf, 4), "ppl_q": round(pq, 4),
            "ppl_delta_pct": round(100 * (pq / pf - 1), 3), "top1_agreement": round(float((af == aq).mean()), 4)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", default="benchmarks/results/smollm2_int4_methods_domains")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--graphs", default="lm,lm_head")
    ap.add_argument("--keep", action="store_true", help="keep the quantized bundles in --work")
    ap.add_argument("--mix", default=None, help="int4_budget.py's JSON: its chosen_int8 MatMuls are the 8-bit ones "
                                                "of the METHOD+mix rows")
    a = ap.parse_args(argv)

    from janus_edge import contract as C
    from janus_edge.quant import calib as CB
    from janus_edge.quant import evaluate as E
    from janus_edge.quant.api import QuantOptions, quantize_bundle

    os.makedirs(a.work, exist_ok=True)
    sp = os.path.join(a.work, "state.json")
    state = json.load(open(sp)) if os.path.exists(sp) else {"rows": {}}

    def save():
        with open(sp, "w") as fh:
            json.dump(state, fh, indent=1)

    cache = os.path.join(a.work, "calib.npz")
    if "calibration" not in state:
        t = time.time()
        data = CB.collect(a.bundle, CB.CalibConfig(cache=cache))
        state["calibration"] = {**data.meta, "wall_s": round(time.time() - t, 1)}
        save()
    fp = E.open_bundle(a.bundle, config={})
    ids = {d: E.text_ids(fp, CB.read_text(p)) for d, p in CB.HELDOUT_DOMAINS.items()}
    rp = os.path.join(a.work, "fp_ref.npz")
    if not os.path.exists(rp):
        z = {}
        for d, i in ids.items():
            z[d + "|nll"], z[d + "|arg"] = tf_stats(fp, i)
        np.savez(rp, **z)
    z = np.load(rp)
    ref = {d: (z[d + "|nll"], z[d + "|arg"]) for d in ids}
    fp_bytes = sum(C.load_manifest(a.bundle).graphs[g].weight_bytes for g in a.graphs.split(","))
    for m in [x for x in a.methods.split(",") if x]:
        if m in state["rows"]:
            continue
        out = os.path.join(a.work, m)
        shutil.rmtree(out, ignore_errors=True)
        t = time.time()
        method, int8 = m, ()
        if m.endswith(MIX_SUFFIX):
            method, int8 = m[:-len(MIX_SUFFIX)], tuple(json.load(open(a.mix))["chosen_int8"])
        quantize_bundle(a.bundle, out, QuantOptions(mode="int4", method=method, graphs=a.graphs, progress=False,
                                                    report="none", int8_layers=int8,
                                                    extra={"calib": {"cache": cache}}))
        qs = time.time() - t
        man = C.load_manifest(out)
        q = E.open_bundle(out)
        doms = {d: compare(ref[d], tf_stats(q, i)) for d, i in ids.items()}
        state["rows"][m] = {"quantize_s": round(qs, 1), "domains": doms, "goals": E.check_goals("int4", doms),
                            "int8_matmuls": list(int8),
                            "weight_bytes": sum(man.graphs[g].weight_bytes for g in a.graphs.split(",")),
                            "rotation": (man.graphs["lm"].quantization or {}).get("rotation")}
        log(f"{m}: {json.dumps(state['rows'][m]['domains'])} ({qs:.0f}s)")
        save()
        if not a.keep:
            shutil.rmtree(out, ignore_errors=True)
    pure = state["rows"].get("rtn", {}).get("weight_bytes")
    for r in state["rows"].values():
        r["bytes_vs_pure_int4"] = round(r["weight_bytes"] / pure, 3) if pure else None
        r["meets_int4_goal"] = bool(r["goals"]["met"] and r["bytes_vs_pure_int4"] is not None
                                    and r["bytes_vs_pure_int4"] <= E.INT4_BYTES_GOAL)
    state.update({"graphs": a.graphs, "fp_weight_bytes": fp_bytes, "domains_files": {
        d: "quant/data/" + p.rsplit("/", 1)[-1] for d, p in CB.HELDOUT_DOMAINS.items()}})
    save()
    write(state, a.out)
    return 0


def write(state: dict, out: str) -> None:
    from janus_edge.benchmarks.common import write_results

    write_results(state, out, markdown)


def markdown(s: dict) -> str:
    rows = s.get("rows", {})
    doms = list(next(iter(rows.values()))["domains"]) if rows else []
    L = ["# INT4 methods on the trained-LM test model (SmolLM2-135M-Instruct inside Janus), per held-out domain", "",
         f"Graphs quantized: {s.get('graphs')} (the rest fp32). Teacher-forced through lm + lm_head against the fp32 "
         "bundle, ONNX Runtime CPU (MatMulNBits accuracy level 4). Domains: "
         + ", ".join(f"{d} ({f})" for d, f in s.get("domains_files", {}).items()) + ".",
         "Goal (every domain): perplexity <= +15%, top-1 agreement >= 80%, weight bytes <= 1.15x pure INT4 (rtn).", "",
         "| method | " + " | ".join(f"{d}: ppl delta / top-1" for d in doms) + " | bytes (MB) | vs pure INT4 | goal |",
         "|---|" + "---|" * len(doms) + "---|---|---|"]
    for m, r in rows.items():
        cells = [f"{r['domains'][d]['ppl_delta_pct']:+.1f}% / {100 * r['domains'][d]['top1_agreement']:.1f}%"
                 for d in doms]
        L.append(f"| {m} | " + " | ".join(cells) + f" | {r['weight_bytes'] / 1e6:.1f} | "
                 f"{r.get('bytes_vs_pure_int4')}x | {'met' if r.get('meets_int4_goal') else 'missed'} |")
    if rows:
        L += ["", "Tokens per domain: " + ", ".join(f"{d} {v['tokens']}" for d, v in
                                                   next(iter(rows.values()))["domains"].items()) + ".",
              "Quantization seconds (shared 2-core machine, indicative only): "
              + ", ".join(f"{m} {r['quantize_s']}" for m, r in rows.items()) + "."]
    mixed = {m: r for m, r in rows.items() if r.get("int8_matmuls")}
    if mixed:
        m, r = next(iter(mixed.items()))
        L.append(f"METHOD+mix: the method with {len(r['int8_matmuls'])} MatMuls in INT8 per output channel (chosen on "
                 "the calibration text within 1.15x by benchmarks/int4_budget.py: " + ", ".join(r["int8_matmuls"][:6])
                 + ", ...).")
    c = s.get("calibration")
    if c:
        L.append(f"Calibration: {c.get('wall_s')} s wall (shared machine).")
    rot = next((r["rotation"] for r in rows.values() if r.get("rotation")), None)
    if rot:
        L.append(f"Rotation: {json.dumps(rot)}.")
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    sys.exit(main())
