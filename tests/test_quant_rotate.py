"""The residual-stream rotation folded into the lm graph (quant/rotate.py): exact in fp32 with an orthogonal matrix,
wrong with a non-orthogonal one; and each new INT4 method's error on a trained layer below round-to-nearest's."""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest

from janus_edge.quant import awq as A
from janus_edge.quant import rotate as R


def _feeds(sess, rows=2, seq=5, past=3, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for i in sess.get_inputs():
        shape = [{"batch": rows, "rows": rows, "seq": seq, "past": past}.get(d, d) if isinstance(d, str) else d
                 for d in i.shape]
        shape = [rows if k == 0 and isinstance(d, str) else d for k, d in enumerate(shape)]
        if i.name == "position_ids":
            out[i.name] = np.tile(np.arange(past, past + seq, dtype=np.int64), (rows, 1))
        elif i.name == "inputs_embeds":
            out[i.name] = rng.standard_normal((rows, seq, shape[-1])).astype(np.float32)
        else:  # past K/V [rows, heads, past, head_dim]
            out[i.name] = rng.standard_normal([rows, shape[1], past, shape[3]]).astype(np.float32)
    return out


def _run(model, feeds):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in s.get_outputs()], s.run(None, feeds))), s


def _lm(tiny_bundle):
    """The tiny lm graph in memory, its RMSNorm weights (ones at init) set to seeded values, so folding them counts."""
    from onnx import numpy_helper

    model = onnx.load(os.path.join(tiny_bundle, "lm.onnx"))
    rng = np.random.default_rng(1)
    for t in model.graph.initializer:
        if "norm" in t.name and len(t.dims) == 1:
            t.CopyFrom(numpy_helper.from_array(rng.uniform(0.5, 1.5, t.dims[0]).astype(np.float32), t.name))
    return model


def _rel(a, b):
    return float(np.abs(a - b).max() / np.abs(a).max())


@pytest.mark.parametrize("orthogonal", [True, False])
def test_rotated_fp32_graph_equals_the_original(tiny_bundle, orthogonal):
    model = _lm(tiny_bundle)
    import onnxruntime as ort

    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = _feeds(s)
    ref, _ = _run(model, feeds)
    dim = feeds["inputs_embeds"].shape[-1]
    Q = R.rotation(dim, seed=3)
    assert np.allclose(Q @ Q.T, np.eye(dim), atol=1e-12)
    if not orthogonal:  # a near-orthogonal matrix (5% off one direction) must break the equality
        Q = Q @ np.diag(np.r_[1.05, np.ones(dim - 1)])
    rot = _lm(tiny_bundle)
    info = R.rotate_lm(rot, matrix=Q)["info"]
    assert info["norms_folded"] == info["residual_writers"] > 0  # two norms and two residual writers per layer
    got, _ = _run(rot, feeds)
    err = max(_rel(ref[k], got[k]) for k in ref)
    if orthogonal:
        assert err < 2e-5, err  # hidden_states and every present K/V
    else:
        assert err > 1e-3, err


def test_rotation_is_orthogonal_for_both_size_kinds():
    for dim in (64, 576, 2048):
        Q = R.rotation(dim)
        assert np.allclose(Q.T @ Q, np.eye(dim), atol=1e-10)
        assert np.abs(Q).max() < 0.5  # spread: no channel kept as it was


def _tokens(trained_ckpt, text, n):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(trained_ckpt, "tokenizer.json"))
    return tok.encode(text).ids[:n]


