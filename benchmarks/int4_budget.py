"""Where the INT4 error of the trained-LM test model comes from, per MatMul kind and per held-out domain, what 1.15x
the bytes of pure INT4 buys, and a mixed-precision choice within that budget (issue 25). Simulated in torch with
quant/simulate.py (the bundle's block rule and methods; MatMulNBits level-4 activations).

    python -m janus_edge.benchmarks.int4_budget FP32_BUNDLE CKPT CALIB.npz [--method awq-clip] [--tokens 256]
        [--domain-tokens 512] [--budget 1.15] [--out benchmarks/results/smollm2_int4_budget]

Rows (each against the simulator's float model, on the calibration text's first N tokens and on the first
--domain-tokens of every held-out domain apart): everything INT4; one kind INT4 and the rest float (where the error
comes from); everything INT4 but one kind in INT8 per output channel (what upgrading that kind buys); lm_head in
blocks of 32.
Selection (calibration text only; held-out text is never used for a choice): each MatMul's gain is its kind's
measured KL gain on the calibration text (all INT4 vs all INT4 but that kind INT8) shared out among the kind's
MatMuls by their calibrated INT4 output error tr(dW^T X^T X dW); gain per extra byte is taken greedily until the
budget (bytes of the quantized graphs <= budget x pure INT4's); the chosen mix is then measured on every domain and
written as an `int8_layers` list of MatMul names for `janus-edge quantize --int8-layers`.
Bytes: INT4 codes K*N/2 + one fp32 scale per block (the bundle's scales take the MatMul's dtype); INT8 weight-only
per output channel (DequantizeLinear axis 1, the form TensorRT builds as weight-only int8 and ORT fuses into an 8-bit
MatMulNBits) K*N + 4*N.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

KINDS = ("q", "k", "v", "o", "gate", "up", "down", "lm_head")


def log(msg: str) -> None:
    print(f"[int4-budget] {msg}", file=sys.stderr, flush=True)


def weight_bytes(K: int, N: int, block: int, bits: int, scale_bytes: int = 4) -> int:
    return K * N * bits // 8 + (K // block) * N * scale_bytes


def kind_of(key: str) -> str:
    from janus_edge.quant.int4_weights import layer_of

    return "lm_head" if key.startswith("lm_head") else layer_of(key.split(":", 1)[1])[0]


def greedy(gains: dict[str, float], extra: dict[str, int], budget: int) -> list[str]:
    """Keys with the best gain per extra byte, in that order, while their extra bytes fit the budget."""
    chosen, used = [], 0
    for k in sorted(gains, key=lambda k: -gains[k] / max(extra[k], 1)):
        if gains[k] > 0 and used + extra[k] <= budget:
            chosen.append(k)
            used += extra[k]
    return chosen


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("ckpt")
    ap.add_argument("calib")
    ap.add_argument("--method", default="awq-clip")
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--budget", type=float, default=1.15)
    ap.add_argument("--block", type=int, default=128)
    ap.add_argument("--domain-tokens", type=int, default=512, help="first N tokens of each held-out domain")
    ap.add_argument("--out", default="benchmarks/results/smollm2_int4_budget")
    a = ap.parse_args(argv)

    import torch

    from janus_edge.benchmarks.common import write_results
    from janus_edge.quant import calib as CB
    from janus_edge.quant import evaluate as E
    from janus_edge.quant import simulate as S
    from janus_edge.quant.int4_weights import block_for

    torch.set_num_threads(1)
    t0 = time.time()
    sim = S.FakeQuantLM(a.ckpt, a.bundle, CB.CalibData.load(a.calib), "int8")
    fp = E.open_bundle(a.bundle, config={})
    texts = {"calib": E.text_ids(fp, CB.read_text(CB.CALIB_TEXT_FILE))[:a.tokens]}
    texts.update({d: E.text_ids(fp, CB.read_text(p))[:a.domain_tokens] for d, p in CB.HELDOUT_DOMAINS.items()})
    sim.configure(alpha=None, default=S.FLOAT)
    refs = {d: S.SimText(sim, ids) for d, ids in texts.items()}
    keys = list(sim.state)
    of = {k: kind_of(k) for k in keys}
    shape = {k: tuple(sim.lin[k].weight.shape[::-1]) for k in keys}  # [K, N]
    log(f"{len(keys)} MatMuls; quantizing ({a.method})")
    w = {}
    sim.quantize_int4(keys, a.method, a.block)
    w[4] = dict(sim.q4)
    head = [k for k in keys if of[k] == "lm_head"]
    sim.quantize_int4(head, a.method, 32, 4)
    w["head32"] = {k: sim.q4[k] for k in head}
    blk = {k: block_for(shape[k][0], a.block) for k in keys}
    b4 = {k: weight_bytes(*shape[k], blk[k], 4) for k in keys}
    extra8 = {k: shape[k][0] * shape[k][1] + 4 * shape[k][1] - b4[k] for k in keys}  # int8 per output channel
    pure = sum(b4.values())
    state = {"method": a.method, "tokens": {d: len(i) - 1 for d, i in texts.items()}, "pure_int4_bytes": pure,
             "budget": a.budget, "rows": {}, "bytes_per_kind": {}}
    for kind in KINDS:
        ks = [k for k in keys if of[k] == kind]
        state["bytes_per_kind"][kind] = {
            "matmuls": len(ks), "params": int(sum(np.prod(shape[k]) for k in ks)),
            "int4_bytes": sum(b4[k] for k in ks), "int8_extra_bytes": sum(extra8[k] for k in ks),
            "block32_extra_bytes": sum(weight_bytes(*shape[k], 32, 4) - b4[k] for k in ks)}

    def setup(int8=(), floats=(), head32=False):
        for k in keys:
            if k in floats:
                sim.state[k] = S.FLOAT
                continue
            if k in int8:  # int8 weight per output channel, DQ axis 1 (TensorRT weight-only int8; ORT 8-bit
                sim.state[k] = S.W8A16  # MatMulNBits, the activation int8 per row and block of 32)
                continue
            sim.state[k] = S.W4
            sim.q4[k] = w["head32"][k] if head32 and k in head else w[4][k]

    def measure(name, texts_=None, **cfg):
        setup(**cfg)
        r = {d: refs[d].measure() for d in (texts_ or refs)}
        extra = sum(extra8[k] for k in cfg.get("int8", ()))
        if cfg.get("head32"):
            extra += state["bytes_per_kind"]["lm_head"]["block32_extra_bytes"]
        floats = cfg.get("floats", ())
        nbytes = sum(b4[k] for k in keys if k not in floats) + extra
        state["rows"][name] = {"texts": r, "bytes_vs_pure_int4": round(nbytes / pure, 4) if not floats else None}
        log(f"{name}: " + ", ".join(f"{d} {v['ppl_delta_pct']:+.1f}%/{100 * v['top1_agreement']:.1f}%/"
                                    f"{v['kl']:.3f}" for d, v in r.items()))
        return r

    measure("all INT4")
    for kind in KINDS:
        measure(f"only {kind} INT4", floats=[k for k in keys if of[k] != kind])
    for kind in KINDS:
        measure(f"all INT4, {kind} 8-bit", int8=[k for k in keys if of[k] == kind])
    measure("all INT4, lm_head block 32", head32=True)
    # per MatMul: the measured KL gain of its kind, shared out by each MatMul's calibrated output error
    # tr(dW^T H dW) (H = X^T X of its input, dW its INT4 error): no forward pass per MatMul
    base_kl = state["rows"]["all INT4"]["texts"]["calib"]["kl"]
    kind_gain = {kind: base_kl - state["rows"][f"all INT4, {kind} 8-bit"]["texts"]["calib"]["kl"] for kind in KINDS}
    group = {k: gk for gk, ks in sim.groups.items() for k in ks}
    err = {}
    for k in keys:
        st = sim.calib.matmul_stats(*group[k].split("|", 1))
        dw = sim.lin[k].weight.detach().double().T.numpy() - w[4][k][1].double().numpy()
        err[k] = float(np.sum((st["hessian"].astype(np.float64) @ dw) * dw))
    gains = {}
    for kind in KINDS:
        ks = [k for k in keys if of[k] == kind]
        tot = sum(err[k] for k in ks) or 1.0
        gains.update({k: kind_gain[kind] * err[k] / tot for k in ks})
    budget = int((a.budget - 1) * pure)
    chosen = greedy(gains, extra8, budget)
    state["per_matmul_kl_gain_calib"] = {k: round(g, 5) for k, g in gains.items()}
    state["chosen_int8"] = [k.split(":", 1)[1] for k in chosen]
    measure(f"mix: {len(chosen)} MatMuls 8-bit chosen on calibration text", int8=chosen)
    chosen32 = greedy(gains, extra8, budget - state["bytes_per_kind"]["lm_head"]["block32_extra_bytes"])
    state["chosen_int8_head32"] = [k.split(":", 1)[1] for k in chosen32]
    measure(f"mix + lm_head block 32: {len(chosen32)} MatMuls 8-bit", int8=chosen32, head32=True)
    state["seconds"] = round(time.time() - t0, 1)
    write_results(state, a.out, markdown)
    return 0


def markdown(s: dict) -> str:
    rows = s["rows"]
    doms = list(next(iter(rows.values()))["texts"])
    L = ["# INT4 error by MatMul kind and domain, and the 1.15x byte budget (trained-LM test model, simulated)", "",
         f"quant/simulate.py, method {s['method']}, block 128 (64 where K = 576), MatMulNBits level-4 activations; "
         "each row against the simulator's float model; calib = the calibration text (choices are made on it "
         "only), the others the held-out domains; tokens " + ", ".join(f"{d} {n}" for d, n in s["tokens"].items())
         + ". Cells: perplexity delta / top-1 agreement / KL.", "",
         "| configuration | " + " | ".join(doms) + " | bytes vs pure INT4 |", "|---|" + "---|" * len(doms) + "---|"]
    for name, r in rows.items():
        cells = [f"{v['ppl_delta_pct']:+.1f}% / {100 * v['top1_agreement']:.1f}% / {v['kl']:.3f}"
                 for v in r["texts"].values()]
        L.append(f"| {name} | " + " | ".join(cells) + f" | {r['bytes_vs_pure_int4'] or '-'} |")
    L += ["", f"Bytes (pure INT4 = {s['pure_int4_bytes'] / 1e6:.2f} MB; the budget {s['budget']}x allows "
          f"{(s['budget'] - 1) * s['pure_int4_bytes'] / 1e6:.2f} MB more):", "",
          "| kind | MatMuls | params | INT4 MB | 8-bit: extra MB | block 32: extra MB |", "|---|---|---|---|---|---|"]
    for kind, b in s["bytes_per_kind"].items():
        L.append(f"| {kind} | {b['matmuls']} | {b['params'] / 1e6:.2f}M | {b['int4_bytes'] / 1e6:.2f} | "
                 f"{b['int8_extra_bytes'] / 1e6:.2f} | {b['block32_extra_bytes'] / 1e6:.2f} |")
    L += ["", f"Chosen 8-bit MatMuls (greedy KL gain per byte on the calibration text): "
          f"{', '.join(s['chosen_int8'])}.", f"Run time {s.get('seconds')} s (shared 2-core machine)."]
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    sys.exit(main())
