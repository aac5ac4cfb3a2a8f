"""QuaRot-style rotation of the `lm` graph's residual stream, folded into its weights (exact in fp32).

For an RMSNorm decoder (Llama): norm(x) = w * x / rms(x), and rms(x Q) = rms(x) for an orthogonal Q. So with the
residual stream carried rotated (x_r = x Q):
- every RMSNorm weight w is folded into the linears it feeds (q, k, v after input_layernorm; gate, up after
  post_attention_layernorm): W' = Q^T diag(w) W, and the norm's weight becomes ones;
- every linear that writes into the residual (o_proj, down_proj) gets W' = W Q;
- the stream enters rotated: one constant MatMul inputs_embeds @ Q at the graph input (the embeddings come from other
  graphs and files: text_embed.npy, gen_embed, the vision aligner, so they are not touched);
- the final norm's weight multiply becomes a MatMul by Q^T diag(w_final), so `hidden_states` is unchanged.
The two boundary MatMuls are plain MatMuls by a float constant (TensorRT and ORT both take them); they are named
`rotate_*` and kept float by the int4 rewrite. Each linear's output is then the same as before, up to fp32 rounding,
while its input (for q/k/v/gate/up) and its output (o/down) are spread over all channels: outlier channels of the
activations and of the weights are mixed, which is what makes INT4 blocks of the folded weights easier to quantize.

Q: a randomized Hadamard matrix (Sylvester, times random signs) where the hidden size is a power of two (Pro-1B 2048,
Pro-7B 4096); otherwise the Kronecker product of the Hadamard of the largest power-of-two factor and a seeded random
orthogonal matrix of the rest (SmolLM2's 576 = 64 x 9).

Calibration statistics of the rotated inputs (for GPTQ / the weighted clip): the norm outputs' Hessian H = X^T X with
X = (x / rms) diag(w) becomes H' = Q^T diag(1/w) H diag(1/w) Q; o/down inputs are unchanged.
"""
from __future__ import annotations

import numpy as np

from . import graphio

KIND_IN = ("q", "k", "v", "gate", "up")  # linears fed by an RMSNorm
KIND_OUT = ("o", "down")  # linears writing into the residual stream
PREFIX = "rotate_"


class RotateError(ValueError):
    """The graph does not have the RMSNorm -> linear structure the rotation folds into."""


def hadamard(n: int) -> np.ndarray:
    h = np.ones((1, 1))
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h / np.sqrt(n)


def rotation(dim: int, seed: int = 0) -> np.ndarray:
    """An orthogonal [dim, dim] float64 matrix (see the module doc)."""
    rng = np.random.default_rng(seed)
    p = dim & -dim  # the largest power of two dividing dim
    q = hadamard(p)
    rest = dim // p
    if rest > 1:
        g, _ = np.linalg.qr(rng.standard_normal((rest, rest)))
        q = np.kron(g, q)
    return q * rng.choice([-1.0, 1.0], size=dim)[:, None]


def _norm_muls(model, inits: dict) -> list:
    """(node, weight name, other input) of each RMSNorm's weight multiply: Mul(1-D constant, x)."""
    out = []
    for n in model.graph.node:
        if n.op_type != "Mul" or len(n.input) != 2:
            continue
        for i in (0, 1):
            t = inits.get(n.input[i])
            if t is not None and len(t.dims) == 1 and "norm" in n.input[i]:
                out.append((n, n.input[i], n.input[1 - i]))
    return out