def test_new_int4_methods_beat_rtn_on_a_trained_layer(trained_model, trained_ckpt):
    """Layer 10 of the trained LM (SmolLM2-135M): relative output error of q_proj (fed by an RMSNorm: the rotation
    folds the norm weight and rotates the input), o_proj (rotvo-: its input rotated per head) and down_proj (a
    residual writer: output rotated, measured back in the original basis; rotall-: its input rotated online),
    calibrated on the calibration text, measured on held-out text. Every method, GPTQ with act-order and the rotated
    ones included, has a smaller error than round-to-nearest."""
    import torch

    from janus_edge.quant import calib as CB
    from janus_edge.quant.int4 import block_for, quantize_weight

    lm = trained_model.model.language_model
    blk = lm.layers[10]
    acts = {}

    def grab(split):
        got = {}
        hooks = [blk.self_attn.q_proj.register_forward_pre_hook(lambda m, a: got.__setitem__("q", a[0][0])),
                 blk.self_attn.o_proj.register_forward_pre_hook(lambda m, a: got.__setitem__("o", a[0][0])),
                 blk.mlp.down_proj.register_forward_pre_hook(lambda m, a: got.__setitem__("down", a[0][0]))]
        path = CB.CALIB_TEXT_FILE if split == "calib" else CB.HELDOUT_DOMAINS["tech"]
        with torch.no_grad():
            lm(input_ids=torch.tensor([_tokens(trained_ckpt, CB.read_text(path), 384)]))
        for h in hooks:
            h.remove()
        return {k: v.double().numpy() for k, v in got.items()}

    acts = {s: grab(s) for s in ("calib", "held")}
    w_norm = blk.input_layernorm.weight.detach().double().numpy()
    dim = w_norm.shape[0]
    Q = R.rotation(dim)
    errs = {}
    methods = ("rtn", "clip", "awq-clip", "gptq", "gptq-ao", "rot-clip", "rot-awq-clip", "rot-gptq", "rot-gptq-ao",
               "awq")
    extra = {"o": ("rotvo-gptq-ao",), "down": ("rotall-gptq-ao",)}  # per-head v/o; the online Hadamard on down
    for kind, mod in (("q", blk.self_attn.q_proj), ("o", blk.self_attn.o_proj), ("down", blk.mlp.down_proj)):
        W = mod.weight.detach().double().numpy().T  # [K, N]: y = x @ W
        Xc, Xh = acts["calib"][kind], acts["held"][kind]
        ref = Xh @ W
        block = block_for(W.shape[0], 128)
        H = Xc.T @ Xc / len(Xc)
        plain = {"mean_sq": np.diag(H).astype(np.float32), "hessian": H.astype(np.float32)}
        for method in methods + extra.get(kind, ()):
            base = method.split("-", 1)[1] if method.startswith("rot") else method
            if method.startswith("rotvo-"):  # o's input rotated per head: x blockdiag(R), W' = blockdiag(R)^T W
                B = np.kron(np.eye(W.shape[0] // 64), R.rotation(64, 1))
                Wq, X, st, back = B.T @ W, Xh @ B, R.rotate_stats_o(plain, R.rotation(64, 1)), None
            elif method.startswith("rotall-"):  # down's input x @ D online, W' = D^T W
                Hp, G = R.online_factors(W.shape[0])
                D = np.kron(G, Hp) if G is not None else Hp
                Wq, X, st, back = D.T @ W, Xh @ D, R.rotate_stats_down(plain, D), None
            elif kind == "o" and (method != base or method == "awq"):
                continue  # o: a residual writer like down (covered there); the bundle's AWQ leaves o unscaled
            elif method == "awq":  # true AWQ: x / s, diag(s) W with s searched on the calibration rows
                sc, _ = A.search_scales(Xc, [W], block)
                Wq, X, st, back, base = W * sc[:, None], Xh / sc, A.scale_stats(plain, sc), None, "awq-clip"
            elif method == base:
                Wq, X, st, back = W, Xh, plain, None
            elif kind == "q":  # folded: W' = Q^T diag(w) W on the rotated, unweighted norm output (x / rms) Q
                Wq, X, back = Q.T @ (w_norm[:, None] * W), (Xh / w_norm) @ Q, None
                st = R.rotate_stats(plain, (Q, 1.0 / w_norm))
            else:  # residual writer: W' = W Q, output rotated; back to the original basis to compare
                Wq, X, st, back = W @ Q, Xh, plain, Q.T
            q, s = quantize_weight(Wq.astype(np.float32), block, 4, base, st)
            dq = (q.reshape(-1, block, q.shape[1]) * s[:, None, :]).reshape(q.shape).astype(np.float64)
            y = X @ dq if back is None else X @ dq @ back
            errs[(kind, method)] = float(np.sum((y - ref) ** 2) / np.sum(ref ** 2))
    for (kind, method), e in errs.items():
        if method != "rtn":
            assert e < errs[(kind, "rtn")], (kind, method, errs)
    print({f"{k}/{m}": round(e, 5) for (k, m), e in errs.items()})


def test_awq_scales_fold_exactly(tiny_bundle):
    """quant/awq.py folds 1/s into the RMSNorm weights and up_proj's columns and s into the linears: the fp32 graph
    computes the same outputs (the scales searched on samples with outlier channels, so they are far from 1)."""
    import onnxruntime as ort

    model = _lm(tiny_bundle)
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = _feeds(s)
    ref, _ = _run(model, feeds)
    from janus_edge.quant.int4 import layer_of

    rng = np.random.default_rng(0)
    acts = {}
    for n in model.graph.node:
        if n.op_type == "MatMul" and layer_of(n.name)[0] in ("q", "k", "v", "gate", "up", "down"):
            k = [t for t in model.graph.initializer if t.name == n.input[1]][0].dims[0]
            x = rng.standard_normal((64, k)).astype(np.float32) * np.where(np.arange(k) % 7 == 0, 30.0, 1.0)
            acts[n.input[0]] = {"samples": x, "mean_sq": (x ** 2).mean(0)}
    got_model = _lm(tiny_bundle)
    info = A.apply_awq(got_model, {"lm": acts}, "lm", 128)["info"]
    n_layers = sum(1 for n in model.graph.node if layer_of(n.name)[0] == "down")
    assert info["groups"] == 3 * n_layers and info["alpha_mean"] > 0  # q/k/v, gate/up, down in every layer
    got, _ = _run(got_model, feeds)
    err = max(_rel(ref[k], got[k]) for k in ref)
    assert err < 2e-5, err


@pytest.mark.parametrize("orthogonal", [True, False])
def test_per_head_vo_rotation_is_exact(tiny_bundle, orthogonal):
    """quant/rotate.py rotate_heads: v_proj's output and o_proj's input rotated per head by one R, folded into both
    weights: hidden_states and the new keys equal the original's, the new (cached) values are the original's times
    R per head (the cache is kept in the rotated basis); a non-orthogonal R breaks it."""
    model = _lm(tiny_bundle)
    import onnxruntime as ort

    feeds = _feeds(ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]))
    ref, _ = _run(model, feeds)
    d = R._head_dim(model)
    Rm = R.rotation(d, seed=5)
    if not orthogonal:
        Rm = Rm @ np.diag(np.r_[1.05, np.ones(d - 1)])
    rot = _lm(tiny_bundle)
    from janus_edge.quant.int4 import layer_of

    info = R.rotate_heads(rot, matrix=Rm)["info"]
    assert info["weights_rotated"] == sum(1 for n in model.graph.node if layer_of(n.name)[0] in ("v", "o"))
    # the past values enter in the rotated basis (the rotated graph wrote them so)
    rot_feeds = {k: ((v @ Rm).astype(v.dtype) if k.startswith("past_value") else v) for k, v in feeds.items()}
    got, _ = _run(rot, rot_feeds)
    errs = {k: _rel(ref[k] @ Rm if k.startswith("new_value") else ref[k], got[k]) for k in ref}
    if orthogonal:
        assert max(errs.values()) < 2e-5, errs
    else:
        assert errs["hidden_states"] > 1e-3, errs


