"""The decode loops, in one place above the backends: the KV cache, prefill, the CFG image-token loop, chat.

Shapes (rows = 2n with CFG: n conditional rows then n unconditional; n without):
    cache[j]        [rows, kvh, max_len, D]   allocated once per request at its final length, written in place
                                              (bound as [rows, kvh, cap, D], cap = filled prefix rounded up to a
                                              chunk, on backends with cache_chunk > 0: see LMRunner)
    step embeds     [rows, 1, H]              gen_embed writes straight into the lm's input buffer
    step hidden     [rows, 1, H]              viewed as [rows, H] by the heads
Per image-token step: one gen_embed call, one lm call (all rows), one kv_append, one gen_head call, one sample.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from janus_edge import contract as C

from .sampling import SamplingConfig, check_finite, sample


class LMRunner:
    """The lm graph over a preallocated cache: `prefill` (seq = prompt length) and `step` (seq = 1)."""

    def __init__(self, bundle, rows: int, max_len: int):
        self.b, self.be, d = bundle, bundle.backend, bundle.dims
        self.rows, self.max_len, self.pos = rows, max_len, 0
        self.graph = bundle.graph("lm")
        self.cache_dtype = bundle.specs["lm"].input(C.PAST_KEY.format(i=0)).dtype  # fp16 cache in quantized bundles
        # Backends with cache_chunk > 0 bind only the filled prefix of the cache, rounded up to a chunk of slots
        # (attention then reads the valid prefix, not the whole preallocated buffer); 0 binds the whole buffer
        # (fixed shapes: TensorRT profiles, CUDA-graph replay). The memory is allocated once either way.
        self.chunk = getattr(self.be, "cache_chunk", 0)
        shape = (rows, d.num_kv_heads, max_len, d.head_dim)
        self.io = None
        if self.chunk:
            flat = (rows * d.num_kv_heads * max_len * d.head_dim,)
            self.store = [self.be.alloc(flat, self.cache_dtype) for _ in range(2 * d.num_layers)]
            self.cap = 0
            self._grow(1)
        else:
            self.cache = [self.be.alloc(shape, self.cache_dtype) for _ in range(2 * d.num_layers)]
            self.cap = max_len
            self.io, self._run = self._bind(1)  # the decode step's buffers, reused every step

    def _grow(self, need: int) -> None:
        """Make the bound cache hold >= `need` slots: re-lay the filled slots of each block at the new stride
        (in place, last block first: the ranges move up and may overlap), then view the prefix."""
        d, be = self.b.dims, self.be
        new = min(self.max_len, -(-need // self.chunk) * self.chunk)
        blocks, D = self.rows * d.num_kv_heads, d.head_dim
        for buf in self.store:
            if self.cap and self.pos:
                for r in range(blocks - 1, 0, -1):
                    be.move_rows(buf, r * self.cap * D, r * new * D, self.pos * D)
        self.cap = new
        shape = (self.rows, d.num_kv_heads, new, D)
        self.cache = [be.view(be.rows(buf, 0, blocks * new * D), shape) for buf in self.store]
        self.io, self._run = self._bind(1, self.io)

    def _bind(self, seq: int, io: dict | None = None):
        d, be, dt = self.b.dims, self.be, self.b.dtype
        if io is None:
            io = {"inputs_embeds": be.alloc((self.rows, seq, d.hidden_size), dt),
                  "position_ids": be.alloc((self.rows, seq), "int64"),
                  "hidden_states": be.alloc((self.rows, seq, d.hidden_size), dt)}
        pk, pv, nk, nv = C.lm_cache_names(d.num_layers)
        past = [n for pair in zip(pk, pv) for n in pair]
        self.new_names = [n for pair in zip(nk, nv) for n in pair]
        for n in self.new_names:
            if n not in io:
                io[n] = be.alloc((self.rows, d.num_kv_heads, seq, d.head_dim), self.cache_dtype)
        inputs = {"inputs_embeds": io["inputs_embeds"], "position_ids": io["position_ids"], **dict(zip(past, self.cache))}
        outputs = {n: io[n] for n in ["hidden_states", *self.new_names]}
        return io, self.graph.bind(inputs, outputs)

    def _advance(self, io, run, seq: int) -> None:
        if self.pos + seq > self.cap:  # prefix binding only (chunk > 0): bind a longer prefix first
            self._grow(self.pos + seq)
            if seq == 1:
                io, run = self.io, self._run
        self.be.write(io["position_ids"], np.arange(self.pos, self.pos + seq, dtype=np.int64)[None].repeat(self.rows, 0))
        run()
        self.be.kv_append(self.cache, [io[n] for n in self.new_names], self.pos)
        self.pos += seq

    def prefill(self, embeds: np.ndarray) -> np.ndarray:
        """embeds [rows, S, H] -> last hidden [rows, H] (host); also copied into the step's hidden buffer."""
        seq = embeds.shape[1]
        if self.pos + seq > self.cap:
            self._grow(self.pos + seq)
        io, run = self._bind(seq)
        self.be.write(io["inputs_embeds"], embeds)
        self._advance(io, run, seq)
        last = np.array(self.be.read(io["hidden_states"])[:, -1])
        self.be.write(self.io["hidden_states"], last[:, None])
        return last

    def step(self) -> None:
        """One position for all rows; the caller has written io['inputs_embeds']."""
        self._advance(self.io, self._run, 1)


