"""Triton Python-backend model `chat` (decoupled): owns the process's one Engine (Pipeline + Scheduler).

Copied to REPO/chat/1/model.py by `janus-edge triton-repo`. Requests:
- chat (default): QUESTION, optional IMAGE (encoded image bytes, one or more), MAX_NEW_TOKENS, TEMPERATURE, TOP_K,
  TOP_P, SEED -> a stream of responses with TEXT (one piece each), then an empty final response;
- KIND="t2i" (what the `t2i` model forwards): PROMPT, N, CFG, TEMPERATURE, TOP_K, TOP_P, SEED -> one response
  with IMAGES (PNG bytes [n]) and TOKENS ([n, T] int64);
- KIND="stats": one response with STATS (the scheduler's counters as JSON: lm calls, request steps, ...).
execute() only parses and hands each request to a thread; the scheduler thread batches every request in flight.
A client that goes away (gRPC stream closed / request cancelled) cancels its request: its rows are freed.
"""
from __future__ import annotations

import json
import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils

from janus_edge.errors import USER_ERRORS
from janus_edge.runtime.scheduler import Busy, Cancelled
from janus_edge.serving.engine import Engine, EngineOptions
from janus_edge.serving.protocol import chat_args, kind_of, t2i_args

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


def _param(cfg: dict, key: str, cast, default=None):
    v = cfg.get("parameters", {}).get(key, {}).get("string_value", "")
    return cast(v) if v not in ("", None) else default


class TritonPythonModel:
    def initialize(self, args):
        cfg = json.loads(args["model_config"])
        self.engine = Engine(EngineOptions(
            bundle=_param(cfg, "bundle", str), backend=_param(cfg, "backend", str, "ort"),
            threads=_param(cfg, "threads", int), rows=_param(cfg, "rows", int, 8),
            max_len=_param(cfg, "max_len", int), max_queue=_param(cfg, "max_queue", int, 16),
            steps=_param(cfg, "steps", int)))
        self._threads: set[threading.Thread] = set()

    def execute(self, requests):
        for r in requests:
            t = threading.Thread(target=self._serve, args=(r, r.get_response_sender()), daemon=True)
            self._threads.add(t)
            t.start()
        return None

    # ---- one request ----------------------------------------------------------------------------------------------
    def _serve(self, request, sender) -> None:
        try:
            kind = kind_of(_inputs(request))
            if kind == "stats":
                out = np.array([json.dumps(self.engine.stats()).encode()], dtype=object)
                sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("STATS", out)]), flags=FINAL)
            elif kind == "t2i":
                self._t2i(request, sender)
            else:
                self._chat(request, sender)
        except (Busy, Cancelled, *USER_ERRORS) as e:
            _send_error(sender, str(e))
        except Exception as e:  # noqa: BLE001 - an internal failure answers this request; the server goes on
            _send_error(sender, f"internal error: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}")
        finally:
            self._threads.discard(threading.current_thread())

    def _t2i(self, request, sender) -> None:
        h = self.engine.t2i(**t2i_args(_inputs(request)))
        gone = _cancel_check(sender)
        while True:
            try:
                tokens = h.result(timeout=0.25)
                break
            except TimeoutError:
                if gone():
                    h.cancel()
        pngs = np.array(self.engine.pngs(tokens), dtype=object).reshape(-1)
        sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("IMAGES", pngs), pb_utils.Tensor("TOKENS", tokens)]),
                    flags=FINAL)

    def _chat(self, request, sender) -> None:
        h = self.engine.chat(**chat_args(_inputs(request)))
        try:
            for piece in self.engine.text(h.tokens(cancelled=_cancel_check(sender))):
                if piece:
                    sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("TEXT", np.array([piece.encode()],
                                                                                               dtype=object))]))
        except Cancelled:
            raise
        except BaseException:
            h.cancel()
            raise
        h.cancel()  # stopped at a stop string before the scheduler saw a stop id: free the row now
        sender.send(flags=FINAL)

    def finalize(self):
        # One deadline for the whole shutdown, well inside the server's exit timeout (a join of 10 s per request
        # thread added up past it with a few requests in flight).
        deadline = time.monotonic() + 10.0
        self.engine.close(timeout=5.0)  # requests still running end with "server is shutting down"
        for t in list(self._threads):
            t.join(max(0.0, deadline - time.monotonic()))


def _inputs(request) -> dict:
    out = {}
    for name in ("KIND", "PROMPT", "QUESTION", "IMAGE", "N", "CFG", "TEMPERATURE", "TOP_K", "TOP_P", "SEED",
                 "MAX_NEW_TOKENS"):
        t = pb_utils.get_input_tensor_by_name(request, name)
        if t is not None:
            out[name] = t.as_numpy()
    return out


def _cancel_check(sender):
    probe = getattr(sender, "is_cancelled", None)
    return (lambda: bool(probe())) if probe is not None else (lambda: False)


def _send_error(sender, msg: str) -> None:
    try:
        sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(msg)), flags=FINAL)
    except Exception:  # noqa: BLE001 - the client is gone
        pass
