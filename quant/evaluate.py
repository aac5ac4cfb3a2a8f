"""Accuracy of a quantized bundle against its fp bundle, measured through the bundles' own graphs on ONNX Runtime.

- `text_accuracy`: teacher-forced next-token prediction on held-out English text (one domain: quant/data/heldout_*.txt,
  written by the team, never used for calibration; `domain_accuracy` runs every domain of calib.HELDOUT_DOMAINS and
  `check_goals` checks the mode's goals on each domain apart, never on the average): the text is fed through the bundle's `lm` graph in chunks with the KV
  cache (prefill of `chunk` tokens at a time at the right positions), `lm_head` on every position. Perplexity of
  each bundle, and top-1 agreement (argmax of the quantized logits == argmax of the fp logits).
- `image_accuracy`: text-to-image with CFG (2 rows per image), greedy: free-running image-token agreement
  (position-wise) and the PSNR of the VQ-decoded images against the fp bundle's; teacher-forced on the fp tokens:
  cosine of the CFG-combined logits per step and top-1 agreement.
- `chat_accuracy`: greedy chat with one image (procedural, other seeds than calibration): token agreement.
- `graph_accuracy`: per graph, output cosine and max abs error on held-out real inputs (feeds captured while the fp
  bundle runs a held-out prompt and chat), each graph of both bundles run on the same feeds.
Sessions come from the runtime's ORT backend, which applies the session config each quantized graph asks for in the
manifest (`ort_session_config`, see int8.py).
"""
from __future__ import annotations

import math
import time

import numpy as np

from janus_edge import contract as C
from janus_edge.shapes.evaluate import psnr  # noqa: F401 - one PSNR for the report and ShapeEval's rows

from . import calib as CB

EVAL_PROMPTS = ("a yellow tram crossing a bridge over a wide river at dusk",
                "a wooden bowl of green apples on a checkered tablecloth",
                "a snow leopard resting on a rocky ledge, telephoto photograph",
                "a paper boat floating in a puddle after the rain")
# the accuracy goals per mode (issue 25), checked on every held-out domain: perplexity delta at most, top-1 at least
GOALS = {"int8": {"ppl_delta_pct": 3.0, "top1_agreement": 0.93}, "fp8": {"ppl_delta_pct": 5.0},
         "int4": {"ppl_delta_pct": 15.0, "top1_agreement": 0.80}}
INT4_BYTES_GOAL = 1.15  # int4: weight bytes at most this times a pure-INT4 form's


def bar(total: int, desc: str, progress: bool):
    """A tqdm bar on stderr (count, rate, time left), or a no-op bar when progress is off."""
    from tqdm import tqdm

    return tqdm(total=total, desc=f"[report] {desc}", unit="step", disable=not progress, leave=True,
                dynamic_ncols=True)


EVAL_QUESTIONS = ("What do you see in this image?", "Describe the main shapes and their colors.",
                  "Where is the largest object in the picture?", "What could this picture be used for?")


# ---- bundles ---------------------------------------------------------------------------------------------------
def session_config(bundle_dir: str) -> dict:
    """The ORT session entries the bundle's quantized graphs ask for (manifest `quantization.ort_session_config`)."""
    m = C.load_manifest(bundle_dir)
    out: dict = {}
    for e in m.graphs.values():
        out.update((e.quantization or {}).get("ort_session_config", {}) or {})
    return out


def open_bundle(bundle_dir: str, threads: int | None = None, config: dict | None = None):
    from janus_edge.runtime.bundle import Bundle
    from janus_edge.runtime.ort_backend import OrtBackend

    extra = config or {}  # the runtime applies each graph's manifest `ort_session_config` itself

    class EvalBackend(OrtBackend):
        def options(self, **kw):
            so = super().options(**kw)
            for k, v in extra.items():
                try:
                    if so.get_session_config_entry(k) == v:  # the runtime sets it already
                        continue
                except Exception:  # noqa: BLE001  (not set: ORT raises)
                    pass
                so.add_session_config_entry(k, v)
            return so

    return Bundle(bundle_dir, EvalBackend(threads=threads))


def _cache(bundle, rows: int, max_len: int) -> list[np.ndarray]:
    d = bundle.dims
    dt = bundle.specs["lm"].input(C.PAST_KEY.format(i=0)).dtype
    return [np.zeros((rows, d.num_kv_heads, max_len, d.head_dim), dt) for _ in range(2 * d.num_layers)]


