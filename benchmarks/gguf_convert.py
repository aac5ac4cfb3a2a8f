"""A Janus checkpoint's language model as a llama.cpp GGUF (for the llama.cpp side-by-side benchmark only).

    python -m janus_edge.benchmarks.gguf_convert CKPT OUT.gguf [--head text|image] [--quantize Q8_0,Q4_0]

The Janus LM is a Llama (transformers' JanusForConditionalGeneration: `model.language_model.*` + `lm_head`), so
the file uses llama.cpp's `llama` architecture: hidden, layers, heads, KV heads, head dim, rope theta, RMSNorm eps
and vocab from the checkpoint's `text_config`, tensors under llama.cpp's names (token_embd, blk.N.attn_q, ...,
output_norm, output), all F32 (general.file_type 0). attn_q / attn_k rows are permuted as llama.cpp's
convert_hf_to_gguf.py does for Llama (per head, the rotary halves [2, d/2] become interleaved pairs [d/2, 2]:
llama.cpp's rope works on adjacent pairs, HF's on halves; export/trained_lm.py undoes the same permutation).

Heads (`--head`):
- `text` (default): token_embd = the text embedding table, output = lm_head: the model chat decodes with.
- `image`: what a text-to-image step reads. token_embd row c = generation_aligner(generation_embeddings[c]) for
  every image code c (exactly the input embedding of an image token, precomputed: a lookup, like gen_embed), and
  output = generation_head.vision_head.weight [image_vocab, hidden]. The generation head's proj_out + GELU before
  it (hidden x hidden, 1/8 of gen_head's bytes at Pro-1B) and vision_head's bias are not representable in a Llama
  GGUF and are left out, so llama.cpp reads ~4 M parameters fewer per row than Janus' gen_head.

The vocabulary is a placeholder (`tokenizer.ggml.model = "none"`, llama.cpp adds vocab_size dummy tokens): the
benchmark and the test feed token ids, never text. The output is written completely or not at all (a temp file
beside it, renamed at the end); tensors are streamed one at a time, so a Pro-1B F32 file (~6.6 GB) needs ~1 GB RAM.
`--quantize` then writes OUT stem + `-Q8_0.gguf` etc. with llama.cpp's own quantizer (llama_model_quantize, its
default tensor-type choices, e.g. Q6_K for `output` under Q4_0), which needs llama-cpp-python.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from janus_edge.errors import InputError

LM = "model.language_model."
LAYER_NAMES = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
               "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
               "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
               "mlp.down_proj": "ffn_down"}
QUANT_FTYPES = {"Q8_0": 7, "Q4_0": 2, "F16": 1}  # llama_ftype values (llama.h: LLAMA_FTYPE_MOSTLY_*)


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf LlamaModel.permute: per head, rows [2, d/2] -> [d/2, 2]."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


class Checkpoint:
    """The tensors of an HF safetensors checkpoint (one file or an index of shards), read one at a time."""

    def __init__(self, path: str):
        from safetensors import safe_open

        cfg_path = os.path.join(path, "config.json")
        if not os.path.isfile(cfg_path):
            raise InputError(f"checkpoint not found (no config.json): {path}")
        with open(cfg_path) as fh:
            self.config = json.load(fh)
        index = os.path.join(path, "model.safetensors.index.json")
        if os.path.isfile(index):
            with open(index) as fh:
                files = sorted(set(json.load(fh)["weight_map"].values()))
        elif os.path.isfile(os.path.join(path, "model.safetensors")):
            files = ["model.safetensors"]
        else:
            raise InputError(f"no model.safetensors(.index.json) in {path}")
        self._where = {}
        self._handles = []
        for f in files:
            h = safe_open(os.path.join(path, f), framework="pt")
            self._handles.append(h)
            self._where.update({k: h for k in h.keys()})

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._where[name].get_slice(name).get_shape())

    def get(self, name: str) -> np.ndarray:
        if name not in self._where:
            raise InputError(f"checkpoint has no tensor {name}")
        return self._where[name].get_tensor(name).float().numpy()


def lm_shape(config: dict) -> dict:
    t = config["text_config"]
    heads = t["num_attention_heads"]
    rope = t.get("rope_parameters") or {}
    return {"hidden": t["hidden_size"], "layers": t["num_hidden_layers"], "heads": heads,
            "kv_heads": t.get("num_key_value_heads") or heads, "intermediate": t["intermediate_size"],
            "head_dim": t.get("head_dim") or t["hidden_size"] // heads, "vocab": t["vocab_size"],
            "rope_theta": float(rope.get("rope_theta", t.get("rope_theta", 10000.0))),
            "rms_eps": float(t["rms_norm_eps"]), "context": t.get("max_position_embeddings", 4096)}


def _image_embeddings(ck: Checkpoint) -> np.ndarray:
    """generation_aligner(generation_embeddings[c]) for every code c: [image_vocab, hidden] fp32."""
    import torch
    from transformers.activations import ACT2FN

    act = ACT2FN[ck.config["vq_config"].get("hidden_act", "gelu")]
    with torch.no_grad():
        h = torch.from_numpy(ck.get("model.generation_embeddings.weight"))
        h = torch.nn.functional.linear(h, torch.from_numpy(ck.get("model.generation_aligner.fc1.weight")),
                                       torch.from_numpy(ck.get("model.generation_aligner.fc1.bias")))
        i = 0
        while f"model.generation_aligner.hidden_layers.{i}.weight" in ck:
            p = f"model.generation_aligner.hidden_layers.{i}."
            h = torch.nn.functional.linear(act(h), torch.from_numpy(ck.get(p + "weight")),
                                           torch.from_numpy(ck.get(p + "bias")))
            i += 1
        return h.numpy().astype(np.float32)


def _plan(ck: Checkpoint, s: dict, head: str) -> list[tuple[str, tuple[int, ...], object]]:
    """[(gguf name, shape, loader)] in file order; loaders run one at a time while writing."""
    if head == "text":
        embd = ("token_embd.weight", ck.shape(LM + "embed_tokens.weight"), lambda: ck.get(LM + "embed_tokens.weight"))
        out = ("output.weight", ck.shape("lm_head.weight"), lambda: ck.get("lm_head.weight"))
    else:
        n_codes = ck.shape("model.generation_embeddings.weight")[0]
        embd = ("token_embd.weight", (n_codes, s["hidden"]), lambda: _image_embeddings(ck))
        w = "model.generation_head.vision_head.weight"
        out = ("output.weight", ck.shape(w), lambda: ck.get(w))
    plan = [embd]
    for i in range(s["layers"]):
        for hf, gg in LAYER_NAMES.items():
            name = f"{LM}layers.{i}.{hf}.weight"
            if gg == "attn_q":
                load = (lambda n=name: permute(ck.get(n), s["heads"]))
            elif gg == "attn_k":
                load = (lambda n=name: permute(ck.get(n), s["kv_heads"]))
            else:
                load = (lambda n=name: ck.get(n))
            plan.append((f"blk.{i}.{gg}.weight", ck.shape(name), load))
    plan.append(("output_norm.weight", ck.shape(LM + "norm.weight"), lambda: ck.get(LM + "norm.weight")))
    plan.append(out)
    return plan


def convert(ckpt: str, out: str, head: str = "text") -> dict:
    """Write the F32 GGUF of `ckpt`'s language model to `out`; -> the shape metadata written."""
    import gguf

    if head not in ("text", "image"):
        raise InputError(f"unknown head {head!r}; choose text or image")
    ck = Checkpoint(ckpt)
    s = lm_shape(ck.config)
    plan = _plan(ck, s, head)
    vocab = plan[0][1][0]
    if plan[-1][1][0] != vocab:
        raise InputError(f"output rows {plan[-1][1][0]} != token_embd rows {vocab}")
    tmp = f"{out}.tmp-{os.getpid()}"
    w = gguf.GGUFWriter(tmp, "llama")
    try:
        w.add_name(f"janus-lm-{head}-head")
        w.add_context_length(int(s["context"]))
        w.add_embedding_length(s["hidden"])
        w.add_block_count(s["layers"])
        w.add_feed_forward_length(s["intermediate"])
        w.add_head_count(s["heads"])
        w.add_head_count_kv(s["kv_heads"])
        w.add_rope_dimension_count(s["head_dim"])
        w.add_key_length(s["head_dim"])
        w.add_value_length(s["head_dim"])
        w.add_rope_freq_base(s["rope_theta"])
        w.add_layer_norm_rms_eps(s["rms_eps"])
        w.add_vocab_size(vocab)
        w.add_file_type(0)  # LLAMA_FTYPE_ALL_F32
        w.add_tokenizer_model("none")  # token ids only: llama.cpp adds vocab_size dummy tokens
        for name, shape, _ in plan:
            w.add_tensor_info(name, shape, np.dtype(np.float32), int(np.prod(shape)) * 4)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for name, shape, load in plan:
            a = np.ascontiguousarray(load(), dtype=np.float32)
            if a.shape != tuple(shape):
                raise InputError(f"{name}: shape {a.shape}, expected {shape}")
            w.write_tensor_data(a)
        w.close()
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return {**s, "vocab": vocab, "head": head}


