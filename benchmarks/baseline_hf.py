"""The transformers baseline: `JanusForConditionalGeneration.generate` on the same prompt ids, timed the same way.

Per-step times come from a `LogitsProcessor` that records `time.perf_counter()` at each call: transformers calls
it once per image token (after the language model and the generation head of that token, before CFG and the
draw), so the difference between consecutive calls is one whole decode step (draw + embed + language model +
generation head), the same span as ours; the prefill cancels out. With `steps`, the processor raises after
warm-up + steps decode steps (caught here). torch runs with `torch.set_num_threads(threads)`.
This is the only module that imports torch / transformers, and only when called.
"""
from __future__ import annotations

import time

import numpy as np

from . import floor as F
from .common import PeakRSS, StopAfter, ms, step_stats


def _timer_cls():
    from transformers import LogitsProcessor

    class StepTimer(LogitsProcessor):
        def __init__(self, limit: int | None):
            self.marks: list[float] = []
            self.limit = limit  # decode steps before stopping (None: never)

        def __call__(self, input_ids, scores):
            self.marks.append(time.perf_counter())
            if self.limit is not None and len(self.marks) > self.limit:
                raise StopAfter
            return scores

    return StepTimer


def load_model(checkpoint: str, threads: int | None):
    import torch
    from transformers import JanusForConditionalGeneration

    if threads:
        torch.set_num_threads(threads)
    t = time.perf_counter()
    model = JanusForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32).eval()
    return model, time.perf_counter() - t


class quiet_transformers:
    """generate()'s advisory warnings (deprecated argument mixes, max_length vs max_new_tokens) are not results."""

    def __enter__(self):
        import transformers

        self._level = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()

    def __exit__(self, *exc):
        import transformers

        transformers.logging.set_verbosity(self._level)


def _param_bytes(modules) -> int:
    return sum(p.numel() * p.element_size() for m in modules for p in m.parameters())


def step_weight_bytes(model, task: str) -> dict:
    """Bytes of the weights one decode step reads in the torch model (the text-embedding table excluded)."""
    m, lm = model.model, model.model.language_model
    body = _param_bytes([lm.layers, lm.norm])
    if task == "t2i":
        return {"gen_embed": _param_bytes([m.generation_embeddings, m.generation_aligner]), "lm": body,
                "gen_head": _param_bytes([m.generation_head])}
    return {"lm": body, "lm_head": _param_bytes([model.lm_head])}


def _generate(model, fn, limit):
    import torch

    timer = _timer_cls()(limit)
    from transformers import LogitsProcessorList

    t0 = time.perf_counter()
    out = None
    with torch.inference_mode():
        try:
            out = fn(LogitsProcessorList([timer]))
        except StopAfter:
            pass
    return t0, timer.marks, out


def measure_t2i(model, *, ids: list[int], steps: int | None, runs: int, warmup_steps: int, n: int,
                cfg_weight: float, temperature: float, seed: int, bandwidth_gbps: float, dims,
                ours_tokens: np.ndarray | None = None) -> dict:
    import torch

    T = dims.num_image_tokens
    available = T - 1
    warmup = min(warmup_steps, max(0, available - 1))
    limit = None if steps is None or warmup + steps >= available else warmup + steps
    inp = torch.tensor([ids] * n)
    sample = temperature > 0
    kw = dict(do_sample=sample, temperature=temperature) if sample else dict(do_sample=False)

    def gen(procs):
        return model.generate(inputs=inp, attention_mask=torch.ones_like(inp), generation_mode="image",
                              guidance_scale=cfg_weight, logits_processor=procs, **kw)

    runs_out = []
    with PeakRSS() as mem:
        torch.manual_seed(seed)
        _generate(model, gen, 1)  # warm-up
        for r in range(runs):
            torch.manual_seed(seed + r)
            t0, marks, out = _generate(model, gen, limit)
            runs_out.append((marks[0] - t0, list(np.diff(marks)), out))
    timed = [s for _, st, _ in runs_out for s in st[warmup:]]
    stats = step_stats(timed)
    indices = [k for _, st, _ in runs_out for k in range(warmup + 1, len(st) + 1)]
    prefill = float(np.median([p for p, _, _ in runs_out]))
    complete = limit is None
    image_s = (float(np.median([p + sum(st) for p, st, _ in runs_out])) if complete
               else prefill + available * stats["decode_step_ms_mean"] / 1e3)
    rows = 2 * n if cfg_weight > 1 else n
    weights = step_weight_bytes(model, "t2i")
    item = next(model.parameters()).element_size()
    kv = F.kv_valid_bytes(dims, rows, item, len(ids), indices)
    kv_full = F.kv_bytes_per_position(dims, rows, item) * (len(ids) + T)  # StaticCache of prompt + T, all read
    out = {"impl": "transformers JanusForConditionalGeneration.generate(generation_mode='image')",
           "attn_implementation": getattr(model.config, "_attn_implementation", None), "dtype": "float32",
           "torch_threads": torch.get_num_threads(), "prompt_len": len(ids), "n": n, "rows": rows,
           "warmup_steps": warmup, "runs": runs, "prefill_ms": ms(prefill), **stats,
           "image_s": round(image_s, 4), "image_s_extrapolated": not complete,
           "image_s_note": "without VQ decode" + ("" if complete else f"; extrapolated to {available} steps"),
           "peak_rss_mb": mem.peak_mb, "other_processes_cores": mem.others_cores, "rss_mb_before": mem.start_mb, "weight_bytes_by_graph": weights,
           "step_ms": [ms(s) for s in runs_out[0][1]], "step_index": list(range(1, len(runs_out[0][1]) + 1))}
    out.update(F.floor(sum(weights.values()), kv, kv_full, bandwidth_gbps, stats["decode_step_ms_p50"]))
    if complete and not sample and ours_tokens is not None and runs_out[0][2] is not None:
        out["greedy_tokens_equal_ours"] = bool((runs_out[0][2].numpy() == ours_tokens).all())
    return out