def lm_call(bundle, cache: list, embeds: np.ndarray, pos: int) -> np.ndarray:
    """One lm call at positions pos.. for every row; writes the new K/V into `cache`; returns hidden [rows, S, H]."""
    d = bundle.dims
    rows, seq = embeds.shape[:2]
    pk, pv, nk, nv = C.lm_cache_names(d.num_layers)
    feeds = {"inputs_embeds": embeds.astype(bundle.dtype),
             "position_ids": np.tile(np.arange(pos, pos + seq, dtype=np.int64), (rows, 1))}
    feeds.update({n: c for n, c in zip([x for p in zip(pk, pv) for x in p], cache)})
    out = bundle.graph("lm").run(feeds)
    for c, n in zip(cache, [x for p in zip(nk, nv) for x in p]):
        c[:, :, pos:pos + seq] = out[n]
    return out["hidden_states"]


# ---- text ------------------------------------------------------------------------------------------------------
def text_ids(bundle, text: str, max_tokens: int | None = None) -> np.ndarray:
    ids = [bundle.tokens["bos"]] + bundle.tokenizer.encode(text, add_special_tokens=False).ids
    return np.asarray(ids[:max_tokens] if max_tokens else ids, np.int64)


def tf_logits(bundle, ids: np.ndarray, chunk: int = 256):
    """Teacher forcing: yields (start, logits [S, V]) for consecutive chunks of `ids`."""
    cache = _cache(bundle, 1, len(ids))
    for s in range(0, len(ids), chunk):
        part = ids[s:s + chunk]
        h = lm_call(bundle, cache, bundle.embed_text(part[None]), s)
        yield s, bundle.graph("lm_head").run({"hidden": np.ascontiguousarray(h[0])})["logits"].astype(np.float32)


def _nll(logits: np.ndarray, target: np.ndarray) -> np.ndarray:
    m = logits.max(-1, keepdims=True)
    lse = np.log(np.exp(logits - m).sum(-1)) + m[:, 0]
    return lse - logits[np.arange(len(target)), target]


def text_accuracy(fp, q, ids: np.ndarray, chunk: int = 256, progress: bool = False, desc: str = "text") -> dict:
    """Perplexity of both bundles and top-1 agreement, teacher-forced on `ids` (fp, q: opened bundles)."""
    nll_f, nll_q, agree, hit_f, hit_q = [], [], 0, 0, 0
    t0 = time.time()
    pb = bar(math.ceil(len(ids) / chunk), desc, progress)
    for (s, lf), (_, lq) in zip(tf_logits(fp, ids, chunk), tf_logits(q, ids, chunk)):
        pb.update(1)
        tgt = ids[s + 1:s + 1 + len(lf)]
        lf, lq = lf[:len(tgt)], lq[:len(tgt)]
        nll_f.append(_nll(lf, tgt))
        nll_q.append(_nll(lq, tgt))
        af, aq = lf.argmax(-1), lq.argmax(-1)
        agree += int((af == aq).sum())
        hit_f += int((af == tgt).sum())
        hit_q += int((aq == tgt).sum())
    pb.close()
    nf, nq = np.concatenate(nll_f), np.concatenate(nll_q)
    ppl_f, ppl_q = float(np.exp(nf.mean())), float(np.exp(nq.mean()))
    n = len(nf)
    return {"tokens": n, "ppl_fp": round(ppl_f, 4), "ppl_q": round(ppl_q, 4),
            "ppl_delta_pct": round(100 * (ppl_q / ppl_f - 1), 3), "top1_agreement": round(agree / n, 4),
            "top1_acc_fp": round(hit_f / n, 4), "top1_acc_q": round(hit_q / n, 4), "seconds": round(time.time() - t0, 1)}


def domain_accuracy(fp, q, max_tokens: int | None = None, progress: bool = False, domains=None) -> dict:
    """text_accuracy on every held-out domain (calib.HELDOUT_DOMAINS), each apart: {domain: figures}."""
    out = {}
    for name, path in (domains or CB.HELDOUT_DOMAINS).items():
        ids = text_ids(fp, CB.read_text(path), max_tokens)
        out[name] = {"file": "quant/data/" + path.rsplit("/", 1)[-1],
                     **text_accuracy(fp, q, ids, progress=progress, desc=f"text ({name})")}
    return out


