"""Calibration on real runs of the fp bundle: activation statistics of every weight MatMul's input.

How it is collected. The fp bundle runs through the ordinary runtime (`Pipeline`: text-to-image with both CFG rows,
chat with images, chat on text), on a backend that subclasses the runtime's ORT backend. For each graph being
calibrated, that backend opens, instead of the bundle's graph, an *instrumented* copy: the same ONNX graph with the
activation input of every weight MatMul / Gemm added as an extra graph output (onnx graph surgery, in memory). On an
observed call it runs the instrumented session on exactly the feeds the runtime bound (prefill, every image-token
decode step with its 2n CFG rows, every chat step), copies the contract outputs into the runtime's buffers and hands
the extra outputs to the statistics. The runtime itself is untouched and imports nothing of this.

Statistics per (graph, activation tensor): per-channel absmax and mean square over every row seen, the count, and a
reservoir of up to `max_samples` rows (for SmoothQuant / scale searches / AWQ / GPTQ Hessians).

Data: quant/data/calib_prompts.txt (70 text-to-image prompts, written by the team), calib_chat.txt (chat questions),
calib_text.txt (English prose, asked as a chat "summarize" question) and procedural chat images (PIL shapes and
gradients, `make_images`, seeded). The held-out evaluation texts (heldout_*.txt, HELDOUT_DOMAINS) are never used here.
"""
from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import dataclass, field

import numpy as np

DATA_DIR = os.path.join(os.path.dirname(__file__), "data")
PROMPTS_FILE = os.path.join(DATA_DIR, "calib_prompts.txt")
CHAT_FILE = os.path.join(DATA_DIR, "calib_chat.txt")
CALIB_TEXT_FILE = os.path.join(DATA_DIR, "calib_text.txt")
HELDOUT_FILE = os.path.join(DATA_DIR, "heldout_en.txt")
# held-out evaluation texts by domain (quant/data/README.md; all written by the team, none used for calibration)
HELDOUT_DOMAINS = {"prose": HELDOUT_FILE, "tech": os.path.join(DATA_DIR, "heldout_tech.txt"),
                   "dialogue": os.path.join(DATA_DIR, "heldout_dialogue.txt")}
CALIB_GRAPHS = ("lm", "gen_head", "lm_head", "vision", "gen_embed")


class CalibInputError(ValueError):
    """Bad calibration input (empty prompts file, unreadable image dir): the user's error."""


# ---- statistics -----------------------------------------------------------------------------------------------
@dataclass
class TensorStats:
    absmax_ch: np.ndarray  # [K] max |x| per input channel, over every row seen
    sumsq_ch: np.ndarray  # [K] sum of x^2 per channel (float64)
    count: int = 0  # rows seen
    samples: np.ndarray | None = None  # [m, K] float32 reservoir of rows
    seen_for_reservoir: int = 0

    @property
    def absmax(self) -> float:
        return float(self.absmax_ch.max())

    @property
    def mean_sq(self) -> np.ndarray:
        return (self.sumsq_ch / max(self.count, 1)).astype(np.float32)


def _update(st: TensorStats | None, x: np.ndarray, max_samples: int, rng: np.random.Generator) -> TensorStats:
    x = np.asarray(x, dtype=np.float32).reshape(-1, x.shape[-1])
    if st is None:
        st = TensorStats(np.zeros(x.shape[1], np.float32), np.zeros(x.shape[1], np.float64))
        st.samples = np.zeros((0, x.shape[1]), np.float32)
    np.maximum(st.absmax_ch, np.abs(x).max(0), out=st.absmax_ch)
    st.sumsq_ch += np.einsum("ij,ij->j", x, x, dtype=np.float64)
    st.count += x.shape[0]
    # reservoir sampling of rows (Algorithm R; a long prefill offers 64 random rows of its own)
    rows = x if x.shape[0] <= 64 else x[rng.choice(x.shape[0], 64, replace=False)]
    free = max_samples - st.samples.shape[0]
    if free > 0:
        st.samples = np.concatenate([st.samples, rows[:free]])
        st.seen_for_reservoir += min(free, len(rows))
        rows = rows[free:]
    for row in rows:
        st.seen_for_reservoir += 1
        j = rng.integers(0, st.seen_for_reservoir)
        if j < max_samples:
            st.samples[j] = row
    return st


