"""Continuous batching: requests join one decode loop at step boundaries (backend-neutral; serving/ runs it).

A fixed pool of `rows` LM rows with a KV cache of `max_len` slots each is allocated once. Active rows are kept as
a prefix [0, k) of the pool, each request owning a contiguous block (a t2i request of n images with guidance owns
2n rows: n conditional, then n unconditional, as in decode.py; a chat request one row). Every iteration:

1. admit   queued requests that fit run their prefill as their own `lm` call on their block of the pool's cache;
2. heads   ONE `gen_head` call over every image in flight (rows arranged [all cond; all uncond]; a request without
           guidance feeds its row twice, which u + w(c - u) returns exactly), ONE `lm_head` call over the chat rows;
           requests with different cfg weights in flight: the head runs once with w = 1 on the rows doubled
           ([x; x] -> the raw logits exactly) and each image is combined on the host with its own weight;
3. sample  per request, with the request's own generator: a request's tokens never depend on what else runs;
4. free    finished / cancelled requests (blocks after them move down: the prefix stays dense);
5. step    ONE `gen_embed` call (image rows), the text table (chat rows), ONE `lm` call over the k active rows,
           each at its own position (the lm graph masks per row by position_ids), kv_append at per-row positions.

The scheduler is single-threaded inside (`step()`); `start()` runs it on a background thread, and `submit_*`,
`cancel` and `Handle.result()` are safe from other threads. A full pool queues requests (bounded); a full queue
raises `Busy`.
"""
from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from janus_edge.errors import InputError, JanusEdgeError

from . import memory, prompts
from .sampling import SamplingConfig, SeededSampler, cfg_combine, check_finite, sample
from .trt_memory import activation_bytes


class Busy(JanusEdgeError):
    """The server's pool and queue are full: retry later."""


class Cancelled(JanusEdgeError):
    """The request was cancelled (its client went away)."""


@dataclass
class Stats:
    lm_calls: int = 0  # every lm call: prefills + steps
    prefill_calls: int = 0
    step_calls: int = 0
    gen_head_calls: int = 0
    lm_head_calls: int = 0
    request_steps: int = 0  # lm calls the finished requests would have made alone (prefill + steps)
    done: int = 0
    failed: int = 0
    cancelled: int = 0
    max_active_rows: int = 0
    cache_relayouts: int = 0  # the bound cache prefix grew or shrank (slots re-laid at a new stride)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


_END = object()


class Handle:
    """A submitted request: `result()` waits for it; `tokens()` streams what each step samples (chat: the new token
    id; t2i: the step's image tokens [n], so a page can preview the image as it is drawn); `cancel()`."""

    def __init__(self, sched: "Scheduler", kind: str):
        self._sched, self.kind = sched, kind
        self._done = threading.Event()
        self._stream: queue.Queue = queue.Queue()
        self._result = None
        self._error: BaseException | None = None
        self.cancelled = False

    def _finish(self, result=None, error: BaseException | None = None) -> None:
        self._result, self._error = result, error
        self._stream.put(_END)
        self._done.set()

    def done(self) -> bool:
        return self._done.is_set()

    def result(self, timeout: float | None = None):
        if not self._done.wait(timeout):
            raise TimeoutError("request still running")
        if self._error is not None:
            raise self._error
        return self._result

    def tokens(self, timeout: float | None = None, cancelled: Callable[[], bool] | None = None):
        """Yields token ids as they are sampled; raises the request's error at the end if it failed.
        `cancelled`: polled while waiting (e.g. "has the client gone?"); when true the request is cancelled."""
        checked = time.monotonic()
        while True:
            if cancelled is not None and time.monotonic() - checked > 0.1:  # at most 10 probes a second
                checked = time.monotonic()
                if cancelled():
                    self.cancel()
            try:
                t = self._stream.get(timeout=0.1 if cancelled is not None else timeout)
            except queue.Empty:
                if cancelled is None:
                    raise TimeoutError("no token within the timeout") from None
                continue
            if t is _END:
                break
            yield t
        if self._error is not None:
            raise self._error

    def cancel(self) -> None:
        self._sched.cancel(self)


