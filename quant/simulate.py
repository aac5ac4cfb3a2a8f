"""Fake quantization of the trained LM in torch with the bundle's own plans: fast what-if measurements for the
per-MatMul sensitivity table (benchmarks/sensitivity.py) and the mixed-precision selection; tests/test_quant_simulate.py
checks it against the ONNX Runtime int8 bundle.

The plans (SmoothQuant vector s, activation scale) come from int8.plan_graph on the fp bundle's `lm` / `lm_head`
graphs with the same calibration, so each torch Linear computes what its QDQ MatMul computes:
    W8A8 / FP8:  y = Q_a(x / s; scale) @ Q_w(diag(s) W^T)      Q_w per output channel, symmetric
    W8A16:       y = (x / s) @ Q_w(diag(s) W^T)                 (the kept, weight-only form; on ORT's CPU the
                 activation is int8 per row and block of 32 channels, MatMulNBits level 4: `kept_block`)
    W4A16:       y = Q_blk(x) @ Q4(W^T)                         (int4 mode: quant/int4.py's block scales for the
                 method, rtn / clip / awq-clip; the activation int8 per row and weight block, as MatMulNBits level 4)
    float:       y = x @ W^T
(Folding 1/s into the RMSNorm weight or the up_proj columns, as the bundle does, is the same arithmetic.) A forward of
the whole text at once is the teacher-forced pass (causal attention = the chunked KV-cache pass of evaluate.py).
"""
from __future__ import annotations

import os
import time

import numpy as np

from . import graphio
from . import int8 as I8

FLOAT, W8A16, A8, W4 = 0, 1, 2, 3


def _torch_linear(model, graph: str, node_name: str):
    if graph == "lm_head":
        return model.lm_head
    kind, layer = I8.layer_of(node_name)
    if kind is None:
        return None
    lyr = model.model.language_model.layers[layer]
    return getattr(lyr.self_attn if kind in ("q", "k", "v", "o") else lyr.mlp, f"{kind}_proj")