def quantize(src: str, dst: str, qtype: str, threads: int | None = None) -> str:
    """llama.cpp's own quantizer (llama_model_quantize, default options) from an F32 GGUF."""
    import llama_cpp

    if qtype not in QUANT_FTYPES:
        raise InputError(f"unknown llama.cpp type {qtype!r}; choose from {', '.join(QUANT_FTYPES)}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANT_FTYPES[qtype]
    params.nthread = threads or os.cpu_count() or 1
    tmp = f"{dst}.tmp-{os.getpid()}"
    try:
        rc = llama_cpp.llama_model_quantize(src.encode(), tmp.encode(), params)
        if rc != 0:
            raise RuntimeError(f"llama_model_quantize({src} -> {qtype}) returned {rc}")
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return dst


def tensor_types(path: str) -> dict:
    """{ggml type name: [tensor count, bytes]} and the bytes a decode step reads (all but token_embd)."""
    from gguf import GGUFReader

    r = GGUFReader(path)
    types: dict = {}
    step = 0
    for t in r.tensors:
        name = t.tensor_type.name
        c = types.setdefault(name, [0, 0])
        c[0] += 1
        c[1] += int(t.n_bytes)
        if t.name != "token_embd.weight":
            step += int(t.n_bytes)
    out = {"file_bytes": os.path.getsize(path), "weight_bytes_per_step": step, "types": types}
    out["output_type"] = next(t.tensor_type.name for t in r.tensors if t.name == "output.weight")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m janus_edge.benchmarks.gguf_convert", description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("out")
    ap.add_argument("--head", default="text", choices=("text", "image"))
    ap.add_argument("--quantize", default="", help="comma list of llama.cpp types to write beside OUT: Q8_0,Q4_0")
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args(argv)
    try:
        info = convert(a.checkpoint, a.out, a.head)
        print(f"wrote {a.out}: {json.dumps(info)}")
        for q in [x for x in a.quantize.split(",") if x]:
            dst = quantize(a.out, a.out[:-5] + f"-{q}.gguf" if a.out.endswith(".gguf") else f"{a.out}-{q}", q,
                           a.threads)
            print(f"wrote {dst}: {json.dumps(tensor_types(dst)['types'])}")
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
