"""INT4 weight math shared by the int4 mode (int4.py) and its methods (awq.py, rotate.py): layer names, block
sizes, the clip search, GPTQ, and one weight's quantization. numpy only; imports nothing of the quant package, so the
methods use it without importing int4.py (which imports them)."""
from __future__ import annotations

import re

import numpy as np

CLIP_GRID = tuple(np.round(np.linspace(1.0, 0.55, 10), 3))
_KIND = re.compile(r"/(?:mlp/)?(q|k|v|o|gate|up|down)_proj(?:_(\d+))?/MatMul$")


def layer_of(node_name: str) -> tuple[str | None, int | None]:
    """('down', 3) for '/mlp/down_proj_3/MatMul'; (None, None) for a MatMul outside the decoder layers."""
    m = _KIND.search(node_name)
    if not m:
        return None, None
    return m.group(1), int(m.group(2) or 0)


BASE_METHODS = ("rtn", "clip", "awq-clip", "gptq", "gptq-ao", "awq")
CALIBRATED_INT4 = ("awq-clip", "gptq", "gptq-ao", "awq")  # the base methods that read activation statistics
ROT_PREFIXES = ("rot-", "rotvo-", "rotall-")  # residual stream; + per-head v/o; + the online Hadamard on down's input
ALL_INT4_METHODS = BASE_METHODS + tuple(p + b for p in ROT_PREFIXES for b in ("clip", "awq-clip", "gptq", "gptq-ao"))


def split_method(method: str) -> tuple[str, str]:
    """'rotvo-gptq-ao' -> ('rotvo-', 'gptq-ao'); 'awq' -> ('', 'awq')."""
    prefix = next((p for p in ROT_PREFIXES if method.startswith(p)), "")
    return prefix, method[len(prefix):]


TRT_TARGETS = ("trt", "orin", "ada", "hopper", "thor")  # where TensorRT builds the bundle
TRT_BLOCKS = (64, 128)  # INT4 block sizes TensorRT takes (export/trt_ops.py INT4_BLOCKS)


def block_for(k: int, want: int, allowed: tuple[int, ...] | None = None) -> int | None:
    """The block size used for a weight with K input rows (see the module doc). `allowed`: the only sizes a target
    takes (TensorRT: 64, 128); a weight none of them divides stays float."""
    b = want
    while b >= 16:
        if k % b == 0 and (allowed is None or b in allowed):
            return b
        b //= 2
    return None