class FakeQuantLM:
    """The torch model with every decoder Linear and lm_head wrapped; `configure` sets the smoothing alpha per
    activation group and each MatMul's precision (FLOAT / W8A16 / A8) and recomputes the quantized weights."""

    def __init__(self, ckpt: str, src: str, calib, mode: str = "int8", model=None):
        import torch

        from janus_edge import contract as C

        from .fp8 import E4M3_MAX, fp8_scheme

        self.torch, self.calib = torch, calib
        if model is None:
            from janus_edge.export.checkpoint import load_checkpoint

            model = load_checkpoint(ckpt).model
        self.model = model.eval()
        self.scheme, self.act_qmax = (fp8_scheme(), E4M3_MAX) if mode == "fp8" else (I8.int8_scheme(), 127.0)
        self.kept_scheme = I8.int8_scheme()
        self.state: dict[str, int] = {}
        self.groups: dict[str, list[str]] = {}  # "graph|act" -> MatMul keys "graph:node"
        self.stats: dict[str, np.ndarray] = {}  # "graph|act" -> per-channel absmax of the activation
        self.msq: dict[str, np.ndarray] = {}  # "graph|act" -> per-channel mean square (AWQ importance)
        self.lin: dict[str, object] = {}
        self.q: dict[str, tuple] = {}  # key -> (s or None, act scale, quantized weight [K, N])
        self.q4: dict[str, tuple] = {}  # key -> (block, int4 fake-quantized weight [K, N]) for W4
        man = C.load_manifest(src)
        for graph in ("lm", "lm_head"):
            g = graphio.load(os.path.join(src, man.graphs[graph].file))
            acts = {}
            for n in g.graph.node:
                if n.op_type == "MatMul" and _torch_linear(self.model, graph, n.name) is not None:
                    acts.setdefault(n.input[0], []).append(n.name)
            for act, names in acts.items():
                st = calib.stats(graph, act)
                if st is None:
                    continue
                gk = f"{graph}|{act}"
                self.groups[gk] = [f"{graph}:{nm}" for nm in names]
                self.stats[gk] = np.asarray(st.absmax_ch, np.float32)
                self.msq[gk] = st.mean_sq
                for nm in names:
                    key = f"{graph}:{nm}"
                    self.lin[key] = _torch_linear(self.model, graph, nm)
                    self.state[key] = A8
                    self._wrap(key)

    kept_scheme = None  # the weight format of kept (W8A16) MatMuls: int8 (default) or the mode's own
    kept_block = 32  # kept MatMuls' activations as ORT's 8-bit MatMulNBits computes them (0: fp32, true W8A16)

    def configure(self, alpha=0.8, modes: dict | None = None, default: int = A8, smooth_kept: bool = False):
        """alpha: a float (or None: no smoothing) or {group: alpha}; modes: MatMul key -> FLOAT/W8A16/A8. A group
        whose MatMuls are all kept (not A8) is not smoothed unless smooth_kept (its activation is never quantized)."""
        modes = modes or {}
        for k in self.state:
            self.state[k] = modes.get(k, default)
        for gk, keys in self.groups.items():
            a = alpha.get(gk, 0.8) if isinstance(alpha, dict) else alpha
            if not smooth_kept and all(self.state[k] != A8 for k in keys):
                a = None
            ws = [self.lin[k].weight.detach().float().T.numpy() for k in keys]  # [K, N]
            w_absmax = np.max([np.abs(w).max(1) for w in ws], axis=0)
            s = None if a is None else I8._smooth_vec(self.stats[gk], w_absmax, a)
            x_absmax = self.stats[gk] if s is None else self.stats[gk] / s
            scale = max(float(x_absmax.max()) / self.act_qmax, 1e-12)
            for k, w in zip(keys, ws):
                sch = self.kept_scheme if self.state[k] == W8A16 else self.scheme
                wq = I8.weight_fake(w * s[:, None] if s is not None else w, sch)
                self.q[k] = (None if s is None else self.torch.from_numpy(s), scale, self.torch.from_numpy(wq))

    def quantize_int4(self, keys=None, method: str = "awq-clip", block: int = 128, bits: int = 4) -> None:
        """INT4 weights (W4 state) for `keys` (default: all) with quant/int4.py's method and block rule; the
        importance of awq-clip is the calibrated mean square of the input channels, as in the bundle. bits=8: the
        int4 mode's 8-bit blocks (`--int8-layers`); gptq methods read the calibrated Hessian."""
        from . import int4 as I4

        group = {k: gk for gk, ks in self.groups.items() for k in ks}
        for k in (self.state if keys is None else keys):
            w = self.lin[k].weight.detach().float().T.numpy()  # [K, N]
            b = I4.block_for(w.shape[0], block)
            st = {"mean_sq": self.msq[group[k]]}
            if method.startswith("gptq") and self.calib is not None:
                st = self.calib.matmul_stats(*group[k].split("|", 1))
            q, s = I4.quantize_weight(w, b, bits, method, st)
            K, N = w.shape
            wq = (q.astype(np.float32).reshape(K // b, b, N) * s[:, None, :]).reshape(K, N)
            self.q4[k] = (b, self.torch.from_numpy(np.ascontiguousarray(wq)))

    def _wrap(self, key: str) -> None:
        torch = self.torch
        lin = self.lin[key]
        w_fp = lin.weight.detach()
        fp8 = self.scheme.name == "fp8"
        qmax = self.scheme.qmax if fp8 else 127.0
        state, qd = self.state, self.q
        blk = self.kept_block if lin.weight.shape[1] % max(self.kept_block, 1) == 0 else 0

        q4 = self.q4

        def blocks(xs, b):  # ORT's MatMulNBits level 4: the activation int8 per row and block of b input channels
            shp = xs.shape
            xb = xs.reshape(*shp[:-1], shp[-1] // b, b)
            sb = xb.abs().amax(-1, keepdim=True).clamp_min(1e-12) / 127.0
            return (torch.round(xb / sb) * sb).reshape(shp)

        def forward(x):
            m = state[key]
            if m == W4:
                b, w4 = q4[key]
                return blocks(x, b) @ w4
            if m == FLOAT or key not in qd:
                return torch.nn.functional.linear(x, w_fp)
            s_t, scale, wq = qd[key]
            xs = x / s_t if s_t is not None else x
            if m == W8A16 and blk:
                xs = blocks(xs, blk)
            elif m == A8:
                if fp8:
                    xs = (xs / scale).clamp(-qmax, qmax).to(torch.float8_e4m3fn).float() * scale
                else:
                    xs = torch.clamp(torch.round(xs / scale), -qmax - 1, qmax) * scale
            return xs @ wq

        lin.forward = forward

    def set_all(self, mode: int) -> None:
        for k in self.state:
            self.state[k] = mode

    def logits(self, ids: np.ndarray) -> np.ndarray:
        torch = self.torch
        with torch.no_grad():
            lm = self.model.model.language_model
            e = lm.get_input_embeddings()(torch.from_numpy(np.asarray(ids, np.int64))[None])
            h = lm(inputs_embeds=e).last_hidden_state
            return self.model.lm_head(h)[0].float().numpy()


class SimText:
    """Teacher-forced measures of the simulated model against its float configuration on `ids`."""

    def __init__(self, sim: FakeQuantLM, ids: np.ndarray):
        self.sim, self.ids, self.tgt = sim, ids, ids[1:]
        saved = dict(sim.state)
        sim.set_all(FLOAT)
        self.fp_lp = _log_softmax(sim.logits(ids)[:-1])
        self.fp_top = self.fp_lp.argmax(-1)
        sim.state.update(saved)

    def measure(self) -> dict:
        t0 = time.time()
        lq = _log_softmax(self.sim.logits(self.ids)[:-1])
        n = len(self.tgt)
        r = np.arange(n)
        d = float(np.mean(self.fp_lp[r, self.tgt] - lq[r, self.tgt]))
        kl = float(np.mean(np.sum(np.exp(self.fp_lp) * (self.fp_lp - lq), -1)))
        return {"tokens": n, "ppl_delta_pct": round(100 * float(np.exp(d) - 1), 3),
                "top1_agreement": round(float((lq.argmax(-1) == self.fp_top).mean()), 4), "kl": round(kl, 5),
                "seconds": round(time.time() - t0, 1)}


def _log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max(-1, keepdims=True)
    return (x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))).astype(np.float32)
