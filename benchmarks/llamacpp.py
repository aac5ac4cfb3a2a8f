"""janus-edge next to llama.cpp on the same LM weights, in one run (Pro-1B: fp32/int8/int4 vs F32/Q8_0/Q4_0).

    python -m janus_edge.benchmarks.gguf_convert CKPT DIR/text.gguf --head text --quantize Q8_0,Q4_0   # once
    python -m janus_edge.benchmarks.gguf_convert CKPT DIR/image.gguf --head image --quantize Q8_0,Q4_0
    python -m janus_edge.benchmarks.llamacpp --bundle fp32=FP32 --bundle int8=INT8 --bundle int4=INT4 \
        --gguf-dir DIR --steps 32 --threads 2 --json benchmarks/results/pro1b_vs_llamacpp_cpu2.json
    # the one-run table of docs/cpu-kernels.md: + int4 with ORT's kernels, 4 images, transformers
    ... --bundle int4-ort=INT4 --phases t2i,chat,t2i8 --checkpoint CKPT

One process, in this order: the bandwidth probe (`bandwidth.py`) -> per precision (fp32/F32, int8/Q8_0,
int4/Q4_0): our t2i step and our chat step (the `bench` code: `ours.measure_t2i` / `ours.measure_chat` on a
`Pipeline`, BenchConfig's defaults), then llama.cpp's decode step in a child process (so its OpenMP threads and
mmapped weights are gone before the next phase) -> a second probe -> floors from the best probe run.

llama.cpp's step (llama-cpp-python's low-level API = llama.h): one `llama_decode` of one token per sequence, the
logits of every sequence read back and argmax'd (the next token fed back), timed around all of it; prefill of a
prompt of random ids of the same length as ours first; the first `warmup` steps of every run discarded; p50 over
the rest. Rows:
- `t2i` (two sequences in one decode call = the two CFG rows): the `image`-head GGUF (token_embd = aligned image
  code embeddings, output = gen_head's vision_head; see gguf_convert), prompt length = our t2i prompt's;
- `chat` (one sequence): the `text`-head GGUF (output = lm_head over the text vocab), prompt length = our chat
  prompt's (image tokens included);
- `t2i_text_head` (two sequences, text head, short prompt): how the issue's reference numbers were taken.
llama.cpp's defaults otherwise (F16 KV cache, flash attention auto, n_ubatch 512, no unified KV), `threads`
for both n_threads and n_threads_batch. Without llama-cpp-python the llama.cpp rows are skipped with the reason.
llama-cpp-python is not a janus-edge dependency: `pip install --no-deps llama-cpp-python diskcache` (builds
llama.cpp from the sdist with CMake for this CPU).
"""
from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from unittest import mock

import numpy as np

from janus_edge.errors import InputError

from .common import PeakRSS, environment, ms, process_peak_rss_mb, step_stats

PAIRS = (("fp32", "F32"), ("int8", "Q8_0"), ("int4", "Q4_0"))
# llama.cpp phases: name -> (GGUF head, sequences, whose prompt length)
PHASES = {"t2i": ("image", 2, "t2i"), "chat": ("text", 1, "chat"), "t2i_text_head": ("text", 2, "t2i"),
          "t2i8": ("image", 8, "t2i")}  # t2i8: 4 images = 8 rows (our side: t2i with n=4)
# `--bundle int4-ort=DIR`: an int4 bundle with ORT's own kernels for every weight (JANUS_EDGE_CPU_KERNELS=0), beside
# `int4=DIR` run with libjanus_edge_cpu's GEMM (the default where it is built); llama.cpp runs once per precision.
VARIANTS = {"ort": {"JANUS_EDGE_CPU_KERNELS": "0"}}
GGML_TYPE_SIZES = {1: 2, 0: 4}  # KV cache type -> bytes per value (F16, F32)


def missing() -> str | None:
    """Why llama.cpp rows cannot run here, or None."""
    if importlib.util.find_spec("llama_cpp") is None:
        return ("llama-cpp-python is not installed (optional, not a janus-edge dependency: "
                "pip install --no-deps llama-cpp-python diskcache)")
    try:
        import llama_cpp  # noqa: F401
    except Exception as e:  # noqa: BLE001 - a broken build (missing shared lib, ...) is a reason too
        return f"llama_cpp does not import: {str(e).splitlines()[0][:200]}"
    return None


