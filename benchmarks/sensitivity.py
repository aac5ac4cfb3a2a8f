"""Per-MatMul-kind sensitivity of the trained-LM test model (SmolLM2-135M inside Janus), int8 and int4, measured by
fake quantization in torch with the bundles' own plans (quant/simulate.py, which tests/test_quant_simulate.py checks
against the ORT int8 bundle).

    python -m janus_edge.benchmarks.sensitivity FP32_BUNDLE CKPT CALIB.npz [--tokens N]
        [--out benchmarks/results/smollm2_sensitivity] [--down-layers] [--resume]

Every run measures afresh and writes OUT.json / OUT.md whole (the command, the run's settings and each row's knobs
recorded by the script; nothing in them is typed by hand). `--resume` continues an interrupted run: a row already in
OUT.json is re-used only when the run's settings (bundle, checkpoint, calibration file digest, tokens, code version)
and the row's knobs are the ones it would measure now.

Teacher-forced on the first N tokens of the *calibration* text (quant/data/calib_text.txt; the held-out text is
never used for choices), each configuration against the simulator's float run: perplexity delta, next-token top-1
agreement, mean KL. Rows:
  int8: everything W8A8 / W8A16 / the default (down_proj + lm_head W8A16); each MatMul kind alone W8A8 (the rest
        float); the default with one more kind kept or one kept kind released;
  int4: each kind alone INT4 (the rest float), round-to-nearest vs awq-clip; everything INT4 (rtn, clip, awq-clip);
        awq-clip with down/up/v in int8 weight-only (the mixed form of smollm2_int4_methods.json).
  --down-layers: per layer for the kind whose keeping matters most per layer in count (int8: the default with one
        layer's down_proj released to W8A8).
Per kind, and per layer only for down_proj: every MatMul per layer in both modes (~420 measures) was not run (the
per-kind run with --down-layers: 67 measures, 254 s at 256 tokens on 2 shared cores).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

KINDS = ("q", "k", "v", "o", "gate", "up", "down", "lm_head")


def log(msg: str) -> None:
    print(f"[sensitivity] {msg}", file=sys.stderr, flush=True)


def kind_of(key: str) -> str:
    if key.startswith("lm_head"):
        return "lm_head"
    from janus_edge.quant import int8 as I8

    return I8.layer_of(key.split(":", 1)[1])[0]


def run(src: str, ckpt: str, calib: str, tokens: int, state: dict, save, down_layers: bool = False,
        resume: dict | None = None) -> dict:
    """Measure every row into `state` (sections of {name: result + knobs}); `resume`: an earlier state of the same
    run settings, whose rows are re-used where their knobs match."""
    import torch

    from janus_edge.quant import calib as CB
    from janus_edge.quant import evaluate as E
    from janus_edge.quant import simulate as S

    torch.set_num_threads(2)
    sim = S.FakeQuantLM(ckpt, src, CB.CalibData.load(calib), "int8")
    ids = E.text_ids(E.open_bundle(src), CB.read_text(CB.CALIB_TEXT_FILE))[:tokens]
    st = S.SimText(sim, ids)
    of = {k: kind_of(k) for k in sim.state}
    keys = lambda *kinds: [k for k in sim.state if of[k] in kinds]  # noqa: E731
    state.setdefault("tokens", len(ids) - 1)
    default_kept = ("down", "lm_head")

    def measure(section: str, name: str, setup, knobs: dict) -> None:
        old = (resume or {}).get(section, {}).get(name)
        if old is not None and old.get("knobs") == knobs:
            state.setdefault(section, {})[name] = old
            return
        setup()
        r = {**st.measure(), "knobs": knobs}
        state.setdefault(section, {})[name] = r
        log(f"{section} {name}: {r}")
        save()

    def int8(kept=(), alpha=0.8, default=S.A8, only=None):
        knobs = {"mode": "int8", "alpha": alpha, "default": default, "kept_w8a16": list(kept), "only_a8": only}

        def f():
            modes = {k: S.W8A16 for k in keys(*kept)}
            if only is not None:  # one kind W8A8, the rest float
                modes = {k: (S.A8 if of[k] == only else S.FLOAT) for k in sim.state}
            sim.configure(alpha=alpha, modes=modes, default=default)
        return f, knobs

    measure("int8", "all W8A16 (weight-only, unsmoothed)", *int8(alpha=None, default=S.W8A16))
    measure("int8", "all W8A8 (SmoothQuant 0.8)", *int8())
    measure("int8", "default: down_proj + lm_head W8A16, rest W8A8", *int8(default_kept))
    for kind in KINDS:
        measure("int8_kind_alone", kind, *int8(only=kind))
    for kind in default_kept:
        measure("int8_default_release", kind, *int8([x for x in default_kept if x != kind]))
    for kind in ("up", "gate", "o", "v"):
        measure("int8_default_keep_more", kind, *int8(default_kept + (kind,)))

    def int4(kinds, method, int8_kinds=()):
        knobs = {"mode": "int4", "method": method, "int4": list(kinds), "int8_weight_only": list(int8_kinds)}

        def f():
            sim.configure(alpha=None, modes={k: S.W8A16 for k in keys(*int8_kinds)}, default=S.FLOAT)
            ks = [k for k in keys(*kinds) if of[k] not in int8_kinds]
            sim.quantize_int4(ks, method)
            for k in ks:
                sim.state[k] = S.W4
        return f, knobs

    for kind in KINDS:
        for method in ("rtn", "awq-clip"):
            measure("int4_kind_alone", f"{kind} {method}", *int4([kind], method))
    for method in ("rtn", "clip", "awq-clip"):
        measure("int4", f"all INT4 {method}", *int4(KINDS, method))
    measure("int4", "awq-clip, down/up/v int8 weight-only", *int4(KINDS, "awq-clip", ("down", "up", "v")))
    if down_layers:  # per layer where it matters: the default with one down_proj released to W8A8
        for k in keys("down"):
            kept = [x for x in keys(*default_kept) if x != k]
            measure("int8_down_layer_release", k.split(":", 1)[1],
                    lambda kept=kept: sim.configure(alpha=0.8, modes={x: S.W8A16 for x in kept}),
                    {"mode": "int8", "alpha": 0.8, "default": S.A8, "kept_w8a16": kept})
    return state


def markdown(s: dict) -> str:
    def row(name, r):
        return f"| {name} | {r['ppl_delta_pct']:+.2f}% | {100 * r['top1_agreement']:.2f}% | {r['kl']:.4f} |"

    head = ["| configuration | perplexity delta | top-1 agreement | KL to float |", "|---|---|---|---|"]
    L = ["# Sensitivity per MatMul kind, int8 and int4 (trained-LM test model, simulated)", "", s.get("what", ""), ""]
    titles = {
        "int8": "int8 (W8A8: SmoothQuant 0.8, per-tensor static activation scales from the calibration absmax; "
                "W8A16: int8 weights per output channel, activation as ORT's 8-bit MatMulNBits level 4 computes it)",
        "int8_kind_alone": "int8: one MatMul kind W8A8 (all 30 layers), everything else float",
        "int8_default_release": "int8: the default with one kept kind released to W8A8",
        "int8_default_keep_more": "int8: the default with one more kind kept W8A16",
        "int4": "int4 (W4A16, block 128 / 64 where K = 576, activation int8 per block as MatMulNBits level 4); "
                "lm_head included (the int4 default quantizes it too)",
        "int4_kind_alone": "int4: one MatMul kind INT4 (all 30 layers), everything else float",
        "int8_down_layer_release": "int8 per layer: the default with one layer's down_proj released to W8A8",
    }
    for sec, title in titles.items():
        if s.get(sec):
            L += [f"### {title}", ""] + head + [row(k, r) for k, r in s[sec].items()] + [""]
    return "\n".join(L) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("ckpt")
    ap.add_argument("calib")
    ap.add_argument("--tokens", type=int, default=320)
    ap.add_argument("--out", default="benchmarks/results/smollm2_sensitivity")
    ap.add_argument("--down-layers", action="store_true", help="also release each layer's down_proj alone (int8)")
    ap.add_argument("--resume", action="store_true",
                    help="re-use rows of OUT.json measured with the same settings and knobs (default: measure afresh)")
    a = ap.parse_args(argv if argv is not None else sys.argv[1:])
    path = a.out + ".json"
    settings = run_settings(a)
    resume = None
    if a.resume and os.path.exists(path):
        with open(path) as fh:
            old = json.load(fh)
        resume = old if old.get("settings") == settings else None
        log("--resume: " + ("re-using the rows whose knobs match" if resume else "other settings: measuring afresh"))
    state = {"what": (
        f"Simulated with quant/simulate.py (torch fake quantization with the bundles' plans) on the first {a.tokens} "
        "tokens of quant/data/calib_text.txt, teacher-forced, against the unquantized model; calibration "
        f"{os.path.basename(a.calib)}; onnxruntime-equivalent activation handling as documented in simulate.py."),
        "command": "python -m janus_edge.benchmarks.sensitivity " + " ".join(argv if argv is not None else sys.argv[1:]),
        "settings": settings}
    from janus_edge.benchmarks.common import cpu_model

    state["machine"] = f"{cpu_model()}, {os.cpu_count()} CPUs visible"
    t0 = time.time()

    def save():
        os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
        with open(path, "w") as fh:
            json.dump(state, fh, indent=1)
            fh.write("\n")
        with open(a.out + ".md", "w") as fh:
            fh.write(markdown(state))

    run(a.bundle, a.ckpt, a.calib, a.tokens, state, save, a.down_layers, resume)
    state["wall_s"] = round(time.time() - t0, 1)
    save()
    return 0


def run_settings(a) -> dict:
    """What every row depends on besides its knobs."""
    from janus_edge.benchmarks import common as C

    return {"bundle": os.path.abspath(a.bundle), "manifest": C.file_digest(os.path.join(a.bundle, "manifest.json")),
            "ckpt": os.path.abspath(a.ckpt), "calib": C.file_digest(a.calib), "tokens": a.tokens,
            "code": C.code_version()}


if __name__ == "__main__":
    sys.exit(main())
