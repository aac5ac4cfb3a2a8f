"""`janus-edge verify`: each graph of a bundle in ONNX Runtime against transformers on the same inputs, plus a
whole-model check (prefill + decode steps through `lm` + `gen_head` against transformers' own cache and head).

The reference is always the fp32 model; an fp16 bundle gets the same (fp16-rounded) inputs and fp16 tolerances.
Memory: the checkpoint is opened lazily (model on the meta device, `stream.py`); each graph's reference modules get
their fp32 weights only while that graph is checked, the reference language model one decoder layer at a time, and
each ONNX Runtime session is dropped (and the heap trimmed) before the next graph. fp16 graphs run with session
options that keep ORT's fp32 copies of fp16 weights to one at a time (`session_options`)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch

from janus_edge import contract as C
from janus_edge.errors import BundleError

from .checkpoint import open_checkpoint
from .exporter import TORCH_DTYPES, example_inputs
from .graphs import build_module
from .stream import load_module, materialized, offload_layers, release, return_freed_memory

# (max abs error relative to the reference's max magnitude, min cosine) per bundle float dtype
TOLERANCE = {"float32": (1e-4, 0.99999), "float16": (2e-2, 0.999)}
CODE_AGREEMENT = {"float32": 0.99, "float16": 0.9}  # vq_encoder: argmin over the codebook may flip on near-ties


# transformers' own entry points where the graph's module re-states them (others call transformers directly)
REFERENCE = {
    "gen_embed": lambda m: m.prepare_embeddings_for_image_generation,
    "vq_decoder": lambda m: m.decode_image_tokens,
}


@dataclass
class Row:
    graph: str
    max_abs_err: float
    cosine: float
    ok: bool
    note: str = ""


@dataclass
class VerifyReport:
    rows: list[Row] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)

    def table(self) -> str:
        lines = [f"{'graph':<32} {'max_abs_err':>12} {'cosine':>10}  status", "-" * 66]
        for r in self.rows:
            lines.append(f"{r.graph:<32} {r.max_abs_err:>12.3e} {r.cosine:>10.6f}  "
                         f"{'ok' if r.ok else 'FAIL'}{'  ' + r.note if r.note else ''}")
        return "\n".join(lines)


def compare(name: str, got: np.ndarray, ref: np.ndarray, dtype: str) -> Row:
    got, ref = np.asarray(got, np.float64).ravel(), np.asarray(ref, np.float64).ravel()
    if got.shape != ref.shape:
        return Row(name, float("inf"), 0.0, False, f"shape {got.shape} vs {ref.shape}")
    err = float(np.max(np.abs(got - ref))) if got.size else 0.0
    denom = np.linalg.norm(got) * np.linalg.norm(ref)
    cos = float(got @ ref / denom) if denom > 0 else float(np.array_equal(got, ref))
    rel_tol, cos_tol = TOLERANCE[dtype]
    scale = max(1.0, float(np.max(np.abs(ref)))) if ref.size else 1.0
    ok = bool(np.isfinite(got).all() and err <= rel_tol * scale and cos >= cos_tol)
    return Row(name, err, cos, ok)


def session_options(precision: str):
    """ORT session options for checking a graph of this precision on the CPU: fp16 graphs get the runtime's
    memory-saving options (runtime/ort_backend.py `low_memory_fp16`: the weights plus one fp32 copy at a time)."""
    import onnxruntime as ort

    from janus_edge.runtime.ort_backend import low_memory_fp16

    so = ort.SessionOptions()
    if precision == "float16":
        low_memory_fp16(so, ort)
    return so


def _session(bundle: str, m: C.Manifest, graph: str):
    import onnxruntime as ort

    C.check_files(bundle, m, C.graph_files(m, graph))
    so = session_options(m.graphs[graph].precision)
    return ort.InferenceSession(os.path.join(bundle, m.graphs[graph].file), so, providers=["CPUExecutionProvider"])


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def check_simple_graph(bundle, m, ck, name, dtype) -> Row:
    spec = m.graphs[name].spec(name)
    args = example_inputs(spec, m.dims, TORCH_DTYPES[dtype])
    # another batch size than the export's example, so the symbolic dims are exercised
    args = tuple(torch.cat([a, a[:1]]) if a.dim() > 1 else a for a in args)
    model, module = ck.model, build_module(name, ck.model)
    # the reference runs in fp32 on the same (possibly fp16-rounded) inputs, with this graph's weights only
    with torch.no_grad(), materialized(model, module, ck.weights, torch.float32):
        ref = REFERENCE.get(name, lambda mdl: module)(model)(*(a.float() if a.is_floating_point() else a for a in args))
    got = _session(bundle, m, name).run(None, {t.name: _np(a) for t, a in zip(spec.inputs, args)})[0]
    if name == "vq_encoder":
        agree = float(np.mean(got == _np(ref)))
        return Row(name, float(np.max(np.abs(got - _np(ref)))), agree, agree >= CODE_AGREEMENT[dtype],
                   f"code agreement {agree:.4f}")
    return compare(name, got, _np(ref), dtype)


def _cache_feeds(dims: C.ModelDims, cache: list[np.ndarray]) -> dict:
    """lm cache inputs in graph order (past_key.0, past_value.0, past_key.1, ...)."""
    pk, pv, _, _ = C.lm_cache_names(dims.num_layers)
    return dict(zip([n for pair in zip(pk, pv) for n in pair], cache))


def check_lm_and_loop(bundle, m, ck, dtype, steps: int = 4, prompt_len: int = 9) -> list[Row]:
    """Prefill + `steps` CFG decode steps: ORT lm + gen_head vs transformers' language model (its own cache)
    and generation head, fed the same embeddings and the same (reference-greedy) tokens."""
    model, dims, tdt = ck.model, m.dims, TORCH_DTYPES[dtype]
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, dims.vocab_size, (2, prompt_len), generator=g)
    with torch.no_grad(), materialized(model, model.get_input_embeddings(), ck.weights, torch.float32) as embed:
        emb = embed(ids).to(tdt).float()  # both sides see the bundle-dtype values
    lang = model.model.language_model
    parts = [lang.norm, lang.rotary_emb, model.model.generation_head, model.model.generation_embeddings,
             model.model.generation_aligner]
    try:
        for part in parts:
            load_module(model, part, ck.weights, torch.float32)
        with offload_layers(model, list(lang.layers), ck.weights, torch.float32):
            return _lm_loop(bundle, m, model, dtype, emb, steps)
    finally:
        for part in parts:
            release(part)


def _lm_loop(bundle, m, model, dtype, emb, steps) -> list[Row]:
    from transformers import DynamicCache

    dims, tdt = m.dims, TORCH_DTYPES[dtype]
    lm, head = _session(bundle, m, "lm"), _session(bundle, m, "gen_head")
    rows, total = emb.shape[0], emb.shape[1] + steps
    cache = [np.zeros((rows, dims.num_kv_heads, total, dims.head_dim), dtype) for _ in range(2 * dims.num_layers)]
    ref_cache, w = DynamicCache(config=model.config.text_config), np.array([5.0], dtype)
    hid_rows, logit_rows, kv_rows = [], [], []
    pos = 0
    with torch.no_grad():
        for _ in range(steps + 1):
            S = emb.shape[1]
            pos_ids = np.arange(pos, pos + S, dtype=np.int64)[None].repeat(rows, 0)
            out = lm.run(None, {"inputs_embeds": _np(emb.to(tdt)), "position_ids": pos_ids, **_cache_feeds(dims, cache)})
            ref = model.model.language_model(inputs_embeds=emb, past_key_values=ref_cache, use_cache=True,
                                             position_ids=torch.from_numpy(pos_ids))
            for j in range(2 * dims.num_layers):
                cache[j][:, :, pos:pos + S] = out[1 + j]
            for j, layer in enumerate(ref_cache.layers):  # the new K/V of every layer vs transformers' cache
                kv_rows.append((np.concatenate([out[1 + 2 * j].ravel(), out[2 + 2 * j].ravel()]),
                                np.concatenate([_np(layer.keys[:, :, pos:pos + S]).ravel(),
                                                _np(layer.values[:, :, pos:pos + S]).ravel()])))
            hid_rows.append((out[0][:, -1], _np(ref.last_hidden_state[:, -1])))
            ref_logits = model.model.generation_head(ref.last_hidden_state[:, -1])
            ref_cfg = ref_logits[1:] + 5.0 * (ref_logits[:1] - ref_logits[1:])
            got = head.run(None, {"hidden": np.ascontiguousarray(out[0][:, -1]), "cfg_weight": w})[0]
            logit_rows.append((got, _np(ref_cfg)))
            token = ref_cfg.argmax(-1).repeat(2)[:, None]  # same token to both rows, as transformers does
            emb = model.prepare_embeddings_for_image_generation(token).to(tdt).float()
            pos += S
    hid = compare(f"lm hidden (prefill+{steps} steps)", *map(np.stack, zip(*hid_rows)), dtype)
    kv = compare("lm new K/V (all layers)", *map(np.concatenate, zip(*kv_rows)), dtype)
    loop = compare(f"gen loop logits ({steps} steps)", *map(np.stack, zip(*logit_rows)), dtype)
    return [hid, kv, loop]


def verify_bundle(bundle: str, checkpoint: str, graphs: tuple[str, ...] = C.GRAPHS) -> VerifyReport:
    try:
        m = C.load_manifest(bundle)
    except C.ContractError as e:
        raise BundleError(str(e)) from None
    dtype = m.dtype
    # The reference is the fp32 model for every bundle dtype: an fp16 bundle is measured against the true
    # model (with fp16 tolerances), and torch's fp16 CPU kernels would make the check slow.
    return_freed_memory()
    ck = open_checkpoint(checkpoint, dtype="float32")
    report = VerifyReport()
    for name in graphs:  # one graph (its ORT session, its reference weights) in memory at a time
        if name == "lm":
            report.rows += check_lm_and_loop(bundle, m, ck, dtype)
        else:
            report.rows.append(check_simple_graph(bundle, m, ck, name, dtype))
        _trim()
    report.rows.append(check_text_table(bundle, m, ck))
    return report


def _trim() -> None:
    """Free what the last graph left (cycles holding tensors or a session) and hand the heap's free pages back."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def check_text_table(bundle, m, ck) -> Row:
    from .exporter import text_table

    C.check_files(bundle, m, [m.text_embedding["file"]])
    table = np.load(os.path.join(bundle, m.text_embedding["file"]), mmap_mode="r")
    ref = text_table(ck, TORCH_DTYPES[m.dtype])
    ids = np.unique(np.linspace(0, ref.shape[0] - 1, 257).astype(int))
    return compare("text_embed (table)", table[ids], ref[ids].astype(np.float32), m.dtype)


__all__ = ["VerifyReport", "verify_bundle"]
