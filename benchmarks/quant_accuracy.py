"""Headline accuracy figures of the int8 / fp8 modes on the trained-LM test model (SmolLM2-135M inside Janus).

    python -m janus_edge.benchmarks.quant_accuracy FP32_BUNDLE --work DIR [--out benchmarks/results/smollm2_quant]
        [--variants a,b,...] [--sweep] [--tokens N]

One calibration (cached in DIR/calib.npz, its time recorded), then per variant a quantized bundle (quantize_bundle
with that variant's knobs, lm + lm_head + gen_head) and the teacher-forced perplexity / top-1 agreement on the
held-out text. `--select` picks the number of kept-float MatMuls on the *calibration* text (never the held-out
one). `--sweep` adds the measured sensitivity table: one MatMul kind at a time in int8 (the rest float).
The best int8 variant and fp8 get the full report (images, chat, per graph). Every variant is also measured on each
held-out domain apart (quant/data: prose, technical documentation, dialogue) with its mode's goals checked per domain
(`--no-domains`: the prose text only, as before). Writes OUT.json and OUT.md.

Results in DIR (state.json, the quantized bundles, calib.npz) are re-used only when what made them is the same: each
carries a key of the variant's mode, knobs and graphs, the source bundle (path and manifest digest), the calibration
settings, the held-out token count and the code's version (a digest of the quant/, runtime/ and export/ sources);
anything else is measured again. `--calib JSON` overrides CalibConfig fields (e.g. '{"n_prompts": 2}').
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

from janus_edge.benchmarks import common as C

KINDS = ("q", "k", "v", "o", "gate", "up", "down")
SWEEP_KNOBS = {"smooth": "auto", "calibrator": "mse"}
KEEP = ["down", "lm_head"]  # the int8 / fp8 default: every down_proj and lm_head kept int8 weight-only (W8A16)
VARIANTS = {
    # name: (mode, knobs for opts.extra[mode])
    "int8-absmax": ("int8", {"smooth": "off", "calibrator": "minmax", "keep_float": 0}),  # plain static A8
    "int8-sq0.8": ("int8", {"smooth": 0.8, "calibrator": "minmax", "keep_float": 0}),  # SmoothQuant, all W8A8
    "int8-sq0.8-keepdown-float": ("int8", {"smooth": 0.8, "calibrator": "minmax", "keep_float": ["down"],
                                           "keep_as": "float"}),  # the previous default
    "int8-sq0.8-keep-down-head-smoothed": ("int8", {"smooth": 0.8, "calibrator": "minmax", "keep_float": KEEP,
                                                    "keep_as": "int8", "smooth_kept": True}),
    "int8": ("int8", {"smooth": 0.8, "calibrator": "minmax", "keep_float": KEEP, "keep_as": "int8"}),  # default
    "int8-nosmooth-keep": ("int8", {"smooth": "off", "calibrator": "minmax", "keep_float": KEEP, "keep_as": "int8"}),
    "int8-sq-auto-keep": ("int8", {"smooth": "auto", "calibrator": "minmax", "keep_float": KEEP, "keep_as": "int8"}),
    "int8-percentile-keep": ("int8", {"smooth": 0.8, "calibrator": "percentile", "keep_float": KEEP,
                                      "keep_as": "int8"}),
    "int8-w8a16": ("int8", {"smooth": "off", "calibrator": "minmax", "keep_float": ["lm", "lm_head", "gen_head"],
                            "keep_as": "int8"}),  # weight-only everywhere: the floor of int8 weights alone
    "fp8": ("fp8", {"smooth": 0.8, "calibrator": "minmax", "keep_float": KEEP, "keep_as": "int8"}),  # default
    "fp8-keep-fp8-weights": ("fp8", {"smooth": 0.8, "calibrator": "minmax", "keep_float": KEEP,
                                     "keep_as": "weights"}),
    "fp8-sq0.8": ("fp8", {"smooth": 0.8, "calibrator": "minmax", "keep_float": 0}),  # fully fp8
}


def log(msg: str) -> None:
    print(f"[quant-accuracy] {msg}", file=sys.stderr, flush=True)


def build(src: str, work: str, name: str, mode: str, knobs: dict, graphs: str | None = None,
          key: str = "") -> str:
    """WORK/NAME quantized with these knobs; a bundle already there is re-used only when its key file says `key`."""
    from janus_edge.quant.api import QuantOptions, quantize_bundle

    out, key_file = os.path.join(work, name), os.path.join(work, name + ".key")
    if key and os.path.exists(os.path.join(out, "manifest.json")) and _read(key_file) == key:
        return out
    shutil.rmtree(out, ignore_errors=True)
    quantize_bundle(src, out, QuantOptions(mode=mode, graphs=graphs, progress=False, report=False, extra={
        "calib": {"cache": os.path.join(work, "calib.npz")}, mode: knobs}))
    with open(key_file, "w") as fh:
        fh.write(key)
    return out


def _read(path: str) -> str | None:
    if not os.path.exists(path):
        return None
    with open(path) as fh:
        return fh.read().strip()


def settings(bundle: str, calib: dict, tokens: int | None) -> dict:
    """What every result of a run depends on besides a variant's own knobs."""
    return {"bundle": os.path.abspath(bundle), "manifest": C.file_digest(os.path.join(bundle, "manifest.json")),
            "code": C.code_version(), "calib": calib, "tokens": tokens}