def rotate_lm(model, seed: int = 0, matrix: np.ndarray | None = None) -> dict:
    """Fold a residual-stream rotation into `model` (the `lm` graph) in place. Returns {act input name: (Q, 1/w)} for
    the rotated-input linears (to transform their calibration statistics) plus "info". `matrix`: a given [H, H]
    matrix instead of `rotation(H, seed)` (tests: a non-orthogonal one must break exactness)."""
    from onnx import helper, numpy_helper

    from .int4_weights import layer_of

    inits = graphio.initializers(model)
    muls = _norm_muls(model, inits)
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    final = [(n, w, x) for n, w, x in muls if n.output[0] == "hidden_states"]
    layer_norms = [(n, w, x) for n, w, x in muls if n.output[0] != "hidden_states"]
    if len(final) != 1 or not layer_norms:
        raise RotateError("no RMSNorm weight multiplies feeding hidden_states / the decoder linears")
    dim = inits[final[0][1]].dims[0]
    Q = rotation(dim, seed) if matrix is None else np.asarray(matrix, np.float64)
    stats: dict = {}
    for n, wname, _ in layer_norms:
        w = graphio.array(inits[wname]).astype(np.float64)
        mms = [c for c in consumers.get(n.output[0], []) if c.op_type == "MatMul" and c.input[1] in inits]
        if not mms or any(layer_of(c.name)[0] not in KIND_IN for c in mms):
            raise RotateError(f"the norm {n.name} feeds {[c.name for c in mms]}, not q/k/v or gate/up")
        for c in mms:
            t = inits[c.input[1]]
            W = graphio.array(t)
            _replace(model, t, (Q.T @ (w[:, None] * W.astype(np.float64))).astype(W.dtype))
        _replace(model, inits[wname], np.ones_like(graphio.array(inits[wname])))
        stats[n.output[0]] = (Q, 1.0 / np.where(w == 0, 1.0, w))
    n_out = 0
    for n in model.graph.node:
        if n.op_type == "MatMul" and layer_of(n.name)[0] in KIND_OUT and n.input[1] in inits:
            W = graphio.array(inits[n.input[1]])
            _replace(model, inits[n.input[1]], (W.astype(np.float64) @ Q).astype(W.dtype))
            n_out += 1
    # entry: inputs_embeds @ Q, every former reader of inputs_embeds reads the rotated stream
    dtype = graphio.np_dtype(inits[final[0][1]].data_type)
    q_in = numpy_helper.from_array(Q.astype(dtype), PREFIX + "in.weight")
    for c in consumers.get("inputs_embeds", []):
        for i, name in enumerate(c.input):
            if name == "inputs_embeds":
                c.input[i] = PREFIX + "in_output"
    entry = helper.make_node("MatMul", ["inputs_embeds", q_in.name], [PREFIX + "in_output"], name="/rotate_in/MatMul")
    # exit: the final norm's w * y becomes y @ (Q^T diag(w))
    fn, fw, fx = final[0]
    wf = graphio.array(inits[fw]).astype(np.float64)
    q_out = numpy_helper.from_array((Q.T * wf[None, :]).astype(dtype), PREFIX + "out.weight")
    idx = list(model.graph.node).index(fn)
    exit_mm = helper.make_node("MatMul", [fx, q_out.name], list(fn.output), name="/rotate_out/MatMul")
    model.graph.node.remove(fn)
    model.graph.node.insert(idx, exit_mm)
    if len(consumers.get(fw, [])) == 1:  # the final norm's weight now lives in rotate_out.weight
        model.graph.initializer.remove(inits[fw])
    model.graph.node.insert(0, entry)
    model.graph.initializer.extend([graphio.put(q_in), graphio.put(q_out)])
    stats["info"] = {"dim": int(dim), "norms_folded": len(layer_norms), "residual_writers": n_out,
                     "online_matmuls": ["/rotate_in/MatMul", "/rotate_out/MatMul"], "seed": seed,
                     "matrix": "randomized Hadamard" + (f" x random orthogonal {dim // (dim & -dim)}"
                                                        if dim & (dim - 1) else "")}
    return stats


def _replace(model, t, arr: np.ndarray) -> None:
    from onnx import numpy_helper

    new = numpy_helper.from_array(np.ascontiguousarray(arr), t.name)
    model.graph.initializer.remove(t)
    model.graph.initializer.append(graphio.put(new))


def rotate_stats(st: dict | None, rot) -> dict | None:
    """Calibration statistics of a norm-fed linear's input after rotation (module doc): from its Hessian."""
    if st is None or st.get("hessian") is None:
        return None
    Q, inv_w = rot
    D = inv_w[:, None] * Q  # diag(1/w) Q
    H = D.T @ st["hessian"].astype(np.float64) @ D
    return {"mean_sq": np.diag(H).astype(np.float32), "hessian": H.astype(np.float32)}


# ---- per-head rotation of v / o, and the online Hadamard on down_proj's input ----------------------------------
def _head_dim(model) -> int | None:
    for i in model.graph.input:
        if i.name.startswith("past_value"):
            d = i.type.tensor_type.shape.dim[-1].dim_value
            return int(d) if d else None
    return None