@pytest.mark.parametrize("orthogonal", [True, False])
def test_online_down_hadamard_is_exact_and_plain_matmuls(tiny_bundle, orthogonal, monkeypatch):
    """quant/rotate.py online_down: x @ kron(G, H) before every down_proj as Reshape / MatMul by shared constants,
    D^T folded into W_down: the fp32 outputs equal the original's; the new nodes are plain MatMul / Reshape (what
    TensorRT and ORT both take); a non-orthogonal G breaks the equality."""
    model = _lm(tiny_bundle)
    import onnxruntime as ort

    feeds = _feeds(ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]))
    ref, _ = _run(model, feeds)
    if not orthogonal:
        real = R.online_factors

        def skewed(dim, seed=0):
            h, g = real(dim, seed)
            h = h @ np.diag(np.linspace(0.5, 1.5, h.shape[0]))  # columns scaled: no longer orthogonal
            return h, g
        monkeypatch.setattr(R, "online_factors", skewed)
    rot = _lm(tiny_bundle)
    R.rotate_lm(rot, seed=1)  # as the rotall- methods do: the residual rotation first
    info = R.online_down(rot)["info"]
    assert info["layers"] > 0
    new_ops = {n.op_type for n in rot.graph.node if n.name.startswith("/rotate_down")}
    assert new_ops <= {"MatMul", "Reshape"} and "MatMul" in new_ops
    got, _ = _run(rot, feeds)
    err = max(_rel(ref[k], got[k]) for k in ref)  # hidden_states and every present K/V
    if orthogonal:
        assert err < 2e-5, err
    else:
        assert _rel(ref["hidden_states"], got["hidden_states"]) > 2e-4, err  # 10x the exactness bound