@dataclass
class CalibData:
    """Per graph, per MatMul activation input name -> TensorStats; `meta` says what was run."""

    graphs: dict[str, dict[str, TensorStats]] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    kv_absmax: dict[str, np.ndarray] = field(default_factory=dict)  # lm new_key.i/new_value.i -> [kv_heads, head_dim]

    def stats(self, graph: str, act: str) -> TensorStats | None:
        return self.graphs.get(graph, {}).get(act)

    def matmul_stats(self, graph: str, act: str) -> dict | None:
        """What the weight quantizers read: {'mean_sq': [K], 'absmax': [K], 'hessian': [K, K] (from the samples)}."""
        st = self.stats(graph, act)
        if st is None:
            return None
        s = st.samples
        hess = (s.T.astype(np.float64) @ s / max(len(s), 1)).astype(np.float32) if s is not None and len(s) else None
        return {"mean_sq": st.mean_sq, "absmax": st.absmax_ch, "hessian": hess, "samples": s}

    def save(self, path: str) -> None:
        arrays = {}
        for g, per in self.graphs.items():
            for i, (name, st) in enumerate(per.items()):
                arrays[f"{g}|{i}|name"] = np.array(name)
                arrays[f"{g}|{i}|absmax"] = st.absmax_ch
                arrays[f"{g}|{i}|sumsq"] = st.sumsq_ch
                arrays[f"{g}|{i}|count"] = np.array(st.count)
                arrays[f"{g}|{i}|samples"] = st.samples
        import json

        arrays.update({f"kv|{n}": a for n, a in self.kv_absmax.items()})
        arrays["meta"] = np.array(json.dumps(self.meta))
        np.savez(path, **arrays)

    @staticmethod
    def load(path: str) -> "CalibData":
        import json

        z = np.load(path, allow_pickle=False)
        cd = CalibData(meta=json.loads(str(z["meta"])))
        cd.kv_absmax = {k[3:]: z[k] for k in z.files if k.startswith("kv|")}
        for k in z.files:
            if k.endswith("|name"):
                g, i, _ = k.split("|")
                p = f"{g}|{i}|"
                cd.graphs.setdefault(g, {})[str(z[k])] = TensorStats(
                    z[p + "absmax"], z[p + "sumsq"], int(z[p + "count"]), z[p + "samples"])
        return cd


# ---- the instrumented graphs -----------------------------------------------------------------------------------
def weight_matmul_inputs(model) -> dict[str, list[str]]:
    """activation tensor name -> names of the MatMul/Gemm nodes that multiply it by a 2-D constant weight."""
    inits = {t.name: t for t in model.graph.initializer}
    out: dict[str, list[str]] = {}
    for n in model.graph.node:
        if n.op_type in ("MatMul", "Gemm") and len(n.input) >= 2 and n.input[1] in inits \
                and len(inits[n.input[1]].dims) == 2:
            out.setdefault(n.input[0], []).append(n.name)
    return out


def instrument(path: str) -> tuple[str, list[str]]:
    """Write an instrumented copy of the graph at `path` (activation inputs as extra outputs) to a temp dir whose
    external data files are symlinks to the originals; returns (its path, the extra output names)."""
    import tempfile

    import onnx

    model = onnx.load(path, load_external_data=False)
    acts = [a for a in weight_matmul_inputs(model) if a not in {o.name for o in model.graph.output}]
    have_input = {i.name for i in model.graph.input}
    acts = [a for a in acts if a not in have_input]  # a graph input (lm_head's hidden) is in the feeds already
    for a in acts:
        model.graph.output.append(onnx.helper.make_empty_tensor_value_info(a))
    d = tempfile.mkdtemp(prefix="je-calib-")
    src = os.path.dirname(os.path.abspath(path))
    for f in os.listdir(src):
        if f.endswith(".data") or f.startswith(os.path.basename(path) + "."):
            try:  # a hard link: ORT >= 1.32 refuses external data reached through a symlink out of the model dir
                os.link(os.path.join(src, f), os.path.join(d, f))
            except OSError:  # another filesystem
                os.symlink(os.path.join(src, f), os.path.join(d, f))
    out = os.path.join(d, os.path.basename(path))
    onnx.save(model, out)
    return out, acts


