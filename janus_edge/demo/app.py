"""The page: text to image (live preview, progress, Stop), image chat (streamed answer), details. Gradio, as the
official Janus demos. Every request goes to one backend (backends.py); bad input is a message in the page."""
from __future__ import annotations

import math
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass

import gradio as gr  # this module is the page: imported only where the `demo` extra is installed (cli.py checks)

from janus_edge.errors import USER_ERRORS, InputError

from .backends import T2IRequest, check_images
from .preview import PreviewStream

MAX_IMAGES = 4
PREVIEW_BUDGET = 0.01  # preview updates are skipped while they have cost more than 1% of the decode's wall time


@dataclass
class DemoConfig:
    bundle: str
    host: str = "127.0.0.1"
    port: int = 7860
    server: str | None = None  # gRPC URL of a running `janus-edge serve`; None: the bundle in process
    backend: str = "ort"
    threads: int | None = None
    rows: int = 8  # scheduler rows (in process): a t2i image with guidance takes 2, a chat 1
    step_delay_s: float = 0.0  # tests only: sleep between decode steps so a browser can watch a tiny model draw


def make_backend(cfg: DemoConfig):
    from .backends import LocalBackend, RemoteBackend

    if cfg.server:
        return RemoteBackend(cfg.bundle, cfg.server)
    return LocalBackend(cfg.bundle, cfg.backend, cfg.threads, cfg.rows, cfg.step_delay_s)


def _opt_int(v, what: str) -> int | None:
    """A form number (or text) -> int; empty -> None."""
    if isinstance(v, str):
        v = v.strip()
        if not v:
            return None
        try:
            v = float(v)
        except ValueError:
            raise InputError(f"{what} must be a whole number, got {v!r}") from None
    if v is None:
        return None
    if not isinstance(v, (int, float)) or not math.isfinite(v) or int(v) != v:
        raise InputError(f"{what} must be a whole number, got {v!r}")
    return int(v)