@dataclass
class ImageSteps:
    """What a backend needs to run the image-token loop's steps itself (`Backend.run_image_steps`, optional): the
    bound graphs and buffers of the request, and the host sampler for backends without device sampling."""

    lm: LMRunner
    run_lm: Callable[[], None]
    run_head: Callable[[], None]
    run_embed: Callable[[], None]
    hidden: object
    head_in: object
    logits: object
    codes: object
    n: int
    num_tokens: int
    uncond: bool
    sampling: SamplingConfig
    seed: int
    on_step: Callable[[int], None] | None
    check: Callable[[np.ndarray], None]
    sample: Callable[[np.ndarray, int], np.ndarray]
    stats: dict = field(default_factory=dict)


def generate_image_tokens(bundle, prompt_ids: list[int], uncond: list[int] | None, n: int, cfg_weight: float,
                          sampling: SamplingConfig, rng, on_step: Callable[[int], None] | None = None) -> np.ndarray:
    """The CFG loop: -> tokens [n, num_image_tokens]. `uncond` None means no guidance rows (cfg_weight == 1)."""
    be, d = bundle.backend, bundle.dims
    T = d.num_image_tokens
    rows_ids = [prompt_ids] * n + ([uncond] * n if uncond is not None else [])
    lm = LMRunner(bundle, len(rows_ids), len(prompt_ids) + T)
    lm.prefill(bundle.embed_text(np.asarray(rows_ids, np.int64)))
    hidden = be.view(lm.io["hidden_states"], (lm.rows, d.hidden_size))
    if uncond is None:  # gen_head always combines halves: feed [h; h] so that u + w(c - u) = h exactly
        head_in, w = be.alloc((2 * n, d.hidden_size), bundle.dtype), 1.0
    else:
        head_in, w = hidden, cfg_weight
    cfg = be.alloc((1,), bundle.dtype)
    be.write(cfg, np.array([w], bundle.dtype))
    logits = be.alloc((n, d.image_vocab_size), bundle.dtype)
    codes = be.alloc((lm.rows, 1), "int64")
    run_head = bundle.graph("gen_head").bind({"hidden": head_in, "cfg_weight": cfg}, {"logits": logits})
    run_embed = bundle.graph("gen_embed").bind({"codes": codes}, {"embeds": lm.io["inputs_embeds"]})
    device_steps = getattr(be, "run_image_steps", None)  # trt: whole steps on the device, replayed as a CUDA graph
    if device_steps is not None:
        return device_steps(ImageSteps(
            lm=lm, run_lm=lm._run, run_head=run_head, run_embed=run_embed, hidden=hidden, head_in=head_in,
            logits=logits, codes=codes, n=n, num_tokens=T, uncond=uncond is not None, sampling=sampling,
            seed=getattr(rng, "seed", 0), on_step=on_step, check=lambda out: check_finite(out, "image-token"),
            sample=lambda out, i: sample(out, sampling, rng, step=i)))
    tokens = np.zeros((n, T), np.int64)
    for i in range(T):
        if uncond is None:
            h = be.read(hidden)
            be.write(head_in, np.concatenate([h, h]))
        run_head()
        out = be.read(logits)
        check_finite(out, "image-token")
        tokens[:, i] = sample(out, sampling, rng, step=i)  # rows are images 0..n-1: draw (seed, i, image)
        if on_step is not None:
            on_step(i)
        if i == T - 1:
            break
        be.write(codes, np.tile(tokens[:, i], lm.rows // n)[:, None])  # same token to both rows of an image
        run_embed()
        lm.step()
    return tokens


def generate_text(bundle, embeds: np.ndarray, max_new_tokens: int, sampling: SamplingConfig, rng,
                  stop_ids: set[int]) -> Iterator[int]:
    """Chat decode (one row): embeds [1, S, H] -> yields new token ids until a stop id or max_new_tokens."""
    be, d = bundle.backend, bundle.dims
    lm = LMRunner(bundle, 1, embeds.shape[1] + max_new_tokens)
    lm.prefill(embeds)
    logits = be.alloc((1, d.vocab_size), bundle.dtype)
    hidden = be.view(lm.io["hidden_states"], (1, d.hidden_size))
    run_head = bundle.graph("lm_head").bind({"hidden": hidden}, {"logits": logits})
    for i in range(max_new_tokens):
        run_head()
        out = be.read(logits)
        check_finite(out, "text")
        tok = int(sample(out, sampling, rng, step=i)[0])
        yield tok
        if tok in stop_ids or i == max_new_tokens - 1:
            return
        be.write(lm.io["inputs_embeds"], bundle.embed_text(np.array([[tok]])))
        lm.step()
