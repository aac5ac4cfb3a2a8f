"""The serving engine: one Pipeline + one Scheduler per server process, requests in, results out (no Triton here).

The Triton model `chat` (serving/triton_chat.py) owns one Engine; every request of the process (chat, and t2i
forwarded by the `t2i` model) goes through its scheduler, so they share decode steps.
"""
from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from janus_edge.errors import InputError
from janus_edge.runtime.pipeline import Pipeline
from janus_edge.runtime.sampling import SamplingConfig
from janus_edge.runtime.scheduler import Handle, Scheduler


@dataclass
class EngineOptions:
    bundle: str
    backend: str = "ort"
    threads: int | None = None
    rows: int = 8  # LM rows in the pool (a t2i image with guidance takes 2, a chat 1)
    max_len: int | None = None  # cache slots per row (default: image tokens + 384, within the model context)
    max_queue: int = 16  # requests waiting for rows; beyond it requests fail with "server busy"
    steps: int | None = None  # benchmarks only: generate this prefix of each image's tokens (no PNG then)


def default_max_len(dims) -> int:
    return min(dims.max_position_embeddings, dims.num_image_tokens + 384)


def png_bytes(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def open_image(data: bytes):
    """Encoded image bytes (PNG, JPEG, ...) -> PIL image; anything else is the client's error."""
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(io.BytesIO(bytes(data)))
        img.load()
        return img
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise InputError(f"IMAGE is not a readable image ({type(e).__name__}: {str(e)[:120]})") from None


class Engine:
    def __init__(self, opts: EngineOptions):
        self.opts = opts
        self.pipe = Pipeline.from_bundle(opts.bundle, backend=opts.backend, threads=opts.threads)
        d = self.pipe.dims
        self.sched = Scheduler(self.pipe.bundle, rows=opts.rows, max_len=opts.max_len or default_max_len(d),
                               max_queue=opts.max_queue).start()

    @property
    def dims(self):
        return self.pipe.dims

    def t2i(self, prompt: str, n: int = 1, cfg_weight: float = 5.0, temperature: float = 1.0,
            top_k: int | None = None, top_p: float | None = None, seed: int | None = None) -> Handle:
        """Validates and queues; result() -> tokens [n, T]. Raises InputError / Busy at once."""
        ids = self.pipe.prompt_ids(prompt)
        return self.sched.submit_image(ids, n, cfg_weight, SamplingConfig(temperature, top_k, top_p), seed,
                                       steps=self.opts.steps)

    def chat(self, question: str, images: Sequence[bytes] = (), max_new_tokens: int = 256, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, seed: int | None = None) -> Handle:
        sampling = SamplingConfig(temperature, top_k, top_p).validate()
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
            raise InputError(f"MAX_NEW_TOKENS must be an integer >= 1, got {max_new_tokens!r}")
        pil = [open_image(b) for b in images]
        ids, emb = self.pipe.chat_inputs(question, pil)  # the vision graph runs here, on the caller's thread
        return self.sched.submit_chat(emb, int(max_new_tokens), self.pipe.stop_ids(), sampling, seed)

    def pngs(self, tokens: np.ndarray) -> list[bytes]:
        if tokens.shape[1] < self.dims.num_image_tokens:  # a benchmark's prefix: nothing to decode
            return []
        return [png_bytes(im) for im in self.pipe.decode_tokens(tokens)]

    def text(self, token_ids: Iterator[int]) -> Iterator[str]:
        return self.pipe.detokenize(token_ids)

    def stats(self) -> dict:
        s = self.sched.stats.to_dict()
        s.update(rows=self.sched.rows, max_len=self.sched.max_len, max_queue=self.sched.max_queue,
                 active_rows=self.sched.active_rows(), queued=len(self.sched._queue))
        return s

    def close(self, timeout: float = 30.0) -> None:
        self.sched.stop(timeout)
