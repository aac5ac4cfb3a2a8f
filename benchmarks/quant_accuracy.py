"""Headline accuracy figures of the int8 / fp8 modes on the trained-LM test model (SmolLM2-135M inside Janus).

    python -m janus_edge.benchmarks.quant_accuracy FP32_BUNDLE --work DIR [--out benchmarks/results/smollm2_quant]
        [--variants a,b,...] [--sweep] [--tokens N]

One calibration (cached in DIR/calib.npz, its time recorded), then per variant a quantized bundle (quantize_bundle
with that variant's knobs, lm + lm_head + gen_head) and the teacher-forced perplexity / top-1 agreement on the
held-out text. `--select` picks the number of kept-float MatMuls on the *calibration* text (never the held-out
one). `--sweep` adds the measured sensitivity table: one MatMul kind at a time in int8 (the rest float).
The best int8 variant and fp8 get the full report (images, chat, per graph). Writes OUT.json and OUT.md.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

KINDS = ("q", "k", "v", "o", "gate", "up", "down")
SWEEP_KNOBS = {"smooth": "auto", "calibrator": "mse"}
VARIANTS = {
    # name: (mode, knobs for opts.extra[mode])
    "int8-absmax": ("int8", {"smooth": "off", "calibrator": "minmax"}),  # TensorRT-style plain static A8
    "int8-mse": ("int8", {"smooth": "off", "calibrator": "mse"}),
    "int8-sq0.8": ("int8", {"smooth": 0.8, "calibrator": "minmax"}),  # SmoothQuant as published (alpha 0.8)
    "int8-sq-auto": ("int8", {"smooth": "auto", "calibrator": "mse"}),
    "int8-sq-auto-keep4": ("int8", {"smooth": "auto", "calibrator": "mse", "keep_float": 4}),
    "int8-sq-auto-keep8": ("int8", {"smooth": "auto", "calibrator": "mse", "keep_float": 8}),
    "int8-sq-auto-keep16": ("int8", {"smooth": "auto", "calibrator": "mse", "keep_float": 16}),
    "int8-sq-auto-minmax": ("int8", {"smooth": "auto", "calibrator": "minmax"}),
    "int8-sq-auto-minmax-keep8": ("int8", {"smooth": "auto", "calibrator": "minmax", "keep_float": 8}),
    "int8-sq-auto-minmax-keep16": ("int8", {"smooth": "auto", "calibrator": "minmax", "keep_float": 16}),
    "int8-sq0.8-keep16": ("int8", {"smooth": 0.8, "calibrator": "minmax", "keep_float": 16}),
    "int8-sq0.8-keepdown": ("int8", {"smooth": 0.8, "calibrator": "minmax", "keep_float": ["down"]}),
    "fp8": ("fp8", {"smooth": "auto", "calibrator": "mse", "keep_float": 0}),
    "fp8-minmax": ("fp8", {"smooth": "auto", "calibrator": "minmax"}),
    "fp8-sq0.8": ("fp8", {"smooth": 0.8, "calibrator": "minmax", "keep_float": 0}),
    "fp8-sq0.8-keep16": ("fp8", {"smooth": 0.8, "calibrator": "minmax", "keep_float": 16}),
    "fp8-plain": ("fp8", {"smooth": "off", "calibrator": "minmax", "keep_float": 0}),
}


def log(msg: str) -> None:
    print(f"[quant-accuracy] {msg}", file=sys.stderr, flush=True)


def build(src: str, work: str, name: str, mode: str, knobs: dict, graphs: str | None = None) -> str:
    from janus_edge.quant.api import QuantOptions, quantize_bundle

    out = os.path.join(work, name)
    if os.path.exists(os.path.join(out, "manifest.json")):
        return out
    shutil.rmtree(out, ignore_errors=True)
    quantize_bundle(src, out, QuantOptions(mode=mode, graphs=graphs, progress=False, report=False, extra={
        "calib": {"cache": os.path.join(work, "calib.npz")}, mode: knobs}))
    return out


def text_eval(fp, qdir: str, ids) -> dict:
    from janus_edge.quant import evaluate as E

    return E.text_accuracy(fp, E.open_bundle(qdir), ids)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", default="benchmarks/results/smollm2_quant")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--tokens", type=int, default=None, help="held-out tokens (default: all)")
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--select", action="store_true", help="choose keep_float on the calibration text")
    ap.add_argument("--full", default="", help="variants that get the full report (comma list)")
    a = ap.parse_args(argv)

    from janus_edge.quant import calib as CB
    from janus_edge.quant import evaluate as E
    from janus_edge.quant import report as R

    os.makedirs(a.work, exist_ok=True)
    state_path = os.path.join(a.work, "state.json")
    state = json.load(open(state_path)) if os.path.exists(state_path) else {"variants": {}, "sweep": {}, "select": {}}

    def save_state():
        with open(state_path, "w") as fh:
            json.dump(state, fh, indent=1)

    if "calibration" not in state:
        t = time.time()
        data = CB.collect(a.bundle, CB.CalibConfig(cache=os.path.join(a.work, "calib.npz")))
        state["calibration"] = {**data.meta, "wall_s": round(time.time() - t, 1)}
        save_state()
    fp = E.open_bundle(a.bundle, config={})
    held = E.text_ids(fp, CB.read_text(CB.HELDOUT_FILE), a.tokens)
    calib_ids = E.text_ids(fp, CB.read_text(CB.CALIB_TEXT_FILE))
    for name in [v for v in a.variants.split(",") if v]:
        if name in state["variants"]:
            continue
        mode, knobs = VARIANTS[name]
        t = time.time()
        q = build(a.bundle, a.work, name, mode, knobs)
        qs = time.time() - t
        r = text_eval(fp, q, held)
        r["quantize_s"] = round(qs, 1)
        state["variants"][name] = {"mode": mode, "knobs": knobs, "heldout": r}
        log(f"{name}: {r}")
        save_state()
    if a.select:
        for k in (0, 2, 4, 8, 16, 24):
            key = str(k)
            if key in state["select"]:
                continue
            q = build(a.bundle, a.work, f"sel-keep{k}", "int8", {"smooth": "auto", "calibrator": "mse", "keep_float": k})
            state["select"][key] = text_eval(fp, q, calib_ids)
            log(f"select keep {k} (calibration text): {state['select'][key]}")
            shutil.rmtree(q, ignore_errors=True)
            save_state()
    if a.sweep:
        for kind in KINDS + ("lm_head",):
            if kind in state["sweep"]:
                continue
            if kind == "lm_head":
                q = build(a.bundle, a.work, "sweep-lm_head", "int8", {**SWEEP_KNOBS, "keep_float": 0}, "lm_head")
            else:
                q = build(a.bundle, a.work, f"sweep-{kind}", "int8", {
                    **SWEEP_KNOBS, "keep_float": [x for x in KINDS if x != kind]}, "lm")
            state["sweep"][kind] = text_eval(fp, q, held)
            log(f"sweep {kind}: {state['sweep'][kind]}")
            shutil.rmtree(q, ignore_errors=True)
            save_state()
    full = {}
    for name in [v for v in a.full.split(",") if v]:
        q = os.path.join(a.work, name)
        rep = R.build_report(a.bundle, q)
        R.save(rep, q)
        full[name] = rep
        log(f"full report {name}: text {rep.get('text')} image {rep.get('image')} chat {rep.get('chat')}")
    state["full"] = {**state.get("full", {}), **full}
    save_state()
    write(state, a.out)
    return 0


def write(state: dict, out: str) -> None:
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out + ".json", "w") as fh:
        json.dump(state, fh, indent=1, default=float)
        fh.write("\n")
    with open(out + ".md", "w") as fh:
        fh.write(markdown(state))


def markdown(s: dict) -> str:
    from janus_edge.quant import report as R

    L = ["# int8 / fp8 accuracy on the trained-LM test model (SmolLM2-135M-Instruct inside Janus)", "",
         "Teacher-forced on quant/data/heldout_en.txt against the fp32 bundle (lm + lm_head + gen_head quantized).",
         s.get("note", ""),
         "", "| variant | mode | knobs | tokens | perplexity fp -> q | delta | top-1 agreement | quantize s |",
         "|---|---|---|---|---|---|---|---|"]
    for name, v in s.get("variants", {}).items():
        r = v["heldout"]
        L.append(f"| {name} | {v['mode']} | `{json.dumps(v['knobs'])}` | {r['tokens']} | {r['ppl_fp']:.3f} -> {r['ppl_q']:.3f} | "
                 f"{r['ppl_delta_pct']:+.2f}% | {100 * r['top1_agreement']:.2f}% | {r.get('quantize_s', '')} |")
    if s.get("select"):
        L += ["", "Kept-float MatMuls chosen on the calibration text (quant/data/calib_text.txt), int8 sq-auto:", "",
              "| kept float | perplexity delta | top-1 agreement |", "|---|---|---|"]
        L += [f"| {k} | {r['ppl_delta_pct']:+.2f}% | {100 * r['top1_agreement']:.2f}% |" for k, r in s["select"].items()]
    if s.get("sweep"):
        L += ["", "Sensitivity, measured: one MatMul kind in int8 (all 30 layers), everything else fp32 "
                  f"(held-out text; knobs {json.dumps(s.get('sweep_knobs', SWEEP_KNOBS))}):", "",
              "| int8 kind | perplexity delta | top-1 agreement |", "|---|---|---|"]
        L += [f"| {k} | {r['ppl_delta_pct']:+.2f}% | {100 * r['top1_agreement']:.2f}% |" for k, r in s["sweep"].items()]
    c = s.get("calibration")
    if c:
        L += ["", f"Calibration: {c.get('t2i_prompts')} prompts x {c.get('image_steps_per_prompt')} image-token steps "
                  f"(2 CFG rows), {c.get('chat_runs_with_image')} chats with an image, the calibration text as chat; "
                  f"lm calls observed {c.get('observed_calls', {}).get('lm')}; {c.get('wall_s')} s wall "
                  f"(machine shared with other jobs)."]
    for name, rep in s.get("full", {}).items():
        L += ["", "---", "", f"## Full report: {name}", "", R.markdown(rep)]
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    sys.exit(main())
