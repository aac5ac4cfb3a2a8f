"""Timing our runtime (`Pipeline`) on one bundle: text-to-image and chat.

t2i: per image-token decode step = gen_embed + lm (2n CFG rows, cache preallocated at its final length) +
kv_append + gen_head (CFG combine) + sampling, timed between consecutive `on_step` callbacks; the first
`warmup_steps` steps of every run are discarded. With `steps`, a run stops after warmup + steps decode steps
(raising from the callback): the cache is still allocated at its full final length, and the whole-image time
is extrapolated to num_image_tokens steps (`image_s_extrapolated`).
chat: vision-graph time, time to first token, decode-step latency and tokens/s of a greedy answer.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from janus_edge.runtime import prompts

from . import floor as F
from .common import PeakRSS, StopAfter, ms, step_stats

DEFAULT_PROMPT = "A portrait of young girl. masterpiece, film grained, best quality."
DEFAULT_QUESTION = "Describe this image in detail."


@dataclass
class T2IRun:
    prefill_s: float
    step_s: list[float]  # every decode step of the run, warm-up steps included
    tokens: np.ndarray | None  # [n, T] when the run completed, else None


def _t2i_run(pipe, ids, n, cfg_weight, temperature, seed, limit: int | None) -> T2IRun:
    """One generation; stops after `limit` decode steps (None: all). Timings from our own callback marks."""
    marks: list[float] = []

    def tick(i: int) -> None:
        marks.append(time.perf_counter())
        if limit is not None and i >= limit:
            raise StopAfter

    t0 = time.perf_counter()
    tokens = None
    try:
        tokens = pipe.generate_image(input_ids=ids, n=n, cfg_weight=cfg_weight, temperature=temperature,
                                     seed=seed, decode=False, on_step=tick).tokens
    except StopAfter:
        pass
    return T2IRun(marks[0] - t0, list(np.diff(marks)), tokens)


def bundle_info(pipe) -> dict:
    m = pipe.bundle.manifest
    gpu = getattr(pipe.bundle.backend, "memory", None)  # trt: GPU memory in use (cudaMemGetInfo) after the runs
    return {"bundle": pipe.bundle.path, "dtype": m.dtype,
            "graph_precision": {g: e.precision for g, e in m.graphs.items()},
            "quantization": {g: e.quantization for g, e in m.graphs.items() if e.quantization},
            **(gpu() if gpu is not None else {})}


# the weight / attention kernels `kernels` reports (ORT op types after its fusions)
KERNEL_OPS = ("MatMulNBits", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QLinearMatMul", "MatMulInteger",
              "MatMul", "FusedMatMul", "Gemm", "GroupQueryAttention", "MultiHeadAttention", "Attention",
              "JanusEdgeQ4Gemm")  # the last: libjanus_edge_cpu's int4 GEMM (runtime/cpu_split.py)


def kernels(pipe, graphs) -> dict:
    """{graph: {op type: kernel runs}} of the weight/attention kernels that ran in the warm-up call(s), read from
    ORT's profiler (OrtBackend.kernel_census); {} for backends without it."""
    out = {}
    for g in graphs:
        census = getattr(pipe.bundle.graph(g), "kernels", None)
        ops = census() if census else {}
        ops = {op: n for op, n in sorted(ops.items(), key=lambda kv: -kv[1]) if op in KERNEL_OPS}
        if ops:
            out[g] = ops
    return out


def _cache_itemsize(pipe) -> int:
    return np.dtype(pipe.bundle.specs["lm"].input("past_key.0").dtype).itemsize


def measure_t2i(pipe, *, prompt: str, steps: int | None, runs: int, warmup_steps: int, n: int, cfg_weight: float,
                temperature: float, seed: int, bandwidth_gbps: float) -> tuple[dict, np.ndarray | None]:
    """-> (result, the tokens of run 0 when it ran to the end, else None)."""
    d = pipe.dims
    T = d.num_image_tokens
    ids = pipe.prompt_ids(prompt)
    L, rows = len(ids), (2 * n if cfg_weight != 1 else n)
    available = T - 1  # decode steps of a whole image (the first token comes from the prefill)
    warmup = min(warmup_steps, max(0, available - 1))
    limit = None if steps is None or warmup + steps >= available else warmup + steps
    with PeakRSS() as mem:
        t = time.perf_counter()
        for g in ("gen_embed", "lm", "gen_head", "vq_decoder"):
            pipe.bundle.graph(g)
        open_s = time.perf_counter() - t
        # warm-up generation (prefill + 1 step: first runs allocate arenas) and a warm-up VQ decode
        _t2i_run(pipe, ids, n, cfg_weight, temperature, seed, 1)
        codes = np.random.default_rng(seed).integers(0, d.image_vocab_size, size=(n, T))
        pipe.decode_tokens(codes)
        ran = kernels(pipe, ("gen_embed", "lm", "gen_head"))
        runs_out, vq_s = [], []
        for r in range(runs):
            run = _t2i_run(pipe, ids, n, cfg_weight, temperature, seed + r, limit)
            runs_out.append(run)
            t = time.perf_counter()
            pipe.decode_tokens(run.tokens if run.tokens is not None else codes)
            vq_s.append(time.perf_counter() - t)
    timed = [s for run in runs_out for s in run.step_s[warmup:]]
    stats = step_stats(timed)
    indices = [k for run in runs_out for k in range(warmup + 1, len(run.step_s) + 1)]  # 1-based step numbers
    prefill_s = float(np.median([r.prefill_s for r in runs_out]))
    vq = float(np.median(vq_s))
    complete = limit is None
    if complete:
        image_s = float(np.median([r.prefill_s + sum(r.step_s) for r in runs_out])) + vq
    else:
        image_s = prefill_s + available * stats["decode_step_ms_mean"] / 1e3 + vq
    weights = {g: F.graph_weight_bytes(pipe.bundle.manifest, pipe.bundle.path, g) for g in F.T2I_GRAPHS}
    item = _cache_itemsize(pipe)
    kv = F.kv_valid_bytes(d, rows, item, L, indices)
    kv_full = F.kv_bytes_per_position(d, rows, item) * (L + T)
    out = {**bundle_info(pipe), "task": "t2i", "backend": pipe.bundle.backend.name, "prompt": prompt,
           "prompt_len": L, "n": n, "rows": rows, "cfg_weight": cfg_weight, "temperature": temperature,
           "num_image_tokens": T, "warmup_steps": warmup, "runs": runs, "steps_requested": steps,
           "prefill_ms": ms(prefill_s), **stats, "vq_decode_ms": ms(vq), "image_s": round(image_s, 4),
           "image_s_extrapolated": not complete,
           "image_s_note": ("measured: prefill + all decode steps + VQ decode" if complete else
                            f"extrapolated: prefill + {available} x mean step + VQ decode, from "
                            f"{stats['steps_timed']} timed steps"),
           "kernels": ran, "kernels_note": "op types run by the warm-up call (prefill + 1 step), ORT's profiler",
           "open_graphs_s": round(open_s, 3), "peak_rss_mb": mem.peak_mb, "other_processes_cores": mem.others_cores, "rss_mb_before": mem.start_mb,
           "weight_bytes_by_graph": {g: b for g, (b, _) in weights.items()},
           "weight_bytes_source": sorted({s for _, s in weights.values()}),
           "step_ms": [ms(s) for s in runs_out[0].step_s],  # run 0, every step (warm-up ones first)
           "step_index": list(range(1, len(runs_out[0].step_s) + 1))}
    out.update(F.floor(sum(b for b, _ in weights.values()), kv, kv_full, bandwidth_gbps, stats["decode_step_ms_p50"]))
    out["bandwidth_gbps"] = bandwidth_gbps
    return out, runs_out[0].tokens