def parse_t2i(prompt, n, cfg_weight, temperature, top_k, top_p, seed) -> T2IRequest:
    """The form's values -> a request; anything out of range is an InputError with a readable message."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError("the prompt is empty: describe the image to draw")
    n = _opt_int(n, "the number of images")
    if n is None or not 1 <= n <= MAX_IMAGES:
        raise InputError(f"the number of images must be 1 to {MAX_IMAGES}, got {n}")
    if cfg_weight is None or not math.isfinite(cfg_weight) or cfg_weight < 1:
        raise InputError(f"the CFG weight must be >= 1 (1 = no guidance), got {cfg_weight}")
    if temperature is None or not math.isfinite(temperature) or temperature < 0:
        raise InputError(f"the temperature must be >= 0 (0 = greedy), got {temperature}")
    k = _opt_int(top_k, "top-k") or None  # 0: off
    if k is not None and k < 1:
        raise InputError(f"top-k must be >= 1 (0 or empty = off), got {k}")
    p = None if top_p in (None, "", 0) else float(top_p)
    if p is not None and not 0 < p <= 1:
        raise InputError(f"top-p must be in (0, 1] (0 or empty = off), got {p}")
    s = _opt_int(seed, "the seed")
    if s is not None and s < 0:
        raise InputError(f"the seed must be >= 0 (empty = random), got {s}")
    return T2IRequest(prompt.strip(), n, float(cfg_weight), float(temperature), k, p, s)


def _err(e: BaseException) -> str:
    return f'<div class="je-error" role="alert">error: {_esc(str(e))}</div>'


def _esc(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _progress(k: int, T: int, n: int, t0: float, now: float) -> str:
    rate = (k - 1) / (now - t0) if k > 1 and now > t0 else 0.0
    left = f"{(T - k) / rate:.1f} s left" if rate else "…"
    pct = 100 * k // T
    return (f'<div class="je-progress"><progress max="{T}" value="{k}"></progress> '
            f'tokens {k * n}/{T * n} ({pct}%) · {rate * n:.1f} tokens/s · {left}</div>')


class DemoApp:
    """The handlers, bound to one backend; `blocks()` lays out the page."""

    def __init__(self, backend, log=print):
        self.backend, self.log = backend, log
        self.jobs: dict[str, object] = {}  # session -> its running t2i job (Stop cancels it)
        self.last: dict = {}  # the last finished t2i request's figures (details panel, tests)
        self.outdir = tempfile.mkdtemp(prefix="janus-edge-demo-")

    # ---- text to image ----------------------------------------------------------------------------------------
    def generate(self, prompt, n, cfg_weight, temperature, top_k, top_p, seed, request: gr.Request = None):
        """Yields (status, preview, gallery, files) as the tokens arrive; `request` (Gradio's) names the session."""
        keep = gr.skip()
        try:
            job = self.backend.t2i(parse_t2i(prompt, n, cfg_weight, temperature, top_k, top_p, seed))
        except USER_ERRORS as e:
            yield _err(e), "", None, None
            return
        sid = getattr(request, "session_hash", None) or "?"
        self.jobs[sid] = job
        T = self.backend.dims.num_image_tokens
        stream = PreviewStream(self.backend.table, T, PREVIEW_BUDGET)
        t0 = time.perf_counter()
        yield _progress(0, T, job.n, t0, t0), "", None, None
        try:
            for tok in job.updates():
                html = stream.add(tok)
                if html is not None:
                    yield _progress(len(stream.marks), T, job.n, stream.marks[0], stream.marks[-1]), html, keep, keep
            images = job.images()
        except USER_ERRORS as e:
            from janus_edge.runtime.scheduler import Cancelled

            msg = "stopped: the request was cancelled and its rows freed" if isinstance(e, Cancelled) else None
            yield (f'<div class="je-stopped">{msg}</div>' if msg else _err(e)), keep, None, None
            return
        except Exception as e:  # noqa: BLE001 - e.g. the server is gone: a message, the page goes on
            yield _err(e), keep, None, None
            return
        finally:
            job.cancel()
            self.jobs.pop(sid, None)
        paths = self._save(images)
        self.last = stream.figures()
        self.log(f"demo: t2i {self.last['summary']}")
        yield f'<div class="je-done">done: {len(images)} image(s) · {self.last["summary"]}</div>', keep, paths, paths

    def close(self) -> None:
        """Ends the backend (its scheduler) and removes the images written for download."""
        import shutil

        self.backend.close()
        shutil.rmtree(self.outdir, ignore_errors=True)

    def _save(self, images) -> list[str]:
        d = tempfile.mkdtemp(dir=self.outdir)
        paths = [os.path.join(d, f"janus-edge-{i}.png") for i in range(len(images))]
        for im, p in zip(images, paths):
            im.save(p)
        return paths

    def stop(self, request: gr.Request = None):
        job = self.jobs.get(getattr(request, "session_hash", None) or "?")
        if job is not None:
            job.cancel()

    # ---- image chat -------------------------------------------------------------------------------------------
    def ask(self, files, question, max_new_tokens):
        """Yields (answer so far, status)."""
        paths = [f if isinstance(f, str) else getattr(f, "name", f) for f in (files or [])]
        answer = ""
        try:
            if not isinstance(question, str) or not question.strip():
                raise InputError("the question is empty")
            m = _opt_int(max_new_tokens, "max new tokens")
            if m is None or m < 1:
                raise InputError(f"max new tokens must be >= 1, got {max_new_tokens}")
            check_images(paths)
            yield "", '<div class="je-progress">answering…</div>'
            for piece in self.backend.chat(question.strip(), paths, m):
                answer += piece
                yield answer, '<div class="je-progress">answering…</div>'
        except Exception as e:  # noqa: BLE001 - user errors and a gone server alike: a message in the page
            yield answer, _err(e)
            return
        yield answer, f'<div class="je-done">done: {len(answer)} characters</div>'

    # ---- details ----------------------------------------------------------------------------------------------
    def details(self) -> str:
        d = self.backend.details()
        rows = [f"**backend**: {d['backend']}", "", "| graph | precision |", "|---|---|"]
        rows += [f"| {k} | {v} |" for k, v in d["precision"].items()]
        rows.append("")
        if self.last.get("steps"):
            rows.append(f"**last image**: {self.last['summary']}")
        rows.append(f"**peak memory (RSS)**: {d['peak_rss_mb']:.0f} MB" if d.get("peak_rss_mb") else
                    "**peak memory**: on the server")
        rows.append("**scheduler**: " + ", ".join(f"{k} {v}" for k, v in d["scheduler"].items()))
        return "\n".join(rows)

    def blocks(self):
        with gr.Blocks(title="janus-edge", analytics_enabled=False) as ui:
            gr.Markdown("## janus-edge: text to image and image chat")
            with gr.Tab("Text to image"):
                prompt = gr.Textbox(label="Prompt", lines=2, elem_id="t2i-prompt")
                with gr.Row():
                    n = gr.Slider(1, MAX_IMAGES, value=1, step=1, label="Images", elem_id="t2i-n")
                    cfg = gr.Slider(1, 10, value=5, step=0.5, label="CFG weight", elem_id="t2i-cfg")
                    temp = gr.Slider(0, 2, value=1, step=0.05, label="Temperature", elem_id="t2i-temp")
                with gr.Row():
                    top_k = gr.Number(None, label="Top-k (0: off)", precision=0, elem_id="t2i-topk")
                    top_p = gr.Number(None, label="Top-p (0: off)", step=0.05, elem_id="t2i-topp")
                    seed = gr.Textbox("", label="Seed (empty: random)", elem_id="t2i-seed")
                with gr.Row():
                    go = gr.Button("Generate", variant="primary", elem_id="t2i-go")
                    stop = gr.Button("Stop", variant="stop", elem_id="t2i-stop")
                status = gr.HTML(elem_id="t2i-status")
                with gr.Row():
                    preview = gr.HTML(elem_id="t2i-preview", label="Preview")
                    gallery = gr.Gallery(label="Images", columns=2, height="auto", elem_id="t2i-gallery",
                                         buttons=["download"], scale=2, object_fit="contain")
                files = gr.File(label="Download", file_count="multiple", elem_id="t2i-files")
            with gr.Tab("Image chat"):
                images = gr.File(label="Images", file_count="multiple", elem_id="chat-images")
                question = gr.Textbox(label="Question", elem_id="chat-question")
                max_new = gr.Number(128, label="Max new tokens", precision=0, elem_id="chat-max")
                ask = gr.Button("Ask", variant="primary", elem_id="chat-go")
                chat_status = gr.HTML(elem_id="chat-status")
                answer = gr.Textbox(label="Answer", lines=4, elem_id="chat-answer", interactive=False)
            with gr.Tab("Details"):
                info = gr.Markdown(elem_id="details")
                refresh = gr.Button("Refresh", elem_id="details-refresh")
            go.click(self.generate, [prompt, n, cfg, temp, top_k, top_p, seed], [status, preview, gallery, files],
                     concurrency_limit=None, show_progress="hidden").then(self.details, None, info)
            stop.click(self.stop, None, None, concurrency_limit=None, queue=False)
            ask.click(self.ask, [images, question, max_new], [answer, chat_status], concurrency_limit=None,
                      show_progress="hidden")
            refresh.click(self.details, None, info, concurrency_limit=None)
            ui.load(self.details, None, info)
        return ui


def launch(cfg: DemoConfig, block: bool = True):
    """Builds the backend and the page and serves it until Ctrl-C or SIGTERM (block=True); block=False returns
    (app, ui, url) with the server running on its threads (tests)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    app = DemoApp(make_backend(cfg))
    ui = app.blocks()
    ui.queue(default_concurrency_limit=None)
    try:
        _, url, _ = ui.launch(server_name=cfg.host, server_port=cfg.port, prevent_thread_lock=True, share=False,
                              ssr_mode=False, quiet=True, footer_links=[])
    except OSError as e:
        app.close()
        raise InputError(f"cannot listen on {cfg.host}:{cfg.port}: {e}") from None
    if not block:
        return app, ui, url
    print(f"janus-edge demo: serving {cfg.bundle} on {url} (Ctrl-C stops)", flush=True)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        ui.close()
        app.close()
    return None


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def warn_if_public(host: str) -> None:
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"note: listening on {host}: anyone who can reach this machine can use the model through the page "
              f"(no login, no rate limit)", file=sys.stderr)
