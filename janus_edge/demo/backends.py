"""What the page runs requests on: the bundle in this process through the scheduler (two tabs share decode steps),
or a running `janus-edge serve` through the Triton client (`--server URL`, gRPC). Both take the same requests and
give jobs with the same shape: `updates()` (each step's image tokens [n], local only), `images()`, `cancel()`."""
from __future__ import annotations

import io
import resource
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np



@dataclass
class T2IRequest:
    prompt: str
    n: int = 1
    cfg_weight: float = 5.0
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None


def _precisions(manifest) -> dict[str, str]:
    out = {}
    for name, g in manifest.graphs.items():
        q = g.quantization or {}
        mode = q.get("mode") or q.get("scheme")
        out[name] = g.precision + (f" ({mode})" if mode else "")
    return out


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


class LocalJob:
    def __init__(self, backend: "LocalBackend", handle, n: int):
        self.backend, self.handle, self.n = backend, handle, n
        self.tokens: np.ndarray | None = None

    def updates(self) -> Iterator[np.ndarray]:
        yield from self.handle.tokens()  # raises the request's error (Cancelled, ...) at the end

    def images(self) -> list:
        self.tokens = self.handle.result()
        return self.backend.pipe.decode_tokens(self.tokens)

    def cancel(self) -> None:
        if not self.handle.done():
            self.handle.cancel()


class LocalBackend:
    """The bundle in process: one Pipeline, one Scheduler (its own thread; or, with `step_delay_s` > 0, a loop here
    that sleeps between steps, so that a browser can watch a tiny model draw: tests only)."""

    streams_tokens = True

    def __init__(self, bundle: str, backend: str = "ort", threads: int | None = None, rows: int = 8,
                 step_delay_s: float = 0.0):
        from janus_edge.runtime.pipeline import Pipeline
        from janus_edge.runtime.scheduler import Scheduler
        from janus_edge.serving.engine import default_max_len

        from .preview import colour_table, preview_html

        self.kind = backend
        self.pipe = Pipeline.from_bundle(bundle, backend=backend, threads=threads)
        self.dims = self.pipe.dims
        self.sched = Scheduler(self.pipe.bundle, rows=rows, max_len=default_max_len(self.dims))
        t0 = time.perf_counter()
        self.table = colour_table(self.pipe)
        self.table_s = time.perf_counter() - t0
        preview_html(self.table, np.zeros((1, 1), np.int64), self.dims.num_image_tokens)  # PIL's PNG plugin loaded
        self._closing = threading.Event()
        self.step_delay_s = float(step_delay_s)  # may be changed while running (paced loop only)
        if self.step_delay_s > 0:
            self._thread = threading.Thread(target=self._paced_loop, name="janus-demo-steps", daemon=True)
            self._thread.start()
        else:
            self._thread = None
            self.sched.start()

    def _paced_loop(self) -> None:
        while not self._closing.is_set():
            if self.sched.step():
                time.sleep(self.step_delay_s)
            else:
                self._closing.wait(0.005)

    def t2i(self, r: T2IRequest) -> LocalJob:
        from janus_edge.runtime.sampling import SamplingConfig

        ids = self.pipe.prompt_ids(r.prompt)
        h = self.sched.submit_image(ids, r.n, r.cfg_weight, SamplingConfig(r.temperature, r.top_k, r.top_p), r.seed)
        return LocalJob(self, h, r.n)

    def chat(self, question: str, images: Sequence[str], max_new_tokens: int = 128, temperature: float = 0.0,
             seed: int | None = None) -> Iterator[str]:
        """Streams the answer's text; closing the generator early cancels the request (its row is freed)."""
        from janus_edge.runtime.image import load_image
        from janus_edge.runtime.sampling import SamplingConfig

        sampling = SamplingConfig(temperature).validate()
        pil = [load_image(p) for p in images]
        _, emb = self.pipe.chat_inputs(question, pil)
        h = self.sched.submit_chat(emb, int(max_new_tokens), self.pipe.stop_ids(), sampling, seed)
        try:
            yield from self.pipe.detokenize(h.tokens())
        finally:
            if not h.done():
                h.cancel()

    def details(self) -> dict:
        s = self.sched.stats
        return {"backend": f"{self.kind}, in process (scheduler: {self.sched.rows} rows)",
                "precision": _precisions(self.pipe.bundle.manifest), "peak_rss_mb": peak_rss_mb(),
                "scheduler": {"requests done": s.done, "cancelled": s.cancelled, "failed": s.failed,
                              "lm steps": s.step_calls, "most rows at once": s.max_active_rows},
                "colour_table_s": self.table_s}

    def close(self) -> None:
        self._closing.set()
        if self._thread is not None:
            self._thread.join(10)
        self.sched.stop()


class RemoteJob:
    """A t2i request to the server, run on a thread (the client call blocks until the images come back)."""

    def __init__(self, url: str, r: T2IRequest):
        from janus_edge.serving import client

        self._out: dict = {}
        self.n, self.tokens = r.n, None

        def call():
            try:
                self._out["res"] = client.t2i_grpc(url, r.prompt, r.n, r.cfg_weight, r.temperature, r.top_k,
                                                   r.top_p, r.seed)
            except Exception as e:  # noqa: BLE001 - shown in the page
                self._out["err"] = e

        self._t = threading.Thread(target=call, daemon=True)
        self._t.start()

    def updates(self) -> Iterator[np.ndarray]:
        return iter(())  # the server's t2i is one response: no tokens before the images

    def images(self) -> list:
        from PIL import Image

        self._t.join()
        if "err" in self._out:
            raise self._out["err"]
        res = self._out["res"]
        self.tokens = res.tokens
        return [Image.open(io.BytesIO(b)).convert("RGB") for b in res.pngs]

    def cancel(self) -> None:
        pass  # a unary gRPC call: the server finishes it (its rows are freed then)


class RemoteBackend:
    """A running `janus-edge serve` (gRPC URL, e.g. 127.0.0.1:8001); the bundle is read here for the manifest."""

    streams_tokens = False

    def __init__(self, bundle: str, url: str):
        from janus_edge import contract as C

        self.url, self.manifest = url, C.load_manifest(bundle)
        self.dims, self.table = self.manifest.dims, None

    def t2i(self, r: T2IRequest) -> RemoteJob:
        return RemoteJob(self.url, r)

    def chat(self, question: str, images: Sequence[str], max_new_tokens: int = 128, temperature: float = 0.0,
             seed: int | None = None) -> Iterator[str]:
        from janus_edge.serving import client

        data = []
        for p in images:
            with open(p, "rb") as fh:
                data.append(fh.read())
        yield from client.chat_stream(self.url, question, data, max_new_tokens, temperature, seed=seed)

    def details(self) -> dict:
        from janus_edge.serving import client

        try:
            st = client.stats(self.url)
        except Exception as e:  # noqa: BLE001
            st = {"error": str(e)[:200]}
        return {"backend": f"Triton server at {self.url}", "precision": _precisions(self.manifest),
                "peak_rss_mb": None, "scheduler": st}

    def close(self) -> None:
        pass


def check_images(paths: Sequence[str]) -> None:
    """Every upload must be an image PIL reads (the server would refuse it too): a readable message otherwise."""
    from janus_edge.runtime.image import load_image

    for p in paths:
        load_image(p)