def synthetic_image(size: int, seed: int = 0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8))


def _chat_run(pipe, question, image, max_new: int) -> tuple[float, list[float], int]:
    """-> (time to first token, per-token step seconds, tokens generated)."""
    t0 = time.perf_counter()
    marks = [time.perf_counter() for _ in pipe.chat_token_ids(question, [image], max_new_tokens=max_new,
                                                              temperature=0.0)]
    return marks[0] - t0, list(np.diff(marks)), len(marks)


def measure_chat(pipe, *, question: str, steps: int | None, runs: int, warmup_steps: int, default_tokens: int,
                 bandwidth_gbps: float) -> dict:
    d = pipe.dims
    timed_tokens = steps if steps is not None else default_tokens
    max_new = warmup_steps + timed_tokens + 1  # +1: the first token comes from the prefill
    image = synthetic_image(pipe.bundle.manifest.image_preprocess.get("size", d.image_size))
    with PeakRSS() as mem:
        for g in ("vision", "lm", "lm_head"):
            pipe.bundle.graph(g)
        pixels = pipe._pixels([image])
        _chat_run(pipe, question, image, 2)  # warm-up
        ran = kernels(pipe, ("lm", "lm_head"))
        enc, ttft, runs_out = [], [], []
        for _ in range(runs):
            t = time.perf_counter()
            pipe.bundle.graph("vision").run({"pixel_values": pixels})
            enc.append(time.perf_counter() - t)
            first, steps_s, count = _chat_run(pipe, question, image, max_new)
            ttft.append(first)
            runs_out.append((steps_s, count))
    # the model may stop (EOS) early: with no step past the warm-up ones, time what there is
    skip = warmup_steps if any(len(s) > warmup_steps for s, _ in runs_out) else 0
    timed = [s for steps_s, _ in runs_out for s in steps_s[skip:]]
    indices = [k for steps_s, _ in runs_out for k in range(skip + 1, len(steps_s) + 1)]  # 1-based step numbers
    stats = step_stats(timed) if timed else {}
    L = len(prompts.chat_ids(pipe.bundle, question, 1))  # prompt length with the image expanded
    gen = [count for _, count in runs_out]
    all_steps = [s for steps_s, _ in runs_out for s in steps_s]
    out = {**bundle_info(pipe), "task": "chat", "backend": pipe.bundle.backend.name, "question": question,
           "prompt_len": L, "rows": 1, "runs": runs, "warmup_steps": skip, "max_new_tokens": max_new,
           "new_tokens": gen, "kernels": ran, "image_encode_ms": ms(np.median(enc)), "ttft_ms": ms(np.median(ttft)),
           "tokens_per_s": round(len(all_steps) / sum(all_steps), 3) if all_steps else None,
           "peak_rss_mb": mem.peak_mb, "other_processes_cores": mem.others_cores, "rss_mb_before": mem.start_mb, **stats,
           "step_ms": [ms(s) for s in runs_out[0][0]], "step_index": list(range(1, len(runs_out[0][0]) + 1))}
    if stats:
        weights = {g: F.graph_weight_bytes(pipe.bundle.manifest, pipe.bundle.path, g) for g in F.CHAT_GRAPHS}
        item = _cache_itemsize(pipe)
        kv = F.kv_valid_bytes(d, 1, item, L, indices)
        kv_full = F.kv_bytes_per_position(d, 1, item) * (L + max_new)
        out["weight_bytes_by_graph"] = {g: b for g, (b, _) in weights.items()}
        out.update(F.floor(sum(b for b, _ in weights.values()), kv, kv_full, bandwidth_gbps,
                           stats["decode_step_ms_p50"]))
    out["bandwidth_gbps"] = bandwidth_gbps
    return out
