"""`janus-edge` command line: argument parsing, progress and error lines over the public API, nothing more.
The parser is in cli_args.py (one function per subcommand); here each subcommand's runner, registered by name.

Errors the user caused print one line `error: ...` on stderr and exit 2; internal failures exit 1.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from janus_edge.cli_args import build_parser
from janus_edge.errors import USER_ERRORS

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(name: str):
    def deco(fn):
        COMMANDS[name] = fn
        return fn
    return deco


@command("init")
def _init(a) -> int:
    if a.preset == "shapes":  # the one preset trained in this repo (export/shapes_model.py)
        from janus_edge.errors import InputError
        from janus_edge.export.shapes_model import init_shapes

        if getattr(a, "dtype", None) not in (None, "float32"):
            raise InputError("the shapes preset is written in float32 only")
        print(init_shapes(a.out, force=a.force))
        return 0
    if a.preset == "smollm2-135m":  # the one preset whose language model is trained (export/trained_lm.py)
        from janus_edge.errors import InputError
        from janus_edge.export.trained_lm import init_trained_lm

        if getattr(a, "dtype", None) not in (None, "float32"):
            raise InputError("the smollm2-135m preset is written in float32 only")
        print(init_trained_lm(a.out, seed=a.seed, force=a.force))
        return 0
    from janus_edge.export.init_random import init_random

    print(init_random(a.preset, a.out, seed=a.seed, force=a.force, dtype=a.dtype))
    return 0


COMMANDS["init-random"] = _init  # the old name, kept as an alias


@command("train-shapes")
def _train_shapes(a) -> int:
    from janus_edge.export.shapes_train import TrainConfig, train_shapes

    print(train_shapes(TrainConfig(out=a.out, seed=a.seed, vq_steps=a.vq_steps, lm_steps=a.lm_steps,
                                   minutes=a.minutes, threads=a.threads, force=a.force, init_from=a.init_from,
                                   vq_lr=a.vq_lr, lm_lr=a.lm_lr, vq_share=a.vq_share)))
    return 0


@command("export")
def _export(a) -> int:
    from janus_edge.export.exporter import export_bundle

    print(export_bundle(a.checkpoint, a.out, dtype=a.dtype, force=a.force))
    return 0


@command("verify")
def _verify(a) -> int:
    from janus_edge.export.verify import verify_bundle

    report = verify_bundle(a.bundle, a.against)
    print(report.table())
    if not report.ok:
        print("error: bundle out of tolerance against the reference", file=sys.stderr)
        return 1
    return 0


@command("quantize")
def _quantize(a) -> int:
    from janus_edge.quant.api import QuantOptions, quantize_bundle

    opts = QuantOptions(mode=a.mode, graphs=a.graphs, method=a.method, kv_dtype=a.kv_dtype, calib_prompts=a.calib_prompts,
                        calib_images=a.calib_images, block_size=a.block_size, target=a.target, force=a.force,
                        report=a.report,
                        int8_layers=tuple(x for x in (a.int8_layers or "").split(",") if x))
    print(quantize_bundle(a.bundle, a.out, opts))
    return 0


@command("lint-trt")
def _lint_trt(a) -> int:
    from janus_edge.export.lint_trt import run_cli

    return run_cli(a.bundle)


@command("build")
def _build(a) -> int:
    from janus_edge.export.trt_build import BuildOptions, build_engines

    print(build_engines(a.bundle, a.out, BuildOptions(max_images=a.max_images, max_prompt_len=a.max_prompt_len,
                                                      max_new_tokens=a.max_new_tokens, workspace_mb=a.workspace_mb,
                                                      timing_cache=a.timing_cache, force=a.force)))
    return 0


@command("memory")
def _memory(a) -> int:
    from janus_edge.runtime.trt_memory import run_cli

    return run_cli(a.bundle, max_images=a.max_images, max_prompt_len=a.max_prompt_len,
                   max_new_tokens=a.max_new_tokens, as_json=a.json)


@command("doctor")
def _doctor(a) -> int:
    from janus_edge.runtime.doctor import run_cli

    return run_cli(as_json=a.json)


@command("generate")
def _generate(a) -> int:
    from janus_edge.runtime.cli_support import run_generate

    return run_generate(bundle=a.bundle, prompt=a.prompt, out=a.out, n=a.n, cfg=a.cfg, temperature=a.temperature,
                        top_k=a.top_k, top_p=a.top_p, seed=a.seed, tokens_out=a.tokens_out, threads=a.threads,
                        backend=a.backend, device=a.device)


@command("chat")
def _chat(a) -> int:
    from janus_edge.runtime.cli_support import run_chat

    return run_chat(bundle=a.bundle, images=a.image, question=a.question, max_new_tokens=a.max_new_tokens,
                    temperature=a.temperature, top_p=a.top_p, seed=a.seed, threads=a.threads, backend=a.backend,
                    device=a.device)


@command("triton-repo")
def _triton_repo(a) -> int:
    from janus_edge.serving.cli import run_triton_repo

    return run_triton_repo(a)


@command("serve")
def _serve(a) -> int:
    from janus_edge.serving.cli import run_serve

    return run_serve(a)


@command("demo")
def _demo(a) -> int:
    from janus_edge.demo.cli import run_demo

    return run_demo(a.bundle, port=a.port, host=a.host, server=a.server, backend=a.backend, threads=a.threads,
                    rows=a.rows)


@command("bench")
def _bench(a) -> int:
    if a.task == "serving":
        from janus_edge.benchmarks.serving import run_cli as run_serving

        return run_serving(a)
    from janus_edge.benchmarks.runner import BenchConfig, run_cli

    cfg = BenchConfig(bundles=a.bundle, task=a.task, json_out=a.json, steps=a.steps, runs=a.runs, threads=a.threads,
                      baseline=a.baseline, checkpoint=a.checkpoint, plot=a.plot, backend=a.backend,
                      images=a.images)
    return run_cli(cfg)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "dtype", None) in ("fp32", "fp16"):
        args.dtype = {"fp32": "float32", "fp16": "float16"}[args.dtype]
    try:
        return COMMANDS[args.cmd](args)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