def gguf_path(gguf_dir: str, head: str, qtype: str) -> str:
    return os.path.join(gguf_dir, f"{head}.gguf" if qtype == "F32" else f"{head}-{qtype}.gguf")


_LOG_CB = []  # the ctypes log callback llama.cpp holds: alive as long as the module (a freed one segfaults)


def quiet_logs() -> None:
    """Silence llama.cpp's stderr logging for this process (model loading prints hundreds of lines)."""
    import llama_cpp as L

    if not _LOG_CB:
        _LOG_CB.append(L.llama_log_callback(lambda level, text, user: None))
        L.llama_log_set(_LOG_CB[0], None)


class LlamaCpp:
    """One llama.cpp model + context through llama-cpp-python's ctypes binding of llama.h."""

    def __init__(self, path: str, *, threads: int, n_ctx: int, n_seq: int, n_batch: int = 2048,
                 kv_type: int | None = None):
        import llama_cpp as L

        self.L = L
        L.llama_backend_init()
        quiet_logs()
        mp = L.llama_model_default_params()
        mp.n_gpu_layers = 0
        self.model = L.llama_model_load_from_file(path.encode(), mp)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        cp = L.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch = n_ctx, n_batch, min(512, n_batch)
        cp.n_seq_max, cp.n_threads, cp.n_threads_batch = n_seq, threads, threads
        if kv_type is not None:
            cp.type_k = cp.type_v = kv_type
        self.ctx = L.llama_init_from_model(self.model, cp)
        if not self.ctx:
            L.llama_model_free(self.model)
            raise RuntimeError(f"llama.cpp could not create a context for {path}")
        self.params = {"n_ctx": cp.n_ctx, "n_batch": cp.n_batch, "n_ubatch": cp.n_ubatch, "n_seq_max": cp.n_seq_max,
                       "n_threads": cp.n_threads, "type_k": cp.type_k, "type_v": cp.type_v,
                       "flash_attn_type": cp.flash_attn_type, "kv_unified": bool(cp.kv_unified)}
        self.n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(self.model))
        self.n_batch = n_batch
        self.batch = L.llama_batch_init(n_batch, 0, n_seq)

    def clear(self) -> None:
        self.L.llama_memory_clear(self.L.llama_get_memory(self.ctx), True)

    def decode(self, seqs: list[list[int]], start: int, all_logits: bool = False) -> np.ndarray:
        """Feed seqs[s] to sequence s at positions start.. (one call); -> logits [outputs, vocab] (the last token
        of each sequence, or every token with all_logits)."""
        b, n = self.batch, 0
        for s, toks in enumerate(seqs):
            for j, t in enumerate(toks):
                b.token[n], b.pos[n], b.n_seq_id[n] = int(t), start + j, 1
                b.seq_id[n][0] = s
                b.logits[n] = 1 if (all_logits or j == len(toks) - 1) else 0
                n += 1
        if n > self.n_batch:
            raise ValueError(f"{n} tokens exceed n_batch {self.n_batch}")
        b.n_tokens = n
        rc = self.L.llama_decode(self.ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")
        outs = [i for i in range(n) if b.logits[i]]
        return np.stack([np.ctypeslib.as_array(self.L.llama_get_logits_ith(self.ctx, i), shape=(self.n_vocab,))
                         for i in outs])

    def close(self) -> None:
        self.L.llama_batch_free(self.batch)
        self.L.llama_free(self.ctx)
        self.L.llama_model_free(self.model)


def _kv_item(params: dict) -> int:
    return GGML_TYPE_SIZES.get(params["type_k"], 2)


def measure_decode(path: str, *, n_seq: int, prompt_len: int, steps: int, runs: int = 1, warmup: int = 2,
                   threads: int = 2, seed: int = 0) -> dict:
    """llama.cpp's decode step on `path`: n_seq sequences of a prompt_len-token prompt, warmup + steps steps."""
    from .gguf_convert import tensor_types

    import llama_cpp

    t = time.perf_counter()
    n_ctx = n_seq * (-(-(prompt_len + warmup + steps + 8) // 256) * 256)
    with PeakRSS() as mem:
        lc = LlamaCpp(path, threads=threads, n_ctx=n_ctx, n_seq=n_seq, n_batch=max(512, n_seq * prompt_len))
        load_s = time.perf_counter() - t
        rng = np.random.default_rng(seed)
        step_s, prefill_s = [], []
        try:
            for r in range(runs):
                lc.clear()
                prompt = rng.integers(0, lc.n_vocab, size=prompt_len).tolist()
                t = time.perf_counter()
                logits = lc.decode([prompt] * n_seq, 0)  # both CFG rows prefilled in one call
                prefill_s.append(time.perf_counter() - t)
                tok = int(np.argmax(logits[0]))
                run_s = []
                for k in range(warmup + steps):
                    t = time.perf_counter()
                    logits = lc.decode([[tok]] * n_seq, prompt_len + k)
                    tok = int(np.argmax(logits[0]))  # the same token to every row, as CFG does
                    run_s.append(time.perf_counter() - t)
                step_s.extend(run_s[warmup:])
            params = lc.params
        finally:
            lc.close()
    info = tensor_types(path)
    rd = _read_shape(path)
    kv_pos = 2 * rd["layers"] * n_seq * rd["kv_heads"] * rd["head_dim"] * _kv_item(params)
    k = np.arange(warmup + 1, warmup + steps + 1)
    kv = float(kv_pos * (prompt_len + k).mean())
    return {"impl": "llama.cpp", "gguf": path, "llama_cpp_python": llama_cpp.__version__, "n_seq": n_seq,
            "rows": n_seq, "prompt_len": prompt_len, "runs": runs, "warmup_steps": warmup, "threads": threads,
            "context_params": params, "load_s": round(load_s, 2), "prefill_ms": ms(np.median(prefill_s)),
            **step_stats(step_s), "step_ms": [ms(s) for s in step_s], "peak_rss_mb": mem.peak_mb,
            "other_processes_cores": mem.others_cores, "tensor_types": info["types"],
            "output_type": info["output_type"], "file_bytes": info["file_bytes"],
            "weight_bytes_per_step": info["weight_bytes_per_step"], "kv_bytes_per_step": int(kv),
            "kv_bytes_per_step_full_cache": int(kv)}  # llama.cpp attends over the filled cells only


def _read_shape(path: str) -> dict:
    from gguf import GGUFReader

    r = GGUFReader(path)

    def f(key):
        return int(r.fields[key].contents())

    heads = f("llama.attention.head_count")
    return {"layers": f("llama.block_count"), "heads": heads, "kv_heads": f("llama.attention.head_count_kv"),
            "head_dim": f("llama.embedding_length") // heads}


def _child(path: str, **kw) -> dict:
    """measure_decode in a fresh process: its threads and its mmap are gone before our next phase."""
    cmd = [sys.executable, "-m", "janus_edge.benchmarks.llamacpp", "--worker", json.dumps({"path": path, **kw})]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"llama.cpp worker failed ({p.returncode}): {p.stderr.strip()[-800:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


@dataclass
class SideConfig:
    bundles: dict  # precision (fp32/int8/int4) -> bundle dir
    gguf_dir: str | None
    json_out: str
    steps: int = 32
    runs: int = 1
    threads: int = 2
    warmup_steps: int = 2
    bandwidth_mb: int | None = None
    phases: list = field(default_factory=lambda: ["t2i", "chat", "t2i_text_head"])
    checkpoint: str | None = None  # transformers' rows (fp32 t2i and chat) on this checkpoint, after ours


def _base(label: str) -> str:
    return label.split("-")[0]


def _ours(cfg: SideConfig, label: str, task: str, bw: float) -> dict:
    """Our step, timed by the `bench` code (ours.measure_t2i / measure_chat, defaults of BenchConfig); t2i8 = t2i
    with 4 images; a variant label (int4-ort) runs with its environment switches set."""
    with mock.patch.dict(os.environ, VARIANTS.get(label.partition("-")[2], {})):
        return _ours_in(cfg, cfg.bundles[label], task, bw)


def _ours_in(cfg: SideConfig, bundle: str, task: str, bw: float) -> dict:
    from janus_edge.runtime.pipeline import Pipeline

    from . import ours
    from .runner import BenchConfig

    d = BenchConfig(bundles=[bundle])
    pipe = Pipeline.from_bundle(bundle, backend="ort", threads=cfg.threads)
    pipe.bundle.backend.kernel_census = True
    try:
        if task in ("t2i", "t2i8"):
            res, _ = ours.measure_t2i(pipe, prompt=ours.DEFAULT_PROMPT, steps=cfg.steps, runs=cfg.runs,
                                      warmup_steps=cfg.warmup_steps, n=4 if task == "t2i8" else 1,
                                      cfg_weight=d.cfg_weight, temperature=d.temperature, seed=d.seed,
                                      bandwidth_gbps=bw)
        else:
            res = ours.measure_chat(pipe, question=ours.DEFAULT_QUESTION, steps=cfg.steps, runs=cfg.runs,
                                    warmup_steps=cfg.warmup_steps, default_tokens=d.chat_tokens, bandwidth_gbps=bw)
    finally:
        del pipe
        gc.collect()
    return res


def _log(msg: str) -> None:
    print(f"[llamacpp] {msg}", file=sys.stderr, flush=True)


def _validate(cfg: SideConfig) -> None:
    from janus_edge import contract as C

    if not cfg.bundles:
        raise InputError("no --bundle given")
    for prec, b in cfg.bundles.items():
        if _base(prec) not in dict(PAIRS) or prec.partition("-")[2] not in ("", *VARIANTS):
            raise InputError(f"unknown precision {prec!r}; use fp32=, int8=, int4=, int4-ort=")
        try:
            C.load_manifest(b)
        except C.ContractError as e:
            raise InputError(str(e)) from None
    unknown = [p for p in cfg.phases if p not in PHASES]
    if unknown:
        raise InputError(f"unknown phase {unknown[0]!r}; choose from {', '.join(PHASES)}")
    if cfg.gguf_dir and missing() is None:
        for prec, q in PAIRS:
            for ph in cfg.phases:
                p = gguf_path(cfg.gguf_dir, PHASES[ph][0], q)
                if any(_base(b) == prec for b in cfg.bundles) and not os.path.isfile(p):
                    raise InputError(f"missing {p} (make it with python -m janus_edge.benchmarks.gguf_convert)")
    if not os.path.isdir(os.path.dirname(os.path.abspath(cfg.json_out))):
        raise InputError(f"directory of --json does not exist: {cfg.json_out}")


def run(cfg: SideConfig) -> dict:
    from . import floor as F
    from .bandwidth import measure_bandwidth
    from .runner import BenchConfig, _bandwidth_mb, merge_bandwidth, refloor

    _validate(cfg)
    t0 = time.perf_counter()
    reason = missing() if cfg.gguf_dir else "no --gguf-dir given"
    env = environment(cfg.threads, "ort", {}, False)
    if reason is None:
        import llama_cpp

        env["versions"]["llama_cpp_python"] = llama_cpp.__version__
        env["llama_cpp_system_info"] = llama_cpp.llama_print_system_info().decode(errors="replace").strip()
    mb = _bandwidth_mb(BenchConfig(bundles=[], bandwidth_mb=cfg.bandwidth_mb))
    with PeakRSS() as probe:
        bw = measure_bandwidth(mb, cfg.threads)
    bw["other_processes_cores"] = probe.others_cores
    _log(f"bandwidth {bw['bandwidth_gbps']:.1f} GB/s")
    rows: list[dict] = []
    for prec, qtype in PAIRS:
        labels = [b for b in cfg.bundles if _base(b) == prec]
        if not labels:
            continue
        lens = {}
        for label in labels:
            for task in ["t2i", "chat"] + (["t2i8"] if "t2i8" in cfg.phases else []):
                r = _ours(cfg, label, task, bw["bandwidth_gbps"])
                lens[task] = r["prompt_len"]
                rows.append({"side": "janus-edge", "precision": label, "phase": task, **r})
                _log(f"janus-edge {label} {task}: p50 {r['decode_step_ms_p50']} ms")
        for ph in cfg.phases:
            head, n_seq, plen = PHASES[ph]
            row = {"side": "llama.cpp", "precision": qtype, "phase": ph, "head": head, "n_seq": n_seq}
            if reason is not None:
                rows.append({**row, "skipped": reason})
                continue
            r = _child(gguf_path(cfg.gguf_dir, head, qtype), n_seq=n_seq, prompt_len=lens[plen], steps=cfg.steps,
                       runs=cfg.runs, warmup=cfg.warmup_steps, threads=cfg.threads)
            r.update(F.floor(r["weight_bytes_per_step"], r["kv_bytes_per_step"], r["kv_bytes_per_step_full_cache"],
                             bw["bandwidth_gbps"], r["decode_step_ms_p50"]))
            rows.append({**row, **r})
            _log(f"llama.cpp {qtype} {ph}: p50 {r['decode_step_ms_p50']} ms")
    if cfg.checkpoint:
        rows += _transformers(cfg, bw["bandwidth_gbps"])
    with PeakRSS() as probe:
        again = measure_bandwidth(mb, cfg.threads)
    bw = merge_bandwidth(bw, again, probe.others_cores)
    for r in rows:
        if "decode_step_ms_p50" in r:
            refloor(r, bw["bandwidth_gbps"])
    env["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return {"schema": "janus-edge-vs-llamacpp/1", "config": asdict(cfg), "environment": env, "bandwidth": bw,
            "bandwidth_gbps": bw["bandwidth_gbps"], "llama_cpp_skipped": reason, "results": rows,
            "comparison": compare(rows), "process_peak_rss_mb": process_peak_rss_mb(),
            "wall_s": round(time.perf_counter() - t0, 1)}


def _transformers(cfg: SideConfig, bw: float) -> list[dict]:
    """transformers' fp32 step (the `bench --baseline hf` code) on the prompts our t2i and chat rows used."""
    from janus_edge.runtime import prompts
    from janus_edge.runtime.pipeline import Pipeline

    from . import ours
    from .runner import BenchConfig, _measure_baseline

    first = next(iter(cfg.bundles.values()))
    pipe = Pipeline.from_bundle(first, backend="ort", threads=cfg.threads)
    image = ours.synthetic_image(pipe.bundle.manifest.image_preprocess.get("size", pipe.dims.image_size))
    share = {"dims": pipe.dims, "ids": pipe.prompt_ids(ours.DEFAULT_PROMPT)}
    chat_share = {"dims": pipe.dims, "ids": prompts.chat_ids(pipe.bundle, ours.DEFAULT_QUESTION, 1),
                  "pixels": pipe._pixels([image])}
    del pipe
    gc.collect()
    out = []
    for task, sh in (("t2i", share), ("chat", chat_share)):
        b = BenchConfig(bundles=[first], task=task, steps=cfg.steps, runs=cfg.runs, threads=cfg.threads,
                        baseline="hf", checkpoint=cfg.checkpoint, warmup_steps=cfg.warmup_steps)
        r = _measure_baseline(b, sh, bw)
        out.append({"side": "transformers", "precision": "fp32", **r, "phase": task,
                    "rows": r.get("rows", 1)})
        _log(f"transformers fp32 {task}: p50 {r.get('decode_step_ms_p50')} ms")
    return out


def compare(rows: list[dict]) -> list[dict]:
    """Per bundle: ours vs llama.cpp, t2i (2 rows), t2i8 (8 rows) and chat (1 row); ratio > 1: janus-edge is
    faster."""
    out = []
    labels = list(dict.fromkeys(r["precision"] for r in rows if r["side"] == "janus-edge"))
    for prec in labels:
        qtype = dict(PAIRS)[_base(prec)]
        for ours_phase, theirs_phase in (("t2i", "t2i"), ("t2i", "t2i_text_head"), ("t2i8", "t2i8"),
                                         ("chat", "chat")):
            a = next((r for r in rows if r["side"] == "janus-edge" and r["precision"] == prec
                      and r["phase"] == ours_phase), None)
            b = next((r for r in rows if r["side"] == "llama.cpp" and r["precision"] == qtype
                      and r["phase"] == theirs_phase and "decode_step_ms_p50" in r), None)
            if a is None or b is None:
                continue
            out.append({"precision": f"{prec} vs {qtype}", "ours": ours_phase, "llama_cpp": theirs_phase,
                        "rows": a["rows"], "ours_p50_ms": a["decode_step_ms_p50"],
                        "llama_cpp_p50_ms": b["decode_step_ms_p50"],
                        "llama_cpp_over_ours": round(b["decode_step_ms_p50"] / a["decode_step_ms_p50"], 3),
                        "ours_faster": a["decode_step_ms_p50"] < b["decode_step_ms_p50"]})
    return out


def _row(rows: list[dict], side: str, prec: str, phase: str) -> dict | None:
    return next((r for r in rows if r["side"] == side and r["precision"] == prec and r["phase"] == phase
                 and "decode_step_ms_p50" in r), None)


def table(result: dict) -> str:
    """Markdown: one line per comparison, with both sides' weight bytes per step and floor ratios."""
    rows, bw = result["results"], result["bandwidth_gbps"]
    lines = [f"| precision | rows | janus-edge step | llama.cpp step | llama.cpp / ours | weights read per step "
             f"(ours / llama.cpp) | floor ratio at {bw:.1f} GB/s (ours / llama.cpp) |", "|---|---|---|---|---|---|---|"]
    for c in result["comparison"]:
        prec, qtype = c["precision"].split(" vs ")
        a, b = _row(rows, "janus-edge", prec, c["ours"]), _row(rows, "llama.cpp", qtype, c["llama_cpp"])
        what = {"t2i": "2 (t2i)", "chat": "1 (chat)", "t2i_text_head": "2 (text head)",
                "t2i8": "8 (4 images)"}[c["llama_cpp"]]
        lines.append(f"| {c['precision']} | {what} | {c['ours_p50_ms']:.1f} ms | {c['llama_cpp_p50_ms']:.1f} ms | "
                     f"{c['llama_cpp_over_ours']:.2f}x | {a['weight_bytes_per_step'] / 1e6:.0f} / "
                     f"{b['weight_bytes_per_step'] / 1e6:.0f} MB | {a['floor_ratio']:.2f} / {b['floor_ratio']:.2f} |")
    for r in rows:
        if r["side"] == "transformers" and "decode_step_ms_p50" in r:
            lines.append(f"| transformers fp32 | {r.get('rows', 1)} ({r['phase']}) | {r['decode_step_ms_p50']:.1f} ms "
                         f"(transformers) | | | {r['weight_bytes_per_step'] / 1e6:.0f} MB | "
                         f"{r.get('floor_ratio', float('nan')):.2f} |")
    if result.get("llama_cpp_skipped"):
        lines.append(f"\nllama.cpp rows skipped: {result['llama_cpp_skipped']}")
    return "\n".join(lines)


def _bundle_arg(items: list[str]) -> dict:
    out = {}
    for it in items:
        prec, sep, path = it.partition("=")
        if not sep or not path:
            raise InputError(f"--bundle takes PRECISION=DIR (fp32=..., int8=..., int4=..., int4-ort=...), got {it!r}")
        out[prec] = path
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m janus_edge.benchmarks.llamacpp", description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", action="append", default=[], help="PRECISION=DIR, PRECISION in fp32, int8, int4")
    ap.add_argument("--gguf-dir", default=None, help="text.gguf, text-Q8_0.gguf, ..., image-Q4_0.gguf (gguf_convert)")
    ap.add_argument("--json", default="pro1b_vs_llamacpp.json")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--phases", default="t2i,chat,t2i_text_head", help="of: " + ",".join(PHASES))
    ap.add_argument("--checkpoint", default=None, help="also time transformers (fp32) on this checkpoint")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        kw = json.loads(a.worker)
        print(json.dumps(measure_decode(kw.pop("path"), **kw)))
        return 0
    try:
        cfg = SideConfig(bundles=_bundle_arg(a.bundle), gguf_dir=a.gguf_dir, json_out=a.json, steps=a.steps,
                         runs=a.runs, threads=a.threads, phases=[p for p in a.phases.split(",") if p],
                         checkpoint=a.checkpoint)
        result = run(cfg)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    tmp = f"{cfg.json_out}.tmp"
    with open(tmp, "w") as fh:
        json.dump(result, fh, indent=1)
        fh.write("\n")
    os.replace(tmp, cfg.json_out)
    print(table(result))
    print(f"bandwidth {result['bandwidth_gbps']:.1f} GB/s (best probe run); wrote {cfg.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