def rotate_heads(model, seed: int = 0, matrix: np.ndarray | None = None) -> dict:
    """Per-head rotation of v_proj's output and o_proj's input, folded into both weights (exact in fp32): with one
    orthogonal R [d, d] (d = head_dim) for every head, W_v' = W_v blockdiag(R) and, per attention head h of o_proj's
    input, W_o'[h] = R^T W_o[h]. The attention is linear in v (each head's output is a convex mix of its kv head's
    values), so every head's output is rotated by the same R, grouped-query attention included, and o_proj undoes
    it. The cached values (present_value) are stored rotated; every step reads them back in the same basis. No graph
    op. Returns {"info": ...}; o_proj's calibration statistics are rotated by `rotate_stats_o`."""
    from .int4_weights import layer_of

    d = _head_dim(model)
    if d is None:
        raise RotateError("no past_value input with a static head_dim")
    R = rotation(d, seed + 1) if matrix is None else np.asarray(matrix, np.float64)
    inits = graphio.initializers(model)
    done = 0
    for n in model.graph.node:
        kind, _ = layer_of(n.name)
        if n.op_type != "MatMul" or kind not in ("v", "o") or n.input[1] not in inits:
            continue
        W = graphio.array(inits[n.input[1]]).astype(np.float64)
        K, N = W.shape
        if kind == "v":
            W = (W.reshape(K, N // d, d) @ R).reshape(K, N)
        else:
            W = np.einsum("ba,hbn->han", R, W.reshape(K // d, d, N)).reshape(K, N)  # R^T per head
        _replace(model, inits[n.input[1]], W.astype(graphio.np_dtype(inits[n.input[1]].data_type)))
        done += 1
    return {"R": R, "info": {"head_dim": d, "weights_rotated": done}}


def rotate_stats_o(st: dict | None, R: np.ndarray) -> dict | None:
    """o_proj input statistics after the per-head rotation x' = x blockdiag(R)."""
    if st is None or st.get("hessian") is None:
        return None
    K = st["hessian"].shape[0]
    B = np.kron(np.eye(K // R.shape[0]), R)
    H = B.T @ st["hessian"].astype(np.float64) @ B
    return {"mean_sq": np.diag(H).astype(np.float32), "hessian": H.astype(np.float32)}


def online_factors(dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """The online rotation of down_proj's input as (H_p, G or None): dim = r * p with p the largest power of two
    dividing it, H_p the plain Hadamard, G a seeded random orthogonal [r, r] (None when r = 1); the [dim, dim]
    rotation is kron(G, H_p), and x @ kron(G, H_p) = G^T X H_p with X = x reshaped [r, p]."""
    p = dim & -dim
    r = dim // p
    G = None
    if r > 1:
        G, _ = np.linalg.qr(np.random.default_rng(seed + 2).standard_normal((r, r)))
    return hadamard(p), G


def online_down(model, seed: int = 0) -> dict:
    """An online rotation of every down_proj input, x' = x @ D, with W_down' = D^T W_down folded (exact in fp32). D =
    kron(G, H_p) (online_factors) is applied as plain float MatMuls by shared constants, which TensorRT and ORT both
    take: x -> Reshape [.., r, p] -> MatMul H_p -> MatMul(G^T, .) -> Reshape back (r = 1: one MatMul). The constants
    are one initializer each, shared by every layer (the int4 rewrite leaves shared weights float)."""
    from onnx import helper, numpy_helper

    from .int4_weights import layer_of

    inits = graphio.initializers(model)
    downs = [n for n in model.graph.node if n.op_type == "MatMul" and layer_of(n.name)[0] == "down"
             and n.input[1] in inits]
    if not downs:
        raise RotateError("no down_proj MatMul")
    dim = inits[downs[0].input[1]].dims[0]
    Hp, G = online_factors(dim, seed)
    D = Hp if G is None else np.kron(G, Hp)
    dtype = graphio.np_dtype(inits[downs[0].input[1]].data_type)
    consts = [numpy_helper.from_array(Hp.astype(dtype), PREFIX + "down_h")]
    if G is not None:
        consts += [numpy_helper.from_array(np.ascontiguousarray(G.T).astype(dtype), PREFIX + "down_gt"),
                   numpy_helper.from_array(np.array([0, 0, G.shape[0], Hp.shape[0]], np.int64), PREFIX + "down_split"),
                   numpy_helper.from_array(np.array([0, 0, dim], np.int64), PREFIX + "down_join")]
    for n in downs:
        t = inits[n.input[1]]
        _replace(model, t, (D.T @ graphio.array(t).astype(np.float64)).astype(graphio.np_dtype(t.data_type)))
        x, base = n.input[0], f"/{PREFIX}down_{layer_of(n.name)[1]}"
        if G is None:
            new = [helper.make_node("MatMul", [x, consts[0].name], [base + "_out"], name=base + "/MatMul")]
        else:
            new = [helper.make_node("Reshape", [x, consts[2].name], [base + "_x"], name=base + "/Reshape"),
                   helper.make_node("MatMul", [base + "_x", consts[0].name], [base + "_h"], name=base + "/MatMul"),
                   helper.make_node("MatMul", [consts[1].name, base + "_h"], [base + "_g"], name=base + "/MatMul_g"),
                   helper.make_node("Reshape", [base + "_g", consts[3].name], [base + "_out"],
                                    name=base + "/Reshape_1")]
        idx = list(model.graph.node).index(n)
        for k, nn in enumerate(new):
            model.graph.node.insert(idx + k, nn)
        n.input[0] = base + "_out"
    model.graph.initializer.extend([graphio.put(c) for c in consts])
    return {"D": D, "info": {"dim": int(dim), "layers": len(downs), "hadamard": int(Hp.shape[0]),
                             "random_orthogonal": int(G.shape[0]) if G is not None else None,
                             "constant_bytes": int(sum(np.prod(c.dims) * np.dtype(dtype).itemsize
                                                       for c in consts[:2]))}}


def rotate_stats_down(st: dict | None, D: np.ndarray) -> dict | None:
    """down_proj input statistics after x' = x @ D."""
    if st is None or st.get("hessian") is None:
        return None
    H = D.T @ st["hessian"].astype(np.float64) @ D
    return {"mean_sq": np.diag(H).astype(np.float32), "hessian": H.astype(np.float32)}