def check_goals(mode: str | None, domains: dict) -> dict | None:
    """The mode's goals (GOALS) on each domain apart: {"goals", "per_domain": {d: {measure: bool}}, "met"}, met only
    when every domain meets every goal (the average is never what is checked). None for a mode without goals."""
    goals = GOALS.get(mode or "")
    if not goals or not domains:
        return None
    per = {}
    for d, r in domains.items():
        per[d] = {k: (abs(r[k]) <= lim if k == "ppl_delta_pct" else r[k] >= lim) for k, lim in goals.items()}
    return {"mode": mode, "goals": goals, "per_domain": per, "met": all(all(v.values()) for v in per.values())}


# ---- images ----------------------------------------------------------------------------------------------------
def _cfg_rows(pipe, prompt: str) -> list[list[int]]:
    from janus_edge.runtime import prompts as P

    ids = pipe.prompt_ids(prompt)
    return [ids, P.uncond_ids(ids, pipe.bundle.tokens)]


def tf_image_logits(bundle, rows_ids: list[list[int]], tokens: np.ndarray, cfg_weight: float = 5.0):
    """CFG logits [T, image_vocab] with the given image tokens fed back (teacher forcing), 2 rows (cond, uncond)."""
    T = len(tokens)
    cache = _cache(bundle, 2, len(rows_ids[0]) + T)
    h = lm_call(bundle, cache, bundle.embed_text(np.asarray(rows_ids, np.int64)), 0)[:, -1]
    cfg = np.array([cfg_weight], bundle.dtype)
    out, pos = [], len(rows_ids[0])
    for i in range(T):
        out.append(bundle.graph("gen_head").run({"hidden": np.ascontiguousarray(h), "cfg_weight": cfg})["logits"][0])
        if i == T - 1:
            break
        e = bundle.graph("gen_embed").run({"codes": np.full((2, 1), tokens[i], np.int64)})["embeds"]
        h = lm_call(bundle, cache, e, pos)[:, -1]
        pos += 1
    return np.asarray(out, np.float32)


def image_accuracy(fp, q, prompts=EVAL_PROMPTS, steps: int | None = None, progress: bool = False) -> dict:
    from janus_edge.runtime.pipeline import Pipeline

    pf, pq = Pipeline(fp), Pipeline(q)
    agree, cos, tf_agree, psnrs, n_tok, t0 = [], [], [], [], 0, time.time()
    pb = bar(len(prompts), "images (4 runs per prompt)", progress)
    for p in prompts:
        rf = pf.generate_image(p, n=1, cfg_weight=5.0, temperature=0.0, seed=0)
        rq = pq.generate_image(p, n=1, cfg_weight=5.0, temperature=0.0, seed=0)
        agree.append(float((rf.tokens == rq.tokens).mean()))
        psnrs.append(psnr(np.asarray(rf.images[0]), np.asarray(rq.images[0])))
        toks = rf.tokens[0][:steps] if steps else rf.tokens[0]
        rows = _cfg_rows(pf, p)
        lf, lq = tf_image_logits(fp, rows, toks), tf_image_logits(q, rows, toks)
        cos.append(float(np.mean(np.sum(lf * lq, -1) / (np.linalg.norm(lf, axis=-1) * np.linalg.norm(lq, axis=-1)))))
        tf_agree.append(float((lf.argmax(-1) == lq.argmax(-1)).mean()))
        n_tok += len(toks)
        pb.update(1)
    pb.close()
    return {"prompts": len(prompts), "tokens_per_image": int(rf.tokens.shape[1]),
            "greedy_token_agreement": round(float(np.mean(agree)), 4),
            "teacher_forced_top1_agreement": round(float(np.mean(tf_agree)), 4),
            "cfg_logit_cosine": round(float(np.mean(cos)), 5), "cfg_logit_cosine_min_prompt": round(min(cos), 5),
            "psnr_db_vs_fp": round(float(np.mean(psnrs)), 2), "psnr_db_min": round(float(min(psnrs)), 2),
            "seconds": round(time.time() - t0, 1)}


