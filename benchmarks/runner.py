"""`janus-edge bench`: orchestrates one benchmark run and writes its JSON (schema in benchmarks/README.md).

Order of a run (one process): check the arguments -> measure the bandwidth (before any model is loaded, so the
probe's 1 GiB does not add to a model's memory) -> for each bundle: open it, time it, release its sessions ->
the transformers baseline, if asked, AFTER our sessions are released (a Pro-1B torch model is ~8 GB and our
fp32 sessions ~5 GB: both at once do not fit a 16-24 GB machine) -> JSON, summary, plot.
"""
from __future__ import annotations

import gc
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from janus_edge.errors import InputError

from . import floor as F
from . import report
from .common import PeakRSS, environment, process_peak_rss_mb

SCHEMA = "janus-edge-bench/1"
BANDWIDTH_ENV = "JANUS_EDGE_BENCH_BANDWIDTH_MB"
# Keys of the first result copied to the top level of the JSON, for a quick look at a one-bundle run.
TOP_KEYS = ("bundle", "dtype", "decode_step_ms_p50", "decode_step_ms_p90", "prefill_ms", "vq_decode_ms", "image_s",
            "image_s_extrapolated", "ttft_ms", "image_encode_ms", "tokens_per_s", "peak_rss_mb",
            "weight_bytes_per_step", "kv_bytes_per_step", "bytes_per_step", "floor_ms", "floor_ratio",
            "floor_ms_full_cache", "speedup")


@dataclass
class BenchConfig:
    bundles: list[str]
    task: str = "t2i"
    json_out: str = "bench.json"
    steps: int | None = None
    runs: int = 1
    threads: int | None = None
    baseline: str | None = None
    checkpoint: str | None = None
    plot: str | None = None
    backend: str = "ort"
    # not on the command line
    prompt: str | None = None  # t2i prompt (default ours.DEFAULT_PROMPT)
    question: str | None = None  # chat question (default ours.DEFAULT_QUESTION)
    n: int = 1
    images: list[int] | None = None  # t2i: images per prompt to time, each bundle at each count (default [n])
    cfg_weight: float = 5.0
    temperature: float = 1.0  # t2i draw, as the official generation script (chat is greedy)
    seed: int = 0
    warmup_steps: int = 2  # decode steps discarded at the start of every run
    chat_tokens: int = 32  # timed chat tokens when steps is None
    bandwidth_mb: int | None = None  # probe size; None: $JANUS_EDGE_BENCH_BANDWIDTH_MB or 1024
    bandwidth_runs: int = 7
    bandwidth_probes: int = 2  # probes: before the bundles, and again after them (before the baseline)
    quiet: bool = False
    extra: dict = field(default_factory=dict)


def _int_or_none(v, name: str, low: int = 1) -> None:
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < low):
        raise InputError(f"{name} must be an integer >= {low}, got {v!r}")


def _out_dir_ok(path: str, what: str) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise InputError(f"directory of {what} does not exist: {parent}")


def validate(cfg: BenchConfig) -> None:
    """User errors, raised before anything heavy runs."""
    from janus_edge import contract as C

    if not cfg.bundles:
        raise InputError("no bundle given")
    if cfg.task not in ("t2i", "chat"):
        raise InputError(f"unknown task {cfg.task!r}; choose t2i or chat")
    _int_or_none(cfg.steps, "--steps")
    _int_or_none(cfg.runs, "--runs")
    _int_or_none(cfg.threads, "--threads")
    _int_or_none(cfg.n, "n")
    if cfg.images is not None:
        if not cfg.images:
            raise InputError("--images needs at least one count")
        for k in cfg.images:
            _int_or_none(k, "--images")
        if cfg.task != "t2i":
            raise InputError("--images is for --task t2i (images per prompt)")
    _int_or_none(cfg.warmup_steps, "warmup_steps", 0)
    if cfg.baseline not in (None, "hf"):
        raise InputError(f"unknown baseline {cfg.baseline!r}; the only baseline is 'hf' (transformers)")
    if cfg.baseline == "hf":
        if not cfg.checkpoint:
            raise InputError("--baseline hf needs --checkpoint CKPT (the checkpoint the bundle was exported from)")
        if not os.path.isfile(os.path.join(cfg.checkpoint, "config.json")):
            raise InputError(f"checkpoint not found (no config.json): {cfg.checkpoint}")
    elif cfg.checkpoint:
        raise InputError("--checkpoint is only used with --baseline hf")
    from janus_edge.runtime.backends import get_backend

    get_backend(cfg.backend, threads=cfg.threads)  # an unavailable backend is the user's error: say so now
    _out_dir_ok(cfg.json_out, "--json")
    if cfg.plot:
        _out_dir_ok(cfg.plot, "--plot")
    dims = None
    for b in cfg.bundles:
        try:
            m = C.load_manifest(b)
        except C.ContractError as e:
            raise InputError(str(e)) from None
        if dims is not None and m.dims != dims:
            raise InputError(f"bundles of different models cannot be compared in one run: {b}")
        dims = m.dims
    if cfg.task == "t2i" and cfg.steps is not None and cfg.steps > dims.num_image_tokens - 1:
        raise InputError(f"--steps {cfg.steps} exceeds the {dims.num_image_tokens - 1} decode steps of an image "
                         f"(leave --steps out to time whole images)")