# ---- the weight math -----------------------------------------------------------------------------------------
def _scales(w: np.ndarray, block: int, qmax: int, ratio: np.ndarray | float = 1.0) -> np.ndarray:
    K, N = w.shape
    amax = np.abs(w.reshape(K // block, block, N)).max(axis=1)
    s = amax * ratio / qmax
    return np.where(s > 0, s, 1.0).astype(np.float32)


def _fake(w: np.ndarray, s: np.ndarray, block: int, qmin: int, qmax: int) -> tuple[np.ndarray, np.ndarray]:
    K, N = w.shape
    wb = w.reshape(K // block, block, N)
    q = np.clip(np.rint(wb / s[:, None, :]), qmin, qmax)
    return q.reshape(K, N), (q * s[:, None, :]).reshape(K, N)


def clip_search(w: np.ndarray, block: int, bits: int, importance: np.ndarray | None = None,
                grid=CLIP_GRID) -> np.ndarray:
    """Per-block scales minimising sum_k importance_k (w - dq(w))^2 over the ratio grid."""
    qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    K, N = w.shape
    imp = np.ones((K, 1), np.float32) if importance is None else importance.reshape(K, 1).astype(np.float32)
    best_s, best_e = None, None
    for r in grid:
        s = _scales(w, block, qmax, r)
        _, dq = _fake(w, s, block, qmin, qmax)
        e = ((w - dq) ** 2 * imp).reshape(K // block, block, N).sum(axis=1)
        if best_s is None:
            best_s, best_e = s, e
        else:
            better = e < best_e
            best_s, best_e = np.where(better, s, best_s), np.minimum(e, best_e)
    return best_s


def gptq(w: np.ndarray, hessian: np.ndarray, block: int, bits: int, damp: float = 0.01,
         importance: np.ndarray | None = None, act_order: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """GPTQ on w [K, N] (y = x @ w) with H = X^T X [K, K]; -> (q [K, N] ints, scales [K/block, N]).

    act_order: the input channels are quantized in order of decreasing H_kk (the channels with the most activation
    energy first, while the most columns are left to absorb their error). The scales stay per contiguous block of K
    (the bundle's DQ form), so they are chosen up front on the original weights ("static groups": the clip search
    per block), and each permuted column uses its own block's scale."""
    qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    W = np.array(w, dtype=np.float64).T.copy()  # [N, K]: columns are input channels, as in the paper
    K = W.shape[1]
    H = np.array(hessian, dtype=np.float64)
    dead = np.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H[np.diag_indices(K)] += damp * np.mean(np.diag(H))
    S = np.zeros((K // block, W.shape[0]), np.float32)
    perm = np.arange(K)
    if act_order:
        S[:] = clip_search(W.T.astype(np.float32), block, bits, importance)
        perm = np.argsort(-np.diag(H), kind="stable")
        W, H = W[:, perm], H[perm][:, perm]
    Hinv = np.linalg.cholesky(np.linalg.inv(H)).T  # upper
    Q = np.zeros_like(W)
    for g in range(0, K, block):  # one lazy-update batch of columns (= one scale block unless act_order)
        if not act_order:
            S[g // block] = clip_search(W[:, g:g + block].T.astype(np.float32), block, bits,
                                        None if importance is None else importance[g:g + block])[0]
        Wg, Hg = W[:, g:g + block].copy(), Hinv[g:g + block, g:g + block]
        Eg = np.zeros_like(Wg)
        for j in range(block):
            s = S[perm[g + j] // block].astype(np.float64)
            col = Wg[:, j]
            q = np.clip(np.rint(col / s), qmin, qmax)
            Q[:, g + j] = q
            err = (col - q * s) / Hg[j, j]
            Wg[:, j:] -= np.outer(err, Hg[j, j:])
            Eg[:, j] = err
        W[:, g + block:] -= Eg @ Hinv[g:g + block, g + block:]
    out = np.empty_like(Q)
    out[:, perm] = Q
    return out.T.astype(np.int8), S


COLUMN_CHUNK = 1 << 24  # weight elements per quantize_weight pass (64 MB of fp32 per temporary)


def quantize_weight(w: np.ndarray, block: int, bits: int, method: str, stats: dict | None) -> tuple[np.ndarray, np.ndarray]:
    """-> (q ints [K, N] as int8, scales [K/block, N] float32). Output columns are independent for every method
    (blocks run along K; GPTQ's Hessian is over K), so a wide weight is done in column chunks: its fp32 temporaries
    stay ~COLUMN_CHUNK elements each (Pro-7B's lm_head, 4096 x 102400 fp16: ~1.7 GB per fp32 temporary otherwise)."""
    K, N = w.shape
    step = max(1, COLUMN_CHUNK // max(K, 1))
    if N <= step:
        return _quantize_columns(w, block, bits, method, stats)
    q, s = np.empty((K, N), np.int8), np.empty((K // block, N), np.float32)
    for c in range(0, N, step):
        q[:, c:c + step], s[:, c:c + step] = _quantize_columns(w[:, c:c + step], block, bits, method, stats)
    return q, s


def _quantize_columns(w, block: int, bits: int, method: str, stats: dict | None) -> tuple[np.ndarray, np.ndarray]:
    qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    w = np.asarray(w, np.float32)
    imp = None if not stats else stats.get("mean_sq")
    if method in ("gptq", "gptq-ao") and stats and stats.get("hessian") is not None:
        return gptq(w, stats["hessian"], block, bits, importance=imp, act_order=method == "gptq-ao")
    if method == "rtn":
        s = _scales(w, block, qmax)
    else:
        s = clip_search(w, block, bits, imp if method in ("awq-clip", "gptq", "gptq-ao") else None)
    q, _ = _fake(w, s, block, qmin, qmax)
    return q.astype(np.int8), s


def _stats_for(calib, graph: str, act_name: str) -> dict | None:
    """Calibration statistics of one MatMul's activation input: {'mean_sq': [K], 'hessian': [K, K] or None}."""
    if calib is None:
        return None
    getter = getattr(calib, "matmul_stats", None)
    if getter is not None:
        return getter(graph, act_name)
    per = calib.get(graph, {}) if isinstance(calib, dict) else {}
    return per.get(act_name)