def variant_key(base: dict, mode: str, knobs: dict, graphs: str | None = None) -> str:
    return C.key_of({**base, "mode": mode, "knobs": knobs, "graphs": graphs})


def per_layer(ckpt: str, src: str, calib_path: str, mode: str = "int8", tokens: int = 320,
              steps=(4, 8, 12, 16, 20, 24)) -> dict:
    """The kept MatMuls of the default, one at a time released to per-tensor static A8 (torch fake quantization with
    the bundle's scales, quant/simulate.py) on the calibration text, then the n least sensitive released together."""
    import torch

    from janus_edge.quant import calib as CB
    from janus_edge.quant import evaluate as E
    from janus_edge.quant import simulate as S

    torch.set_num_threads(2)
    sim = S.FakeQuantLM(ckpt, src, CB.CalibData.load(calib_path), mode)
    ids = E.text_ids(E.open_bundle(src), CB.read_text(CB.CALIB_TEXT_FILE))[:tokens]
    st = S.SimText(sim, ids)
    kept = [k for k in sim.state if "down_proj" in k or k.startswith("lm_head")]

    def run(keep, **kw):
        sim.configure(**({"alpha": 0.8, "modes": {k: S.W8A16 for k in keep}} | kw))
        return st.measure()

    out = {"mode": mode, "tokens": len(ids) - 1, "default": run(kept), "all_a8": run([]),
           "all_w8a16": run([], alpha=None, default=S.W8A16), "release_one": {}}
    for k in kept:
        out["release_one"][k] = run([x for x in kept if x != k])
        log(f"release {k}: {out['release_one'][k]}")
    ranked = sorted(kept, key=lambda k: out["release_one"][k]["kl"])
    out["greedy_release"] = {n: {**run(ranked[n:]), "released": ranked[:n]} for n in steps}
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
    ap.add_argument("--calib", default="{}", help="CalibConfig overrides as JSON (default: its defaults)")
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--no-domains", action="store_true", help="only the prose held-out text (no per-domain rows)")
    ap.add_argument("--select", action="store_true", help="choose keep_float on the calibration text")
    ap.add_argument("--full", default="", help="variants that get the full report (comma list)")
    ap.add_argument("--per-layer", default=None, metavar="CKPT",
                    help="the per-layer table of the int8 default's kept MatMuls (torch fake quantization; the "
                         "bundle's checkpoint)")
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

    base = settings(a.bundle, json.loads(a.calib), a.tokens)
    calib_key = C.key_of({k: base[k] for k in ("bundle", "manifest", "code", "calib")})
    if state.get("calibration", {}).get("key") != calib_key:
        t = time.time()
        cache = os.path.join(a.work, "calib.npz")
        if os.path.exists(cache):
            os.remove(cache)
        data = CB.collect(a.bundle, CB.CalibConfig(cache=cache, progress=False, **json.loads(a.calib)))
        state["calibration"] = {**data.meta, "wall_s": round(time.time() - t, 1), "key": calib_key}
        save_state()
    fp = E.open_bundle(a.bundle, config={})
    held = E.text_ids(fp, CB.read_text(CB.HELDOUT_FILE), a.tokens)
    calib_ids = E.text_ids(fp, CB.read_text(CB.CALIB_TEXT_FILE))
    for name in [v for v in a.variants.split(",") if v]:
        mode, knobs = VARIANTS[name]
        key = variant_key(base, mode, knobs)
        prev = state["variants"].get(name, {})
        if prev.get("key") == key and (a.no_domains or "domains" in prev):  # a prose-only row is measured again
            continue
        t = time.time()
        q = build(a.bundle, a.work, name, mode, knobs, key=key)
        qs = time.time() - t
        qb = E.open_bundle(q)
        doms = None if a.no_domains else E.domain_accuracy(fp, qb, a.tokens)
        r = doms["prose"] if doms else E.text_accuracy(fp, qb, held)
        r["quantize_s"] = round(qs, 1)
        state["variants"][name] = {"mode": mode, "knobs": knobs, "heldout": r, "key": key,
                                   **({"domains": doms, "goals": E.check_goals(mode, doms)} if doms else {})}
        log(f"{name}: {r}")
        save_state()
    if a.select:
        for k in (0, 2, 4, 8, 16, 24):
            knobs = {"smooth": "auto", "calibrator": "mse", "keep_float": k}
            vkey = variant_key(base, "int8", knobs)
            if state["select"].get(str(k), {}).get("key") == vkey:
                continue
            q = build(a.bundle, a.work, f"sel-keep{k}", "int8", knobs, key=vkey)
            state["select"][str(k)] = {**text_eval(fp, q, calib_ids), "knobs": knobs, "key": vkey}
            log(f"select keep {k} (calibration text): {state['select'][str(k)]}")
            shutil.rmtree(q, ignore_errors=True)
            save_state()
    if a.sweep:
        for kind in KINDS + ("lm_head",):
            knobs = {**SWEEP_KNOBS, "keep_float": 0 if kind == "lm_head" else [x for x in KINDS if x != kind]}
            graphs = "lm_head" if kind == "lm_head" else "lm"
            vkey = variant_key(base, "int8", knobs, graphs)
            if state["sweep"].get(kind, {}).get("key") == vkey:
                continue
            q = build(a.bundle, a.work, f"sweep-{kind}", "int8", knobs, graphs, key=vkey)
            state["sweep"][kind] = {**text_eval(fp, q, held), "knobs": knobs, "graphs": graphs, "key": vkey}
            log(f"sweep {kind}: {state['sweep'][kind]}")
            shutil.rmtree(q, ignore_errors=True)
            save_state()
    pkey = C.key_of({**base, "per_layer": os.path.abspath(a.per_layer)}) if a.per_layer else None
    if a.per_layer and state.get("per_layer", {}).get("key") != pkey:
        state["per_layer"] = {**per_layer(a.per_layer, a.bundle, os.path.join(a.work, "calib.npz")), "key": pkey}
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
    write({k: v for k, v in state.items() if k != "previous_session"}, a.out)
    return 0