def _bandwidth_mb(cfg: BenchConfig) -> int:
    if cfg.bandwidth_mb is not None:
        return int(cfg.bandwidth_mb)
    env = os.environ.get(BANDWIDTH_ENV)
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise InputError(f"${BANDWIDTH_ENV} must be an integer (MiB), got {env!r}") from None
    return 1024


def merge_bandwidth(bw: dict, again: dict, others_cores) -> dict:
    """Pool two probes of the same method: the result is the best run of all."""
    runs = bw.get("runs_gbps", [bw["bandwidth_gbps"]]) + again.get("runs_gbps", [again["bandwidth_gbps"]])
    probes = bw.get("probe_gbps", [bw["bandwidth_gbps"]]) + [again["bandwidth_gbps"]]
    base = bw.get("probe_method", bw["method"])
    busy = [x for x in (bw.get("other_processes_cores"), others_cores) if x is not None]
    return dict(bw, runs_gbps=runs, bandwidth_gbps=max(probes), probe_gbps=probes, probe_method=base,
                median_gbps=round(float(np.median(runs)), 3), other_processes_cores=max(busy) if busy else None,
                method=f"{base}; probed {len(probes)} times (before the bundles, then after them), best run of all")


def refloor(r: dict, bandwidth_gbps: float) -> None:
    """Recompute a result's floor keys for a new bandwidth (the bytes do not change)."""
    if r.get("floor_ms") is None or not r.get("decode_step_ms_p50"):
        return
    r.update(F.floor(r["weight_bytes_per_step"], r["kv_bytes_per_step"], r["kv_bytes_per_step_full_cache"],
                     bandwidth_gbps, r["decode_step_ms_p50"]))
    r["bandwidth_gbps"] = bandwidth_gbps


def _log(cfg: BenchConfig, msg: str) -> None:
    if not cfg.quiet:
        print(f"[bench] {msg}", file=sys.stderr, flush=True)


def image_counts(cfg: BenchConfig) -> list[int]:
    return list(cfg.images) if cfg.images else [cfg.n]


def _measure_bundle(cfg: BenchConfig, path: str, bw: float) -> tuple[list[dict], dict]:
    """-> (results: one per image count for t2i, one for chat; inputs the baseline reuses: prompt ids / pixels /
    our greedy tokens). t2i at several counts reuses the opened bundle; each count's `images_step_ratio` is its
    step p50 over that of the first count."""
    from janus_edge.runtime.pipeline import Pipeline

    from . import ours

    pipe = Pipeline.from_bundle(path, backend=cfg.backend, threads=cfg.threads)
    if hasattr(pipe.bundle.backend, "kernel_census"):  # ORT: profile the warm-up call, to say which kernels ran
        pipe.bundle.backend.kernel_census = True
    share: dict = {"dims": pipe.dims}
    out = []
    if cfg.task == "t2i":
        prompt = cfg.prompt or ours.DEFAULT_PROMPT
        for k in image_counts(cfg):
            res, tokens = ours.measure_t2i(pipe, prompt=prompt, steps=cfg.steps, runs=cfg.runs,
                                           warmup_steps=cfg.warmup_steps, n=k, cfg_weight=cfg.cfg_weight,
                                           temperature=cfg.temperature, seed=cfg.seed, bandwidth_gbps=bw)
            if not out:
                share["tokens"] = tokens
            elif res.get("decode_step_ms_p50") and out[0].get("decode_step_ms_p50"):
                res["images_step_ratio"] = round(res["decode_step_ms_p50"] / out[0]["decode_step_ms_p50"], 3)
                res["images_step_ratio_vs_n"] = out[0]["n"]
            out.append(res)
            if len(image_counts(cfg)) > 1:
                _log(cfg, f"{path} at {k} image(s): step p50 {res.get('decode_step_ms_p50')} ms")
        share["ids"] = pipe.prompt_ids(prompt)
    else:
        from janus_edge.runtime import prompts

        question = cfg.question or ours.DEFAULT_QUESTION
        out.append(ours.measure_chat(pipe, question=question, steps=cfg.steps, runs=cfg.runs,
                                     warmup_steps=cfg.warmup_steps, default_tokens=cfg.chat_tokens,
                                     bandwidth_gbps=bw))
        image = ours.synthetic_image(pipe.bundle.manifest.image_preprocess.get("size", pipe.dims.image_size))
        share["ids"] = prompts.chat_ids(pipe.bundle, question, 1)
        share["pixels"] = pipe._pixels([image])
    for res in out:
        res["graphs_loaded"] = pipe.bundle.loaded_graphs
    del pipe
    gc.collect()
    return out, share