def _graph_inputs_as_acts(path: str) -> list[str]:
    import onnx

    model = onnx.load(path, load_external_data=False)
    ins = {i.name for i in model.graph.input}
    return [a for a in weight_matmul_inputs(model) if a in ins]


class Collector:
    """Accumulates statistics; decides which calls are observed (every prefill, every `decode_stride`-th step)."""

    def __init__(self, max_samples: int = 512, decode_stride: int = 1, seed: int = 0):
        self.data = CalibData()
        self.max_samples, self.decode_stride = max_samples, decode_stride
        self.rng = np.random.default_rng(seed)
        self.calls: dict[str, int] = {}
        self.observed: dict[str, int] = {}
        self.enabled = True

    def want(self, graph: str, seq: int) -> bool:
        k = self.calls.get(graph, 0)
        self.calls[graph] = k + 1
        return self.enabled and (seq > 1 or k % self.decode_stride == 0)

    def add_kv(self, outputs: dict[str, np.ndarray]) -> None:
        """absmax per KV head and channel of the lm's new K/V outputs [rows, kv_heads, seq, head_dim] (int8 cache)."""
        for name, x in outputs.items():
            if name.startswith(("new_key.", "new_value.")):
                m = np.abs(np.asarray(x, np.float32)).max(axis=(0, 2))
                old = self.data.kv_absmax.get(name)
                self.data.kv_absmax[name] = m if old is None else np.maximum(old, m)

    def add(self, graph: str, acts: dict[str, np.ndarray]) -> None:
        self.observed[graph] = self.observed.get(graph, 0) + 1
        per = self.data.graphs.setdefault(graph, {})
        for name, x in acts.items():
            per[name] = _update(per.get(name), x, self.max_samples, self.rng)


def recording_backend(collector: Collector, graphs=CALIB_GRAPHS, threads: int | None = None,
                      session_config: dict | None = None):
    """An OrtBackend whose graphs in `graphs` feed `collector` (see the module doc)."""
    from janus_edge.runtime.ort_backend import OrtBackend, OrtGraph

    class RecordingGraph(OrtGraph):
        def __init__(self, session, spec, inst_session, extra, direct):
            super().__init__(session, spec)
            self.inst, self.extra, self.direct = inst_session, extra, direct

        def _observe(self, feeds: dict) -> dict | None:
            seq = feeds["inputs_embeds"].shape[1] if "inputs_embeds" in feeds else 1  # prefill: always observed
            if not collector.want(self.spec.name, seq):
                return None
            names = self._outputs + self.extra
            res = dict(zip(names, self.inst.run(names, feeds)))
            acts = {a: res[a] for a in self.extra}
            acts.update({a: feeds[a] for a in self.direct})
            collector.add(self.spec.name, acts)
            if self.spec.name == "lm":
                collector.add_kv({k: res[k] for k in self._outputs})
            return {k: res[k] for k in self._outputs}

        def run(self, feeds):
            out = self._observe(feeds)
            if out is None:
                return super().run(feeds)
            self.calls += 1
            return out

        def bind(self, inputs, outputs):
            plain = super().bind(inputs, outputs)

            def run() -> None:
                out = self._observe({t.name: inputs[t.name] for t in self.spec.inputs})
                if out is None:
                    plain()
                    return
                self.calls += 1
                for k, v in out.items():
                    outputs[k][...] = v

            run.keepalive = plain.keepalive
            return run

    class RecordingBackend(OrtBackend):
        def options(self, **kw):
            so = super().options(**kw)
            for k, v in (session_config or {}).items():
                so.add_session_config_entry(k, v)
            return so

        def open(self, path, spec, session_config=None, precision=None):
            """A calibrated graph is opened once, as its instrumented copy, which also serves the calls that are not
            observed: one copy of its weights in memory, not two. Its session options are the runtime's for that graph
            (`graph_options`: fp16 graphs get `low_memory_fp16`, the manifest's session config)."""
            if spec.name not in graphs:
                return super().open(path, spec, session_config=session_config, precision=precision)
            so = self.graph_options(spec, session_config, precision)
            ipath, extra = instrument(path)
            try:  # the session holds what it needs once created: the temp copy (links, graph) goes at once
                inst = self.ort.InferenceSession(ipath, so, providers=["CPUExecutionProvider"])
            finally:
                shutil.rmtree(os.path.dirname(ipath), ignore_errors=True)
            return RecordingGraph(inst, spec, inst, extra, _graph_inputs_as_acts(path))

    return RecordingBackend(threads=threads)


