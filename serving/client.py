"""Client helpers over `tritonclient` (HTTP and gRPC): t2i, streaming chat, scheduler stats.

    from janus_edge.serving.client import t2i_http, t2i_grpc, chat_stream, stats
    res = t2i_http("127.0.0.1:8000", "a red fox in snow", n=1, cfg=5.0, seed=0)   # res.pngs, res.tokens
    for piece in chat_stream("127.0.0.1:8001", "What is in the picture?", images=[open("cat.png", "rb").read()]):
        print(piece, end="", flush=True)
"""
from __future__ import annotations

import json
import queue
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np


class ServerError(RuntimeError):
    """The server answered the request with an error (its message is the server's)."""


@dataclass
class T2IResult:
    pngs: list[bytes]
    tokens: np.ndarray  # [n, T] int64


def _t2i_inputs(mod, prompt: str, n: int, cfg: float, temperature: float, top_k, top_p, seed) -> list:
    vals = [("PROMPT", np.array([prompt.encode()], dtype=object), "BYTES"),
            ("N", np.array([n], np.int32), "INT32"), ("CFG", np.array([cfg], np.float32), "FP32"),
            ("TEMPERATURE", np.array([temperature], np.float32), "FP32")]
    if top_k is not None:
        vals.append(("TOP_K", np.array([top_k], np.int32), "INT32"))
    if top_p is not None:
        vals.append(("TOP_P", np.array([top_p], np.float32), "FP32"))
    if seed is not None:
        vals.append(("SEED", np.array([seed], np.int64), "INT64"))
    return _infer_inputs(mod, vals)


def _infer_inputs(mod, vals: list) -> list:
    """(name, array, Triton dtype) triples -> `mod.InferInput`s (mod: tritonclient.http or tritonclient.grpc)."""
    out = []
    for name, a, dt in vals:
        t = mod.InferInput(name, list(a.shape), dt)
        t.set_data_from_numpy(a)
        out.append(t)
    return out


def t2i_http(url: str, prompt: str, n: int = 1, cfg: float = 5.0, temperature: float = 1.0, top_k=None,
             top_p=None, seed=None, timeout_s: float = 600.0) -> T2IResult:
    import tritonclient.http as http
    from tritonclient.utils import InferenceServerException

    with http.InferenceServerClient(url, connection_timeout=timeout_s, network_timeout=timeout_s) as c:
        try:
            r = c.infer("t2i", _t2i_inputs(http, prompt, n, cfg, temperature, top_k, top_p, seed))
        except InferenceServerException as e:
            raise ServerError(e.message()) from None
    return T2IResult([bytes(b) for b in r.as_numpy("IMAGES")], r.as_numpy("TOKENS"))


def t2i_grpc(url: str, prompt: str, n: int = 1, cfg: float = 5.0, temperature: float = 1.0, top_k=None,
             top_p=None, seed=None, timeout_s: float = 600.0) -> T2IResult:
    import tritonclient.grpc as grpc
    from tritonclient.utils import InferenceServerException

    with grpc.InferenceServerClient(url) as c:
        try:
            r = c.infer("t2i", _t2i_inputs(grpc, prompt, n, cfg, temperature, top_k, top_p, seed),
                        client_timeout=timeout_s)
        except InferenceServerException as e:
            raise ServerError(e.message()) from None
    return T2IResult([bytes(b) for b in r.as_numpy("IMAGES")], r.as_numpy("TOKENS"))


def _chat_inputs(grpc, question: str, images: Sequence[bytes], max_new_tokens: int, temperature: float, top_k,
                 top_p, seed) -> list:
    vals = [("QUESTION", np.array([question.encode()], dtype=object), "BYTES"),
            ("MAX_NEW_TOKENS", np.array([max_new_tokens], np.int32), "INT32"),
            ("TEMPERATURE", np.array([temperature], np.float32), "FP32")]
    if images:
        vals.append(("IMAGE", np.array([bytes(b) for b in images], dtype=object), "BYTES"))
    for name, v, dt, np_dt in (("TOP_K", top_k, "INT32", np.int32), ("TOP_P", top_p, "FP32", np.float32),
                               ("SEED", seed, "INT64", np.int64)):
        if v is not None:
            vals.append((name, np.array([v], np_dt), dt))
    return _infer_inputs(grpc, vals)


def chat_stream(url: str, question: str, images: Sequence[bytes] = (), max_new_tokens: int = 256,
                temperature: float = 0.0, top_k=None, top_p=None, seed=None, timeout_s: float = 600.0) -> Iterator[str]:
    """Yields the answer piece by piece as the server streams it (gRPC bidirectional stream, model `chat`).
    Closing the generator early closes the stream: the server cancels the request and frees its row.

    A stream whose request has ended (final response or error) is closed, never cancelled: tritonserver 2.51 keeps
    a decoupled request alive for good when its gRPC stream is cancelled just after the final response (measured:
    4 of 8 servers after 48 such streams each, 0 of 8 with the stream closed), and the model then never unloads,
    so the server's shutdown runs into its exit timeout (exit 1)."""
    import tritonclient.grpc as grpc

    events: queue.Queue = queue.Queue()
    c = grpc.InferenceServerClient(url)
    c.start_stream(callback=lambda result, error: events.put((result, error)))
    ended = False  # the server ended the request: close the stream, don't cancel it
    try:
        c.async_stream_infer("chat", _chat_inputs(grpc, question, images, max_new_tokens, temperature, top_k, top_p,
                                                  seed), enable_empty_final_response=True)
        while True:
            result, error = events.get(timeout=timeout_s)
            ended = _is_last(result, error)
            if error is not None:
                raise ServerError(error.message() if hasattr(error, "message") else str(error))
            text = result.as_numpy("TEXT")
            if text is not None and len(text):
                yield bytes(text[0]).decode("utf-8")
            if ended:
                return
    finally:
        while not ended and not events.empty():  # closed early: did the end arrive meanwhile?
            ended = _is_last(*events.get_nowait())
        c.stop_stream(cancel_requests=not ended)
        c.close()


def _is_last(result, error) -> bool:
    """An error (the server sends its errors as final responses) or the response flagged final."""
    if error is not None:
        return True
    p = result.get_response().parameters
    return bool(p.get("triton_final_response") and p["triton_final_response"].bool_param)


def stats(url: str) -> dict:
    """The scheduler's counters (lm calls, request steps, done/failed/cancelled, rows in use), over gRPC."""
    import tritonclient.grpc as grpc

    events: queue.Queue = queue.Queue()
    with grpc.InferenceServerClient(url) as c:
        c.start_stream(callback=lambda result, error: events.put((result, error)))
        kind = grpc.InferInput("KIND", [1], "BYTES")
        kind.set_data_from_numpy(np.array([b"stats"], dtype=object))
        c.async_stream_infer("chat", [kind])
        result, error = events.get(timeout=60)
        c.stop_stream()
    if error is not None:
        raise ServerError(str(error))
    return json.loads(bytes(result.as_numpy("STATS")[0]))
