"""`janus-edge build BUNDLE --out ENGINES`: one TensorRT plan per graph, on the GPU that will run them.

TensorRT's own Python API, no Polygraphy: the build is five calls (OnnxParser.parse_from_file, a STRONGLY_TYPED
network, optimization profiles, a timing cache, build_serialized_network) and Polygraphy is not installed with
JetPack's python3-libnvinfer; one fewer package to match to the TensorRT version on a Jetson. (`polygraphy run
model.onnx --trt --onnxrt` stays a fine manual cross-check where it is installed.)

Order: check every input (bundle sha256s, limits, --out, timing-cache path) -> probe cuda-python, the GPU, TensorRT
>= 10.3 (one error line naming what is missing) -> refuse FP8 below compute capability 8.9 -> lint-trt (when onnx is
installed) -> in a temp dir beside --out: each graph's plan (progress per engine), manifest.json pointing at the
plans, engines.json, the tokenizer and text-embedding files -> rename into place. A failed build leaves no --out.
Strongly typed networks only: precision comes from the graphs (fp16 bundles, Q/DQ bundles), no builder precision
flags (deprecated in 10.12, gone in 11); TF32 (on by default) is cleared for fp32 bundles (flags_to_clear). The profiles are runtime/trt_engines.py's (the backend checks the same).
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass

from janus_edge import contract as C
from janus_edge.errors import BundleError, InputError
from janus_edge.runtime import trt_engines as E

from .staging import check_target, staged_dir


@dataclass
class BuildOptions:
    max_images: int = 4
    max_prompt_len: int | None = None
    max_new_tokens: int = 512
    workspace_mb: int | None = None
    timing_cache: str | None = None
    force: bool = False
    progress: bool = True


def _log(opts: BuildOptions, msg: str) -> None:
    if opts.progress:
        print(f"[build] {msg}", file=sys.stderr, flush=True)


def check_inputs(bundle: str, out: str, opts: BuildOptions) -> tuple[C.Manifest, E.Limits]:
    """Everything the user gave, checked before anything heavy: -> (manifest, limits)."""
    try:
        m = C.load_manifest(bundle)
        C.check_files(bundle, m)
    except C.ContractError as e:
        raise BundleError(str(e)) from None
    if os.path.isfile(os.path.join(bundle, E.ENGINES_JSON)):
        raise InputError(f"{bundle} is already an engines directory; build from the bundle it came from")
    limits = E.plan_limits(m.dims, opts.max_images, opts.max_prompt_len, opts.max_new_tokens)
    if opts.workspace_mb is not None and (isinstance(opts.workspace_mb, bool) or not isinstance(opts.workspace_mb, int)
                                          or opts.workspace_mb < 1):
        raise InputError(f"--workspace-mb must be an integer >= 1, got {opts.workspace_mb!r}")
    if opts.timing_cache:
        parent = os.path.dirname(os.path.abspath(opts.timing_cache))
        if not os.path.isdir(parent):
            raise InputError(f"directory of --timing-cache does not exist: {parent}")
    check_target(out, opts.force, InputError)
    build, _ = E.buildable_graphs(m)
    if not build:
        raise InputError(f"{bundle}: every graph is an ONNX-Runtime-only variant (target ort): nothing to build")
    return m, limits


def engines_manifest(m: C.Manifest, built: list[str], files: dict[str, str]) -> C.Manifest:
    """The engines dir's manifest: the bundle's, each built graph's file now NAME.plan (no external data), sha256 of
    the files actually in the dir. A graph not built (ORT-only variant) keeps its entry, its file absent: the
    manifest stays complete, and opening that graph fails with the file named."""
    graphs = dict(m.graphs)
    for g in built:
        e = m.graphs[g]
        graphs[g] = C.GraphEntry(**{**e.__dict__, "file": g + E.PLAN_SUFFIX, "external_data": []})
    fields = {k: getattr(m, k) for k in C.Manifest.__dataclass_fields__}
    return C.Manifest(**{**fields, "graphs": graphs, "files": dict(sorted(files.items()))})


def lint_or_refuse(bundle: str, opts: BuildOptions) -> None:
    try:
        from .lint_trt import lint_bundle
    except ImportError:  # onnx not installed (a Jetson that only builds): TensorRT's parser is the check
        _log(opts, "onnx not installed: lint-trt skipped, TensorRT's parser checks the graphs")
        return
    r = lint_bundle(bundle)
    if not r.ok:
        raise InputError(f"{bundle} fails lint-trt ({len(r.findings)} finding(s), first: {r.findings[0].line()}); "
                         f"run `janus-edge lint-trt {bundle}` for all of them")


def build_engines(bundle: str, out: str, opts: BuildOptions | None = None) -> str:
    opts = opts or BuildOptions()
    m, limits = check_inputs(bundle, out, opts)
    from janus_edge.runtime.trt_env import require

    env = require("janus-edge build")
    trt = env.trt
    E.check_precisions(m, tuple(env.device["compute_capability"]), env.device["name"])
    lint_or_refuse(bundle, opts)
    build, skipped = E.buildable_graphs(m)
    if skipped:
        _log(opts, f"skipping ONNX-Runtime-only variants: {', '.join(skipped)}")
    t0 = time.time()
    logger = trt.Logger(trt.Logger.WARNING)
    cache = read_timing_cache(opts.timing_cache)
    engines, files = {}, {}
    with staged_dir(out, opts.force, InputError) as tmp:
        for i, g in enumerate(build, 1):
            spec = m.graphs[g].spec(g)
            profiles = E.profiles_for(g, spec, limits, m.dims)
            t = time.time()
            _log(opts, f"[{i}/{len(build)}] {g}: {m.graphs[g].precision}, {len(profiles)} profile(s) ...")
            clear = flags_to_clear(m.dtype)
            plan, cache = build_plan(trt, logger, os.path.join(bundle, m.graphs[g].file), profiles, opts, cache,
                                     clear)
            name = g + E.PLAN_SUFFIX
            with open(os.path.join(tmp, name), "wb") as fh:
                fh.write(plan)
            files[name] = C.sha256_file(os.path.join(tmp, name))
            engines[g] = {"file": name, "precision": m.graphs[g].precision, "profiles": profiles,
                          "bytes": len(plan), "build_s": round(time.time() - t, 1), "cleared_flags": list(clear)}
            _log(opts, f"[{i}/{len(build)}] {g} done in {time.time() - t:.1f}s ({len(plan) / 2**20:.1f} MiB)")
        graph_files = {f for e in m.graphs.values() for f in (e.file, *e.external_data)}
        for f in m.files:
            if f not in graph_files:
                shutil.copyfile(os.path.join(bundle, f), os.path.join(tmp, f))
                files[f] = m.files[f]
        engines_manifest(m, build, files).save(tmp)
        meta = E.engines_meta(trt_version=str(trt.__version__), device=env.device, bundle_path=bundle,
                              bundle_sha256=C.sha256_file(os.path.join(bundle, C.MANIFEST)), limits=limits,
                              engines=engines, skipped=skipped,
                              extra={"workspace_mb": opts.workspace_mb, "timing_cache": opts.timing_cache,
                                     "janus_edge": __import__("janus_edge").__version__})
        import json

        with open(os.path.join(tmp, E.ENGINES_JSON), "w") as fh:
            json.dump(meta, fh, indent=2)
            fh.write("\n")
        if opts.timing_cache:
            write_timing_cache(opts.timing_cache, cache)
    _log(opts, f"engines written to {out} in {time.time() - t0:.1f}s")
    return out


def read_timing_cache(path: str | None) -> bytes:
    if path and os.path.isfile(path):
        with open(path, "rb") as fh:
            return fh.read()
    return b""


def write_timing_cache(path: str, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".timing-", dir=os.path.dirname(os.path.abspath(path)))
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def flags_to_clear(activation_dtype: str) -> tuple[str, ...]:
    """Builder flags turned off for a bundle whose activations are `activation_dtype`. TensorRT enables TF32 by
    default for fp32 matmuls and convolutions (10-bit mantissa inputs): fp32 graphs (and Q/DQ graphs of an fp32
    bundle, whose unquantized layers are fp32) would then miss the fp32 parity tolerances. TF32 is no precision
    flag of the weak-typing API: strongly typed networks honour it."""
    return ("TF32",) if activation_dtype == "float32" else ()


def build_plan(trt, logger, onnx_path: str, profiles: list[dict], opts: BuildOptions, cache,
               clear: tuple[str, ...] = ()):
    """One engine: parse (external data beside the file), strongly typed, the given profiles, the timing cache.
    `cache`: the serialized timing cache so far (shared by the graphs of a build); returns (plan, updated cache).
    `clear`: BuilderFlag names to turn off (flags_to_clear)."""
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(onnx_path):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise InputError(f"TensorRT's ONNX parser rejects {onnx_path}: {errs[:500]}")
    config = builder.create_builder_config()
    for flag in clear:
        config.clear_flag(getattr(trt.BuilderFlag, flag))
    if opts.workspace_mb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, opts.workspace_mb << 20)
    config.set_timing_cache(config.create_timing_cache(bytes(cache)), False)
    for p in profiles:
        prof = builder.create_optimization_profile()
        for name, (mn, opt, mx) in p["shapes"].items():
            prof.set_shape(name, mn, opt, mx)
        config.add_optimization_profile(prof)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT failed to build {onnx_path} (see its log above)")
    return bytes(memoryview(plan)), bytes(memoryview(config.get_timing_cache().serialize()))