# ---- inputs -------------------------------------------------------------------------------------------------
def read_lines(path: str, what: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as fh:
            lines = [ln.strip() for ln in fh if ln.strip() and not ln.lstrip().startswith("#")]
    except (OSError, UnicodeDecodeError) as e:
        raise CalibInputError(f"cannot read {what} file {path}: {e}") from None
    if not lines:
        raise CalibInputError(f"{what} file {path} holds no lines")
    return lines


def read_text(path: str) -> str:
    with open(path, encoding="utf-8") as fh:
        return fh.read()


def make_images(n: int, size: int = 256, seed: int = 0) -> list:
    """Procedural chat images (gradients, ellipses, rectangles, lines in random colours), seeded."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    out = []
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for _ in range(n):
        c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        t = (x * rng.uniform(-1, 1) + y * rng.uniform(-1, 1)) % 1.0
        img = Image.fromarray((c0 * (1 - t[..., None]) + c1 * t[..., None]).astype(np.uint8))
        d = ImageDraw.Draw(img)
        for _ in range(rng.integers(2, 7)):
            a, b = sorted(rng.integers(0, size, 2)), sorted(rng.integers(0, size, 2))
            box = (int(a[0]), int(b[0]), int(a[1]) + 4, int(b[1]) + 4)
            col = tuple(int(v) for v in rng.integers(0, 256, 3))
            kind = rng.integers(0, 3)
            if kind == 0:
                d.ellipse(box, fill=col)
            elif kind == 1:
                d.rectangle(box, fill=col)
            else:
                d.line(box, fill=col, width=int(rng.integers(2, 10)))
        out.append(img)
    return out


def read_images(image_dir: str) -> list:
    from PIL import Image

    try:
        names = sorted(f for f in os.listdir(image_dir) if f.lower().endswith((".png", ".jpg", ".jpeg", ".bmp", ".webp")))
    except OSError as e:
        raise CalibInputError(f"cannot read calibration image dir {image_dir}: {e}") from None
    if not names:
        raise CalibInputError(f"calibration image dir {image_dir} holds no images (.png/.jpg/.jpeg/.bmp/.webp)")
    imgs = []
    for f in names:
        try:
            with Image.open(os.path.join(image_dir, f)) as im:
                imgs.append(im.convert("RGB"))
        except OSError as e:
            raise CalibInputError(f"cannot read calibration image {f}: {e}") from None
    return imgs


# ---- the runs -------------------------------------------------------------------------------------------------
@dataclass
class CalibConfig:
    prompts_file: str = PROMPTS_FILE
    image_dir: str | None = None  # None: procedural images
    chat_file: str = CHAT_FILE
    text_file: str | None = CALIB_TEXT_FILE
    # Defaults = the calibration behind benchmarks/results/smollm2_quant.md (255 s for the trained LM on a shared
    # 2-core VM); the prompts file holds 70, raise n_prompts / image_steps for more.
    n_prompts: int = 16  # text-to-image prompts run (each: prefill + image-token steps, 2 CFG rows)
    image_steps: int = 32  # image-token decode steps run per prompt (all observed when decode_stride = 1)
    n_chats: int = 8  # chat runs with one image each
    chat_tokens: int = 24  # greedy chat tokens per chat run
    decode_stride: int = 1
    max_samples: int = 512
    graphs: tuple = CALIB_GRAPHS
    seed: int = 0
    threads: int | None = None
    progress: bool = True
    cache: str | None = None  # a .npz: loaded when it exists (same bundle), else written after collecting


class _Stop(Exception):
    pass


def collect(bundle_dir: str, cfg: CalibConfig | None = None) -> CalibData:
    """Run the fp bundle on the calibration inputs and return the statistics (see the module doc)."""
    from janus_edge.runtime.bundle import Bundle
    from janus_edge.runtime.pipeline import Pipeline

    cfg = cfg or CalibConfig()
    if cfg.cache and os.path.exists(cfg.cache):
        data = CalibData.load(cfg.cache)
        # re-used only when it covers what is asked: the same bundle, every graph, and (lm) the KV-cache ranges
        covers = set(cfg.graphs) <= set(data.graphs) and ("lm" not in cfg.graphs or data.kv_absmax)
        if data.meta.get("bundle") == os.path.abspath(bundle_dir) and covers:
            return data
    prompts = read_lines(cfg.prompts_file, "calibration prompts")
    questions = read_lines(cfg.chat_file, "calibration chat")
    images = read_images(cfg.image_dir) if cfg.image_dir else make_images(max(cfg.n_chats, 1), seed=cfg.seed)
    col = Collector(cfg.max_samples, cfg.decode_stride, cfg.seed)
    pipe = Pipeline(Bundle(bundle_dir, recording_backend(col, cfg.graphs, cfg.threads)))
    t0 = time.time()
    steps = min(cfg.image_steps, pipe.dims.num_image_tokens)

    def stop_after(i: int) -> None:
        if i + 1 >= steps:
            raise _Stop

    n_t2i = min(cfg.n_prompts, len(prompts))
    for k, p in enumerate(prompts[:n_t2i]):
        try:  # greedy-free sampling (temperature 1, seeded): the token mix of real generation
            pipe.generate_image(p, n=1, cfg_weight=5.0, temperature=1.0, seed=cfg.seed + k, decode=False,
                                on_step=stop_after)
        except _Stop:
            pass
        _progress(cfg, f"t2i {k + 1}/{n_t2i}")
    n_chat = 0
    for k in range(cfg.n_chats):
        q = questions[k % len(questions)]
        for _ in pipe.chat_token_ids(q, images=[images[k % len(images)]], max_new_tokens=cfg.chat_tokens):
            pass
        n_chat += 1
        _progress(cfg, f"chat {k + 1}/{cfg.n_chats}")
    if cfg.text_file:
        for para in [p for p in read_text(cfg.text_file).split("\n\n") if p.strip()]:
            for _ in pipe.chat_token_ids("Summarize this text in one sentence:\n" + para.strip(),
                                         max_new_tokens=cfg.chat_tokens):
                pass
    col.data.meta = {"bundle": os.path.abspath(bundle_dir), "t2i_prompts": n_t2i, "image_steps_per_prompt": steps,
                     "cfg_rows": 2, "chat_runs_with_image": n_chat, "chat_tokens": cfg.chat_tokens,
                     "images": cfg.image_dir or "procedural (quant.calib.make_images)",
                     "text_file": cfg.text_file and os.path.basename(cfg.text_file),
                     "calls": dict(col.calls), "observed_calls": dict(col.observed),
                     "seconds": round(time.time() - t0, 1)}
    if cfg.cache:
        col.data.save(cfg.cache)
    return col.data


def _progress(cfg: CalibConfig, msg: str) -> None:
    if cfg.progress:
        print(f"[calib] {msg}", file=sys.stderr, flush=True)