def write(state: dict, out: str) -> None:
    from janus_edge.benchmarks.common import write_results

    write_results(state, out, markdown)


def markdown(s: dict) -> str:
    from janus_edge.quant import report as R

    L = ["# int8 / fp8 accuracy on the trained-LM test model (SmolLM2-135M-Instruct inside Janus)", "",
         "Teacher-forced on quant/data/heldout_en.txt against the fp32 bundle (lm + lm_head + gen_head quantized).",
         s.get("note", ""),
         "", "| variant | mode | knobs | tokens | perplexity fp -> q | delta | top-1 agreement | quantize s | run |",
         "|---|---|---|---|---|---|---|---|---|"]
    for name, v in s.get("variants", {}).items():
        r = v["heldout"]
        L.append(f"| {name} | {v['mode']} | `{json.dumps(v['knobs'])}` | {r['tokens']} | {r['ppl_fp']:.3f} -> {r['ppl_q']:.3f} | "
                 f"{r['ppl_delta_pct']:+.2f}% | {100 * r['top1_agreement']:.2f}% | {r.get('quantize_s', '')} | "
                 f"{v.get('session', 'this')} |")
    dom = {n: v for n, v in s.get("variants", {}).items() if v.get("domains")}
    if dom:
        names = list(next(iter(dom.values()))["domains"])
        L += ["", "Per held-out domain (quant/data/heldout_*.txt; the goals checked on each domain apart: int8 <= +3% "
                  "and >= 93% top-1, fp8 <= +5%):", "",
              "| variant | " + " | ".join(f"{d}: ppl delta / top-1" for d in names) + " | goals |",
              "|---|" + "---|" * len(names) + "---|"]
        for n, v in dom.items():
            g = v.get("goals")
            L.append(f"| {n} | " + " | ".join(f"{v['domains'][d]['ppl_delta_pct']:+.2f}% / "
                                              f"{100 * v['domains'][d]['top1_agreement']:.2f}%" for d in names)
                     + f" | {'-' if not g else ('met' if g['met'] else 'missed: ' + ', '.join(d for d, ok in g['per_domain'].items() if not all(ok.values())))} |")
    if s.get("select"):
        L += ["", "Kept-float MatMuls chosen on the calibration text (quant/data/calib_text.txt), int8 sq-auto:", "",
              "| kept float | perplexity delta | top-1 agreement |", "|---|---|---|"]
        L += [f"| {k} | {r['ppl_delta_pct']:+.2f}% | {100 * r['top1_agreement']:.2f}% |" for k, r in s["select"].items()]
    if s.get("sweep"):
        L += ["", "Sensitivity, measured: one MatMul kind in int8 (all 30 layers), everything else fp32 "
                  f"(held-out text; knobs {json.dumps(s.get('sweep_knobs', SWEEP_KNOBS))}):", "",
              "| int8 kind | perplexity delta | top-1 agreement |", "|---|---|---|"]
        L += [f"| {k} | {r['ppl_delta_pct']:+.2f}% | {100 * r['top1_agreement']:.2f}% |" for k, r in s["sweep"].items()]
    pl = s.get("per_layer")
    if pl:
        L += ["", f"Per-layer sensitivity of the {pl['mode']} default's kept MatMuls, measured by fake quantization in "
                  f"torch with the bundle's own scales (quant/simulate.py; the kept ones as ORT runs them, int8 "
                  f"activations per block of 32) on the *calibration* text ({pl['tokens']} tokens, never the held-out "
                  "one): each row releases one kept MatMul to per-tensor static A8, the rest as in the default.", "",
              "| configuration | perplexity delta | top-1 agreement | KL to fp |", "|---|---|---|---|"]
        for k in ("all_w8a16", "default", "all_a8"):
            r = pl[k]
            L.append(f"| {k} | {r['ppl_delta_pct']:+.2f}% | {100 * r['top1_agreement']:.2f}% | {r['kl']:.4f} |")
        for k, r in sorted(pl["release_one"].items(), key=lambda kv: -kv[1]["kl"]):
            L.append(f"| release {k} | {r['ppl_delta_pct']:+.2f}% | {100 * r['top1_agreement']:.2f}% | {r['kl']:.4f} |")
        for n, r in (pl.get("greedy_release") or {}).items():
            L.append(f"| release the {n} least sensitive | {r['ppl_delta_pct']:+.2f}% | "
                     f"{100 * r['top1_agreement']:.2f}% | {r['kl']:.4f} |")
    c = s.get("calibration")
    if c:
        L += ["", f"Calibration: {c.get('t2i_prompts')} prompts x {c.get('image_steps_per_prompt')} image-token steps "
                  f"(2 CFG rows), {c.get('chat_runs_with_image')} chats with an image, the calibration text as chat; "
                  f"lm calls observed {c.get('observed_calls', {}).get('lm')}; {c.get('wall_s')} s wall "
                  f"(machine shared with other jobs)."]
    for name, rep in (s.get("full") or {}).items():
        L += ["", "---", "", f"## Full report: {name}", "", R.markdown(rep)]
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    sys.exit(main())