@pytest.mark.parametrize("method", ["rotvo-clip", "rotall-clip"])
def test_rotated_int4_graph_is_trt_lintable_and_close(tiny_bundle, method):
    """The int4 rewrite with every rotation (residual, per-head v/o, online down_proj Hadamard): the graph passes
    lint-trt (the online rotation is plain MatMul / Reshape by constants, the INT4 weights the bundle's DQ form) and
    its output stays near the fp32 graph's (INT4 error only); the rotation's constants stay float."""
    from types import SimpleNamespace

    from janus_edge.export.lint_trt import lint_model
    from janus_edge.quant.int4 import quantize_int4

    model = _lm(tiny_bundle)
    import onnxruntime as ort

    feeds = _feeds(ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]))
    ref, _ = _run(model, feeds)
    opts = SimpleNamespace(method=method, block_size=64, int8_layers=(), target="any", progress=False, extra={})
    q, entry = quantize_int4(_lm(tiny_bundle), "lm", None, opts)
    rot = entry["rotation"]
    assert "heads" in rot and ("online_down" in rot) == (method == "rotall-clip")
    findings, _, _ = lint_model(q, "lm")
    assert not findings, [f.line() for f in findings]
    fl = [n for n in q.graph.node if n.name.startswith("/rotate_") and n.op_type == "MatMul"]
    assert fl and all(not i.endswith("_dq") for n in fl for i in n.input)  # the rotation MatMuls are float
    got, _ = _run(q, {k: ((v @ R.rotation(R._head_dim(q), 1)).astype(v.dtype) if k.startswith("past_value") else v)
                      for k, v in feeds.items()})
    err = _rel(ref["hidden_states"], got["hidden_states"])
    plain, _ = quantize_int4(_lm(tiny_bundle), "lm", None, SimpleNamespace(**{**vars(opts), "method": "clip"}))
    base = _rel(ref["hidden_states"], _run(plain, feeds)[0]["hidden_states"])
    assert err < 3 * base, (err, base)  # INT4 error only, of the size the unrotated graph has
    print(method, err, base)


def test_every_calibrated_int4_method_gets_calibration():
    """quant/api.needs_calibration for every method name: a method that reads activation statistics (awq-clip,
    gptq, gptq-ao, awq, behind any rotation prefix) must get the calibration, else int4 silently falls back to the
    calibration-free clip search (what gptq-ao and rotall-gptq-ao got before this test)."""
    from janus_edge.quant import api
    from janus_edge.quant.int4_weights import ALL_INT4_METHODS, split_method

    pol = {"lm": "int4"}
    for m in ALL_INT4_METHODS:
        want = split_method(m)[1] not in ("rtn", "clip")
        assert api.needs_calibration(pol, api.QuantOptions(mode="int4", method=m)) == want, m
    assert api.needs_calibration(pol, api.QuantOptions(mode="int4"))  # the default, awq-clip