def measure_chat(model, *, ids: list[int], pixel_values: np.ndarray, steps: int | None, runs: int,
                 warmup_steps: int, default_tokens: int, bandwidth_gbps: float, dims) -> dict:
    import torch

    timed_tokens = steps if steps is not None else default_tokens
    max_new = warmup_steps + timed_tokens + 1
    inp = torch.tensor([ids])
    pix = torch.from_numpy(np.asarray(pixel_values, np.float32))

    # Janus' generate() does not pass `logits_processor` on in text mode: time the lm_head calls instead (one
    # per new token, after the language model, before the draw: the same point in the step as the processor).
    marks: list[float] = []
    hook = model.lm_head.register_forward_hook(lambda *_: marks.append(time.perf_counter()))

    def gen(k):
        marks.clear()
        t0 = time.perf_counter()
        with torch.inference_mode():
            model.generate(input_ids=inp, attention_mask=torch.ones_like(inp), pixel_values=pix,
                           max_new_tokens=k, min_new_tokens=k, do_sample=False)
        return marks[0] - t0, list(np.diff(marks))

    runs_out = []
    try:
        with PeakRSS() as mem:
            gen(2)  # warm-up
            for _ in range(runs):
                runs_out.append(gen(max_new))
    finally:
        hook.remove()
    timed = [s for _, st in runs_out for s in st[warmup_steps:]]
    stats = step_stats(timed)
    indices = [k for _, st in runs_out for k in range(warmup_steps + 1, len(st) + 1)]
    weights = step_weight_bytes(model, "chat")
    item = next(model.parameters()).element_size()
    kv = F.kv_valid_bytes(dims, 1, item, len(ids), indices)
    kv_full = F.kv_bytes_per_position(dims, 1, item) * (len(ids) + max_new)
    all_steps = [s for _, st in runs_out for s in st]
    out = {"impl": "transformers JanusForConditionalGeneration.generate (text)", "dtype": "float32",
           "attn_implementation": getattr(model.config, "_attn_implementation", None),
           "torch_threads": torch.get_num_threads(), "prompt_len": len(ids), "runs": runs,
           "warmup_steps": warmup_steps, "max_new_tokens": max_new,
           "ttft_ms": ms(np.median([p for p, _ in runs_out])), "ttft_note": "includes the vision encoder",
           "tokens_per_s": round(len(all_steps) / sum(all_steps), 3), **stats, "peak_rss_mb": mem.peak_mb, "other_processes_cores": mem.others_cores,
           "rss_mb_before": mem.start_mb, "weight_bytes_by_graph": weights,
           "step_ms": [ms(s) for s in runs_out[0][1]], "step_index": list(range(1, len(runs_out[0][1]) + 1))}
    out.update(F.floor(sum(weights.values()), kv, kv_full, bandwidth_gbps, stats["decode_step_ms_p50"]))
    return out