def chat_accuracy(fp, q, questions=EVAL_QUESTIONS, max_new_tokens: int = 32, seed: int = 1000,
                  progress: bool = False) -> dict:
    from janus_edge.runtime.pipeline import Pipeline

    pf, pq = Pipeline(fp), Pipeline(q)
    imgs = CB.make_images(len(questions), seed=seed)
    pos_agree, prefix, exact, t0 = [], [], 0, time.time()
    pb = bar(len(questions), "chat", progress)
    for qu, im in zip(questions, imgs):
        a = list(pf.chat_token_ids(qu, images=[im], max_new_tokens=max_new_tokens))
        b = list(pq.chat_token_ids(qu, images=[im], max_new_tokens=max_new_tokens))
        n = max(len(a), len(b))
        same = [i < len(a) and i < len(b) and a[i] == b[i] for i in range(n)]
        pos_agree.append(sum(same) / n)
        prefix.append((same.index(False) if False in same else n) / n)
        exact += int(a == b)
        pb.update(1)
    pb.close()
    return {"questions": len(questions), "max_new_tokens": max_new_tokens, "exact_match": exact / len(questions),
            "token_agreement": round(float(np.mean(pos_agree)), 4),
            "common_prefix_fraction": round(float(np.mean(prefix)), 4), "seconds": round(time.time() - t0, 1)}


# ---- per graph ---------------------------------------------------------------------------------------------------
def capture_feeds(fp_dir: str, graphs, per_graph: int = 6, image_steps: int = 8) -> dict[str, list[dict]]:
    """Feeds of real calls (held-out prompt + chat with a held-out image), copied, up to `per_graph` per graph
    (prefills first, then decode steps)."""
    from janus_edge.runtime.ort_backend import OrtBackend, OrtGraph
    from janus_edge.runtime.pipeline import Pipeline

    got: dict[str, list[dict]] = {g: [] for g in graphs}

    class Capture(OrtGraph):
        def _keep(self, feeds):
            lst = got.get(self.spec.name)
            if lst is not None and len(lst) < per_graph:
                lst.append({k: np.array(v) for k, v in feeds.items()})

        def run(self, feeds):
            self._keep(feeds)
            return super().run(feeds)

        def bind(self, inputs, outputs):
            plain = super().bind(inputs, outputs)

            def run():
                self._keep({t.name: inputs[t.name] for t in self.spec.inputs})
                plain()

            run.keepalive = plain.keepalive
            return run

    class CaptureBackend(OrtBackend):
        def open(self, path, spec, session_config=None, precision=None):  # fp16 graphs: the low-memory options
            return Capture(super().open(path, spec, session_config, precision).session, spec)

    from janus_edge.runtime.bundle import Bundle

    pipe = Pipeline(Bundle(fp_dir, CaptureBackend()))

    def stop(i):
        if i + 1 >= image_steps:
            raise CB._Stop

    try:
        pipe.generate_image(EVAL_PROMPTS[0], n=1, cfg_weight=5.0, temperature=1.0, seed=7, on_step=stop)
    except CB._Stop:
        pass
    pipe.decode_tokens(np.zeros((1, pipe.dims.num_image_tokens), np.int64) + 3)
    for _ in pipe.chat_token_ids(EVAL_QUESTIONS[0], images=CB.make_images(1, seed=2024), max_new_tokens=4):
        pass
    return got


def graph_accuracy(fp, q, feeds: dict[str, list[dict]], progress: bool = False) -> dict:
    """Per graph: the fp graph on every feed, its session released, then the quantized one: one of the two
    graphs in memory at a time."""
    out = {}
    pb = bar(sum(1 for v in feeds.values() if v), "per graph", progress)
    for g, lst in feeds.items():
        if not lst:
            continue
        names = [t.name for t in fp.specs[g].outputs]
        ref = [{n: v for n, v in fp.graph(g).run(f).items() if n in names} for f in lst]
        fp.release(g)  # Pro-7B: the fp16 lm and its quantized twin need not be held together
        cos, mx, top = [], 0.0, 0.0
        for f, a in zip(lst, ref):
            b = q.graph(g).run({k: v.astype(q.specs[g].input(k).dtype) for k, v in f.items()})
            for n in names:
                x, y = a[n].astype(np.float64).ravel(), b[n].astype(np.float64).ravel()
                if a[n].dtype.kind != "f":
                    cos.append(float((x == y).mean()))
                    continue
                cos.append(float(x @ y / max(np.linalg.norm(x) * np.linalg.norm(y), 1e-30)))
                mx, top = max(mx, float(np.abs(x - y).max())), max(top, float(np.abs(x).max()))
        q.release(g)
        pb.update(1)
        out[g] = {"calls": len(lst), "cosine_min": round(min(cos), 6), "cosine_mean": round(float(np.mean(cos)), 6),
                  "max_abs_error": round(mx, 6), "max_abs_ref": round(top, 6)}
    pb.close()
    return out