def _measure_baseline(cfg: BenchConfig, share: dict, bw: float) -> dict:
    from . import baseline_hf as hf

    with hf.quiet_transformers():
        model, load_s = hf.load_model(cfg.checkpoint, cfg.threads)
        try:
            if cfg.task == "t2i":
                out = hf.measure_t2i(model, ids=share["ids"], steps=cfg.steps, runs=cfg.runs,
                                     warmup_steps=cfg.warmup_steps, n=image_counts(cfg)[0], cfg_weight=cfg.cfg_weight,
                                     temperature=cfg.temperature, seed=cfg.seed, bandwidth_gbps=bw,
                                     dims=share["dims"], ours_tokens=share.get("tokens"))
            else:
                out = hf.measure_chat(model, ids=share["ids"], pixel_values=share["pixels"], steps=cfg.steps,
                                      runs=cfg.runs, warmup_steps=cfg.warmup_steps, default_tokens=cfg.chat_tokens,
                                      bandwidth_gbps=bw, dims=share["dims"])
        finally:
            del model
            gc.collect()
    out.update(checkpoint=cfg.checkpoint, load_s=round(load_s, 2),
               phase="after our sessions were released (same process, run after the bundles)")
    return out


def run(cfg: BenchConfig) -> dict:
    """Measure and return the JSON-ready result (does not write files)."""
    validate(cfg)
    from janus_edge import contract as C

    from .bandwidth import measure_bandwidth

    t_start = time.perf_counter()
    manifests = {b: C.load_manifest(b) for b in cfg.bundles}
    precision = {b: {g: e.precision for g, e in m.graphs.items()} for b, m in manifests.items()}
    env = environment(cfg.threads, cfg.backend, precision, cfg.baseline == "hf")
    mb = _bandwidth_mb(cfg)
    _log(cfg, f"bandwidth probe ({mb} MiB, threads={cfg.threads or 'default'}) ...")
    with PeakRSS() as probe:
        bw = measure_bandwidth(mb, cfg.threads, runs=cfg.bandwidth_runs)
    bw["other_processes_cores"] = probe.others_cores
    _log(cfg, f"bandwidth {bw['bandwidth_gbps']:.1f} GB/s (best of {bw.get('runs_gbps')})")
    results, share = [], None
    for b in cfg.bundles:
        _log(cfg, f"{cfg.task} on {b} ...")
        res, sh = _measure_bundle(cfg, b, bw["bandwidth_gbps"])
        results += res
        share = share or sh
        _log(cfg, f"{b}: step p50 {res[0].get('decode_step_ms_p50')} ms")
    if cfg.bandwidth_probes > 1:  # probe again now that our sessions are released; keep the best of all runs
        for _ in range(cfg.bandwidth_probes - 1):
            with PeakRSS() as probe:
                again = measure_bandwidth(mb, cfg.threads, runs=cfg.bandwidth_runs)
            bw = merge_bandwidth(bw, again, probe.others_cores)
        _log(cfg, f"bandwidth {bw['bandwidth_gbps']:.1f} GB/s (best of both probes)")
        for r in results:
            refloor(r, bw["bandwidth_gbps"])
    baseline = None
    if cfg.baseline == "hf":
        _log(cfg, f"transformers baseline from {cfg.checkpoint} ...")
        baseline = _measure_baseline(cfg, share, bw["bandwidth_gbps"])
        for r in results:  # speedup: against the baseline at the same image count only
            if r.get("decode_step_ms_p50") and baseline.get("decode_step_ms_p50") and \
                    r.get("n", 1) == baseline.get("n", r.get("n", 1)):
                r["speedup"] = round(baseline["decode_step_ms_p50"] / r["decode_step_ms_p50"], 3)
        if cfg.task == "t2i" and "greedy_tokens_equal_ours" in baseline:
            baseline["greedy_tokens_compared_with"] = results[0]["bundle"]
    env["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    out = {"schema": SCHEMA, "task": cfg.task, "config": {k: v for k, v in asdict(cfg).items() if k != "quiet"},
           "environment": env, "bandwidth": bw, "bandwidth_gbps": bw["bandwidth_gbps"],
           "bandwidth_method": bw["method"], "results": results}
    out.update({k: results[0][k] for k in TOP_KEYS if k in results[0]})
    if baseline is not None:
        out["baseline"] = baseline
    out["process_peak_rss_mb"] = process_peak_rss_mb()
    out["wall_s"] = round(time.perf_counter() - t_start, 2)
    return out


def write_json(result: dict, path: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as fh:
        json.dump(result, fh, indent=1)
        fh.write("\n")
    os.replace(tmp, path)


def run_cli(cfg: BenchConfig) -> int:
    result = run(cfg)
    write_json(result, cfg.json_out)
    if cfg.plot:
        report.plot(result, cfg.plot)
    print(report.summary(result))
    print(f"wrote {cfg.json_out}" + (f" and {cfg.plot}" if cfg.plot else ""))
    return 0