@dataclass
class _Req:
    handle: Handle
    kind: str  # "t2i" | "chat"
    embeds: np.ndarray  # prefill embeddings [rows, S, H]
    sampling: SamplingConfig
    rng: SeededSampler  # Philox keyed by the request's seed, counted by (its step, image): no shared state
    n: int = 1  # images (t2i)
    cfg_weight: float = 1.0
    guided: bool = False  # t2i with unconditional rows
    max_new: int = 0  # tokens to produce: num_image_tokens (t2i) or max_new_tokens (chat)
    stop_ids: frozenset = frozenset()
    base: int = -1  # first pool row
    out: list = field(default_factory=list)  # per sampled step: tokens [n] (t2i) or id (chat)
    error: BaseException | None = None
    logits: list | None = None  # per sampled step (keep_logits=True: tests compare near-ties)

    @property
    def nrows(self) -> int:
        return self.embeds.shape[0]

    @property
    def length(self) -> int:
        return self.embeds.shape[1] + self.max_new


class Scheduler:
    def __init__(self, bundle, rows: int = 8, max_len: int | None = None, max_queue: int = 16,
                 cache_chunk: int | None = None):
        """cache_chunk: bind the cache's filled prefix rounded up to this many slots (default: the backend's
        `cache_chunk`; 0: all max_len slots every step)."""
        d = bundle.dims
        self.b, self.be, self.d = bundle, bundle.backend, d
        self.rows = int(rows)
        self.max_len = int(max_len or d.max_position_embeddings)
        if self.rows < 1 or self.max_len < 2:
            raise InputError(f"scheduler capacity must be >= 1 row and >= 2 slots, got {rows} x {max_len}")
        self.max_queue = int(max_queue)
        self.chunk = int(getattr(bundle.backend, "cache_chunk", 0) or 0) if cache_chunk is None else int(cache_chunk)
        self.stats = Stats()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._queue: deque[_Req] = deque()
        self._active: list[_Req] = []  # in row order
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._alloc()

    # ---- buffers (allocated once) ----------------------------------------------------------------------------
    def _alloc(self) -> None:
        be, d, dt, R = self.be, self.d, self.b.dtype, self.rows
        self.graph = self.b.graph("lm")
        from janus_edge import contract as C

        cdt = self.b.specs["lm"].input(C.PAST_KEY.format(i=0)).dtype  # fp16 cache in quantized bundles
        memory.check_fits(memory.request_bytes(d, dt, cdt, R, 1, self.max_len, 0),
                          f"a decode pool of {R} rows x {self.max_len} cache slots", be)
        # The cache is bound as [k, kvh, cap, D]: the first k (active) rows and only cap slots, the filled prefix of
        # the longest row rounded up to the backend's chunk (attention reads ~what is filled, not max_len slots per
        # row: at 8 rows x 960 slots the whole buffer is 3 GB a step on Pro-1B fp32); backends with cache_chunk 0
        # (fixed shapes) bind all max_len slots. One flat store per tensor, allocated once, re-laid on a new cap.
        self._store = [be.alloc((R * d.num_kv_heads * self.max_len * d.head_dim,), cdt)
                       for _ in range(2 * d.num_layers)]
        self.cap = 0
        self._set_cap(self.max_len if not self.chunk else min(self.max_len, self.chunk))
        pk, pv, nk, nv = C.lm_cache_names(d.num_layers)
        self._past_names = [n for pair in zip(pk, pv) for n in pair]
        self._new_names = [n for pair in zip(nk, nv) for n in pair]
        self.io = {"inputs_embeds": be.alloc((R, 1, d.hidden_size), dt), "position_ids": be.alloc((R, 1), "int64"),
                   "hidden_states": be.alloc((R, 1, d.hidden_size), dt)}
        for n in self._new_names:
            self.io[n] = be.alloc((R, d.num_kv_heads, 1, d.head_dim), cdt)
        self._bound: dict[tuple, tuple] = {}  # (active rows, cap) -> (prefix views, run)
        self.pos = np.zeros(R, np.int64)  # next slot of each row
        self.hidden = np.zeros((R, d.hidden_size), dt)  # each row's last hidden state (host)

    def _set_cap(self, cap: int, active: int = 0) -> None:
        """Bind `cap` slots per row: re-lay the first `active` rows' slots at the new stride (in place: growing,
        last block first; shrinking, first block first), then view each store as [R, kvh, cap, D]."""
        be, d = self.be, self.d
        D, blocks, old = d.head_dim, active * d.num_kv_heads, self.cap
        if old and cap != old:
            self.stats.cache_relayouts += 1
        if old and blocks > 1 and cap != old:
            keep = min(old, cap) * D
            order = range(blocks - 1, 0, -1) if cap > old else range(1, blocks)
            for buf in self._store:
                for b in order:
                    be.move_rows(buf, b * old * D, b * cap * D, keep)
        self.cap = cap
        shape = (self.rows, d.num_kv_heads, cap, D)
        self.cache = [be.view(be.rows(buf, 0, self.rows * d.num_kv_heads * cap * D), shape) for buf in self._store]

    def _fit(self, need: int) -> None:
        """Make the bound cap hold `need` slots (and every active row's next slot), as tight as the chunk allows."""
        if not self.chunk:
            return
        k = self.active_rows()
        need = max(need, int(self.pos[:k].max()) + 1 if k else 1)
        cap = min(self.max_len, -(-need // self.chunk) * self.chunk)
        if cap != self.cap:
            self._set_cap(cap, k)

    def _step_fn(self, k: int):
        key = (k, self.cap)
        if key not in self._bound:
            be = self.be
            v = {n: be.rows(b, 0, k) for n, b in self.io.items()}
            past = {n: be.rows(c, 0, k) for n, c in zip(self._past_names, self.cache)}
            run = self.graph.bind({"inputs_embeds": v["inputs_embeds"], "position_ids": v["position_ids"], **past},
                                  {n: v[n] for n in ["hidden_states", *self._new_names]})
            self._bound[key] = (v, run)
        return self._bound[key]

    # ---- submission -------------------------------------------------------------------------------------------
    def submit_image(self, prompt_ids, n: int = 1, cfg_weight: float = 5.0, sampling: SamplingConfig | None = None,
                     seed: int | None = None, keep_logits: bool = False, steps: int | None = None) -> Handle:
        """Image tokens for a pre-tokenized t2i prompt (Pipeline.prompt_ids); result(): tokens [n, T] int64.
        `steps` < T: only the first `steps` tokens (benchmarks time a prefix of the image on slow machines)."""
        T = self.d.num_image_tokens
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= T):
            raise InputError(f"steps must be an integer in [1, {T}], got {steps!r}")
        from .pipeline import _check_cfg

        _check_cfg(n, cfg_weight)
        sampling = (sampling or SamplingConfig()).validate()
        ids = prompts.check_ids(prompt_ids, self.d.vocab_size).tolist()
        guided = cfg_weight != 1
        if n * (2 if guided else 1) > self.rows:  # before the n rows' embeddings are made (n may be huge)
            raise InputError(f"the request needs {n * (2 if guided else 1)} rows; this server's pool has {self.rows}")
        rows_ids = [ids] * n + ([prompts.uncond_ids(ids, self.b.tokens)] * n if guided else [])
        h = Handle(self, "t2i")
        req = _Req(h, "t2i", self.b.embed_text(np.asarray(rows_ids, np.int64)), sampling,
                   SeededSampler(seed), n=int(n), cfg_weight=float(cfg_weight), guided=guided,
                   max_new=steps or T, logits=[] if keep_logits else None)
        h.logits = req.logits
        return self._submit(req, f"a prompt of {len(ids)} tokens")

    def submit_chat(self, embeds: np.ndarray, max_new_tokens: int, stop_ids, sampling: SamplingConfig | None = None,
                    seed: int | None = None) -> Handle:
        """Chat from prefill embeddings [1, S, H] (Pipeline.chat_inputs); tokens() streams ids, result(): ids."""
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
        sampling = (sampling or SamplingConfig(temperature=0.0)).validate()
        e = np.asarray(embeds, self.b.dtype)
        if e.ndim != 3 or e.shape[0] != 1 or e.shape[2] != self.d.hidden_size:
            raise InputError(f"chat embeddings must be [1, S, {self.d.hidden_size}], got {e.shape}")
        h = Handle(self, "chat")
        req = _Req(h, "chat", e, sampling, SeededSampler(seed), max_new=max_new_tokens,
                   stop_ids=frozenset(stop_ids))
        return self._submit(req, f"a chat prompt of {e.shape[1]} tokens")

    def _submit(self, req: _Req, what: str) -> Handle:
        limit = min(self.max_len, self.d.max_position_embeddings)
        if req.length > limit:
            raise InputError(f"{what} + {req.max_new} new tokens exceeds the context ({limit})")
        if req.nrows > self.rows:
            raise InputError(f"the request needs {req.nrows} rows; this server's pool has {self.rows}")
        S = req.embeds.shape[1]  # its cache is the pool's (allocated); its prefill's transients are new
        memory.check_fits(activation_bytes(self.d, req.nrows, S, S, self.b.dtype, 0), f"the prefill of {what}", self.be)
        with self._lock:
            if self._stopping:
                raise Busy("server is shutting down")
            if len(self._queue) >= self.max_queue:
                raise Busy(f"server busy: {self.active_rows()} of {self.rows} rows in use and {len(self._queue)} "
                           f"requests queued (the limit); retry later")
            self._queue.append(req)
            self._wake.notify()
        return req.handle

    def cancel(self, handle: Handle) -> None:
        """Marks the request; it leaves the queue or frees its rows at the next step boundary."""
        with self._lock:
            handle.cancelled = True
            self._wake.notify()

    # ---- the loop -----------------------------------------------------------------------------------------------
    def active_rows(self) -> int:
        return sum(r.nrows for r in self._active)

    def idle(self) -> bool:
        with self._lock:
            return not self._queue and not self._active

    def step(self) -> bool:
        """One iteration (admit, heads + sampling, free, one lm step). Returns False when there was nothing to do."""
        self._admit()
        if not self._active:
            return False
        self._heads()
        self._free()
        if self._active:
            self._lm_step()
        return True

    def run_until_idle(self, max_steps: int | None = None) -> None:
        i = 0
        while self.step():
            i += 1
            if max_steps is not None and i >= max_steps:
                return

    def _admit(self) -> None:
        while True:
            with self._lock:
                for r in [r for r in self._queue if r.handle.cancelled]:
                    self._queue.remove(r)
                    self._end(r, error=Cancelled("request cancelled"))
                if not self._queue or self._queue[0].nrows > self.rows - self.active_rows():
                    return  # first come, first served: a big request is not overtaken
                req = self._queue.popleft()
            try:
                self._prefill(req)
            except Exception as e:  # noqa: BLE001 - the request fails, the server goes on
                self._end(req, error=e)

    def _prefill(self, req: _Req) -> None:
        be, k, r = self.be, self.active_rows(), req.nrows
        S = req.embeds.shape[1]
        self._fit(S)
        feeds = {"inputs_embeds": req.embeds, "position_ids": np.arange(S, dtype=np.int64)[None].repeat(r, 0)}
        for n, c in zip(self._past_names, self.cache):
            feeds[n] = be.read(be.rows(c, k, k + r))  # masked entirely (no slot < position 0)
        out = self.graph.run(feeds)
        self.stats.lm_calls += 1
        self.stats.prefill_calls += 1
        be.kv_append([be.rows(c, k, k + r) for c in self.cache], [out[n] for n in self._new_names], 0)
        req.base = k
        self.pos[k:k + r] = S
        self.hidden[k:k + r] = out["hidden_states"][:, -1]
        self._active.append(req)
        self.stats.max_active_rows = max(self.stats.max_active_rows, k + r)

    def _heads(self) -> None:
        imgs = [r for r in self._active if r.kind == "t2i"]
        chats = [r for r in self._active if r.kind == "chat"]
        if imgs:
            for req, logits in zip(imgs, self._image_logits(imgs)):
                self._sample(req, logits, "image-token")
        if chats:
            logits = self.b.graph("lm_head").run({"hidden": self.hidden[[r.base for r in chats]]})["logits"]
            self.stats.lm_head_calls += 1
            for i, req in enumerate(chats):
                self._sample(req, logits[i:i + 1], "text")

    def _image_logits(self, imgs: list[_Req]) -> list[np.ndarray]:
        cond = np.concatenate([np.arange(r.base, r.base + r.n) for r in imgs])
        unc = np.concatenate([np.arange(r.base + r.n, r.base + 2 * r.n) if r.guided else
                              np.arange(r.base, r.base + r.n) for r in imgs])
        weights = {r.cfg_weight for r in imgs if r.guided}
        head = self.b.graph("gen_head")
        self.stats.gen_head_calls += 1
        split = np.cumsum([r.n for r in imgs])[:-1]
        if len(weights) <= 1:
            w = np.array([weights.pop() if weights else 1.0], self.b.dtype)
            out = head.run({"hidden": self.hidden[np.concatenate([cond, unc])], "cfg_weight": w})["logits"]
            return np.split(out, split)
        # several weights in flight: raw logits of every row ([x; x] with w = 1 gives x's logits exactly), then
        # u + w (c - u) per image on the host, in the bundle dtype as the graph computes it
        rows = np.concatenate([cond, unc])
        x = self.hidden[rows]
        raw = head.run({"hidden": np.concatenate([x, x]), "cfg_weight": np.ones(1, self.b.dtype)})["logits"]
        c, u = np.split(raw[:len(cond)], split), np.split(raw[len(cond):], split)
        return [cfg_combine(ci, ui, r.cfg_weight if r.guided else 1.0) for r, ci, ui in zip(imgs, c, u)]

    def _sample(self, req: _Req, logits: np.ndarray, where: str) -> None:
        try:
            check_finite(logits, where)
            if req.logits is not None:
                req.logits.append(np.array(logits))
            tok = sample(logits, req.sampling, req.rng, step=len(req.out))
        except Exception as e:  # noqa: BLE001
            req.error = e  # the request fails at _free; the others go on
            return
        if req.kind == "chat":
            t = int(tok[0])
            req.out.append(t)
            req.handle._stream.put(t)
        else:
            req.out.append(tok)
            req.handle._stream.put(tok)

    def _finished(self, req: _Req) -> bool:
        if len(req.out) >= req.max_new:
            return True
        return req.kind == "chat" and bool(req.out) and req.out[-1] in req.stop_ids

    def _free(self) -> None:
        keep: list[_Req] = []
        k = self.active_rows()
        for req in list(self._active):
            gone = req.handle.cancelled or req.error is not None or self._finished(req)
            if not gone:
                keep.append(req)
                continue
            # move every later block down over this one
            start, r = req.base, req.nrows
            later = k - (start + r)
            for buf in self.cache:
                self.be.move_rows(buf, start + r, start, later)
            for a in (self.pos, self.hidden):
                a[start:start + later] = a[start + r:start + r + later].copy()
            for other in self._active:
                if other.base > start:
                    other.base -= r
            k -= r
            self._complete(req)
        self._active = keep

    def _complete(self, req: _Req) -> None:
        if req.error is not None:
            self._end(req, error=req.error)
        elif req.handle.cancelled:
            self._end(req, error=Cancelled("request cancelled"))
        else:
            self.stats.request_steps += len(req.out)  # prefill + (len - 1) steps when run alone
            result = np.stack(req.out, 1).astype(np.int64) if req.kind == "t2i" else list(req.out)
            self._end(req, result=result)

    def _end(self, req: _Req, result=None, error: BaseException | None = None) -> None:
        if error is None:
            self.stats.done += 1
        elif isinstance(error, Cancelled):
            self.stats.cancelled += 1
        else:
            self.stats.failed += 1
        req.handle._finish(result, error)

    def _lm_step(self) -> None:
        be, k = self.be, self.active_rows()
        self._fit(0)
        v, run = self._step_fn(k)
        emb = np.empty((k, 1, self.d.hidden_size), self.b.dtype)
        imgs = [r for r in self._active if r.kind == "t2i"]
        if imgs:
            rows = np.concatenate([np.arange(r.base, r.base + r.nrows) for r in imgs])
            codes = np.concatenate([np.tile(r.out[-1], r.nrows // r.n) for r in imgs])[:, None]
            emb[rows] = self.b.graph("gen_embed").run({"codes": codes.astype(np.int64)})["embeds"]
        for r in self._active:
            if r.kind == "chat":
                emb[r.base] = self.b.embed_text(np.array([[r.out[-1]]]))[0]
        be.write(v["inputs_embeds"], emb)
        be.write(v["position_ids"], self.pos[:k, None].copy())
        run()
        self.stats.lm_calls += 1
        self.stats.step_calls += 1
        be.kv_append(self.cache, [v[n] for n in self._new_names], self.pos[:k].copy())
        self.pos[:k] += 1
        self.hidden[:k] = be.read(v["hidden_states"])[:, 0]

    # ---- background thread ----------------------------------------------------------------------------------
    def start(self) -> "Scheduler":
        self._thread = threading.Thread(target=self._loop, name="janus-scheduler", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._stopping and not self._queue and not self._active:
                    self._wake.wait()
                if self._stopping:
                    break
            try:
                self.step()
            except Exception as e:  # noqa: BLE001 - an internal failure ends the requests in flight, not the loop
                for req in self._active:
                    self._end(req, error=e)
                self._active = []
        self._drain(Busy("server is shutting down"))

    def _drain(self, error: BaseException) -> None:
        with self._lock:
            pending = list(self._queue) + self._active
            self._queue.clear()
            self._active = []
        for req in pending:
            self._end(req, error=error)

    def stop(self, timeout: float = 30.0) -> None:
        """Ends the loop at the next step boundary; requests still queued or running fail with Busy."""
        with self._lock:
            self._stopping = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        else:
            self._drain(Busy("server is shutting down"))
