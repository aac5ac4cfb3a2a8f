"""The public runtime API: `Pipeline.from_bundle(path, backend="ort")` and its generate / chat / VQ calls."""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from janus_edge.errors import InputError

from . import memory, prompts
from .backends import get_backend
from .bundle import Bundle
from .decode import generate_image_tokens, generate_text
from .image import load_image, preprocess, to_pil
from .sampling import SamplingConfig, SeededSampler


@dataclass
class GenerationResult:
    images: list  # PIL images (empty when decode=False)
    tokens: np.ndarray  # [n, num_image_tokens] int64
    prompt_ids: list[int]  # the conditional row's ids, exactly as fed
    timings: dict = field(default_factory=dict)  # prefill_s, step_s (list), vq_decode_s, total_s


def _check_cfg(n, cfg_weight) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise InputError(f"n must be an integer >= 1, got {n!r}")
    if not isinstance(cfg_weight, (int, float)) or not math.isfinite(cfg_weight) or cfg_weight < 1:
        raise InputError(f"cfg weight must be a finite number >= 1 (1 = no guidance), got {cfg_weight!r}")


class Pipeline:
    def __init__(self, bundle: Bundle):
        self.bundle = bundle
        self.dims = bundle.dims

    @classmethod
    def from_bundle(cls, path: str, backend: str = "ort", threads: int | None = None,
                    device: str | None = None) -> "Pipeline":
        """device (backend "ort"): "cpu" (default), "cuda" or "tensorrt" (onnxruntime-gpu, runtime/ort_gpu.py)."""
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise InputError(f"threads must be an integer >= 1, got {threads!r}")
        return cls(Bundle(path, get_backend(backend, threads=threads, device=device)))

    # ---- text -> image -------------------------------------------------------------------------------------
    def _context_check(self, length: int, new: int, what: str) -> None:
        limit = self.dims.max_position_embeddings
        if length + new > limit:
            raise InputError(f"{what} of {length} tokens + {new} new tokens exceeds the model context ({limit})")

    def _memory_check(self, rows: int, seq: int, length: int, n_images: int, what: str) -> None:
        """Refuse (InputError) a request whose KV cache + activations exceed the memory available (memory.py)."""
        m = self.bundle.manifest
        need = memory.request_bytes(self.dims, m.dtype, m.kv_cache_dtype or m.dtype, rows, seq, length, n_images)
        memory.check_fits(need, what, self.bundle.backend)

    def prompt_ids(self, prompt: str) -> list[int]:
        return prompts.t2i_ids(self.bundle, prompt)

    def generate_image(self, prompt: str | None = None, *, input_ids: Sequence[int] | None = None, n: int = 1,
                       cfg_weight: float = 5.0, temperature: float = 1.0, top_k: int | None = None,
                       top_p: float | None = None, seed: int | None = None, decode: bool = True,
                       on_step: Callable[[int], None] | None = None) -> GenerationResult:
        """Text (or pre-tokenized ids) -> n images. All 2n CFG rows run as one batch per step."""
        if (prompt is None) == (input_ids is None):
            raise InputError("give exactly one of prompt or input_ids")
        _check_cfg(n, cfg_weight)
        sampling = SamplingConfig(temperature, top_k, top_p).validate()
        ids = self.prompt_ids(prompt) if prompt is not None else \
            prompts.check_ids(input_ids, self.dims.vocab_size).tolist()
        self._context_check(len(ids), self.dims.num_image_tokens, "prompt")
        rows, length = (2 * int(n) if cfg_weight != 1 else int(n)), len(ids) + self.dims.num_image_tokens
        self._memory_check(rows, len(ids), length, int(n) if decode else 0,
                           f"a request for {n} image(s) ({rows} rows x {length} cache slots)")
        uncond = prompts.uncond_ids(ids, self.bundle.tokens) if cfg_weight != 1 else None
        rng = SeededSampler(seed)
        t0 = time.perf_counter()
        marks: list[float] = []

        def tick(i: int) -> None:
            marks.append(time.perf_counter())
            if on_step is not None:
                on_step(i)

        tokens = generate_image_tokens(self.bundle, ids, uncond, int(n), float(cfg_weight), sampling, rng, tick)
        t1 = time.perf_counter()
        if decode:  # the request's KV cache is freed by now: give its pages back before the VQ decoder's peak
            memory.trim_heap()
        images = self.decode_tokens(tokens) if decode else []
        t2 = time.perf_counter()
        timings = {"prefill_s": marks[0] - t0, "step_s": list(np.diff(marks)), "vq_decode_s": t2 - t1,
                   "total_s": t2 - t0}
        return GenerationResult(images=images, tokens=tokens, prompt_ids=list(ids), timings=timings)

    # ---- VQ round trip -------------------------------------------------------------------------------------
    def _pixels(self, images) -> np.ndarray:
        cfg = self.bundle.manifest.image_preprocess
        return np.stack([preprocess(load_image(im), cfg, self.bundle.dtype) for im in images])

    def encode_image(self, image) -> np.ndarray:
        """One image (path or PIL) -> codes [T]; a list -> [n, T]."""
        many = isinstance(image, (list, tuple))
        imgs = list(image) if many else [image]
        if not imgs:
            raise InputError("no image given")
        codes = self.bundle.graph("vq_encoder").run({"pixel_values": self._pixels(imgs)})["codes"]
        return codes if many else codes[0]

    def decode_tokens(self, codes) -> list:
        """codes [T] or [n, T] -> PIL images."""
        a = np.asarray(codes)
        a = a[None] if a.ndim == 1 else a
        T, V = self.dims.num_image_tokens, self.dims.image_vocab_size
        if a.ndim != 2 or a.shape[1] != T or not np.issubdtype(a.dtype, np.integer):
            raise InputError(f"codes must be integers of shape [n, {T}], got {a.dtype} {a.shape}")
        if a.min() < 0 or a.max() >= V:
            raise InputError(f"codes out of range [0, {V})")
        pixels = self.bundle.graph("vq_decoder").run({"codes": a.astype(np.int64)})["pixels"]
        return to_pil(pixels)

    # ---- understanding -------------------------------------------------------------------------------------
    def chat_inputs(self, question: str, images: Sequence = ()) -> tuple[list[int], np.ndarray]:
        """(prompt ids, embeddings [1, S, H]) with the vision embeddings at the image positions."""
        images = list(images or [])
        ids = prompts.chat_ids(self.bundle, question, len(images))
        emb = self.bundle.embed_text(np.asarray([ids], np.int64))
        if images:
            vis = self.bundle.graph("vision").run({"pixel_values": self._pixels(images)})["image_embeds"]
            mask = np.asarray(ids) == self.bundle.tokens["image"]
            emb[0, mask] = vis.reshape(-1, self.dims.hidden_size)
        return ids, emb

    def chat_token_ids(self, question: str, images: Sequence = (), max_new_tokens: int = 256,
                       temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                       seed: int | None = None) -> Iterator[int]:
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
        sampling = SamplingConfig(temperature, top_k, top_p).validate()
        ids, emb = self.chat_inputs(question, images)
        self._context_check(len(ids), max_new_tokens, "chat prompt")
        self._memory_check(1, len(ids), len(ids) + max_new_tokens, 0,
                           f"a chat of {len(ids)} prompt + {max_new_tokens} new tokens")
        return generate_text(self.bundle, emb, max_new_tokens, sampling, SeededSampler(seed),
                             self.stop_ids())

    def stop_ids(self) -> set[int]:
        t = self.bundle.tokens
        return {t["eos"]} | ({t["user"]} if t.get("user") is not None else set())

    def chat_stream(self, question: str, images: Sequence = (), **kw) -> Iterator[str]:
        """Yields the answer's text as it is generated (stops at EOS or a stop string)."""
        yield from self.detokenize(self.chat_token_ids(question, images, **kw))

    def detokenize(self, token_ids: Iterator[int]) -> Iterator[str]:
        """New token ids (as sampled) -> text pieces, cut at EOS or a stop string (also used by serving)."""
        tok, stops = self.bundle.tokenizer, self.stop_ids()
        stop_strings = self.bundle.manifest.prompts.get("stop_strings", [])
        out: list[int] = []
        emitted = ""
        for t in token_ids:  # validation runs before the first token
            if t in stops:
                break
            out.append(t)
            text = tok.decode(out, skip_special_tokens=True)
            cut = min((text.find(s) for s in stop_strings if s in text), default=-1)
            if cut >= 0:
                yield text[len(emitted):cut]
                return
            if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the next token
                continue
            safe = len(text) - _held_back(text, stop_strings)
            if safe > len(emitted):
                yield text[len(emitted):safe]
                emitted = text[:safe]
        # The stream ended: flush what was held back (a stop string's prefix, or an incomplete UTF-8 sequence that
        # the decoder shows as U+FFFD), so the answer is exactly the decode of the ids, to the last character.
        rest = tok.decode(out, skip_special_tokens=True)
        if len(rest) > len(emitted):
            yield rest[len(emitted):]

    def chat(self, question: str, images: Sequence = (), **kw) -> str:
        return "".join(self.chat_stream(question, images, **kw))


def _held_back(text: str, stops: list[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of a stop string."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                best = max(best, k)
                break
    return best
