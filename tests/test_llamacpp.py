"""The llama.cpp side-by-side benchmark's GGUF conversion (benchmarks/gguf_convert.py, benchmarks/llamacpp.py).

The conversion is checked where it can fail: llama.cpp's logits of the F32 GGUF against transformers' language
model on the same tiny random weights (text head: lm_head; image head: vision_head over the aligned image-code
embeddings), and llama.cpp's own Q8_0 / Q4_0 files against the F32 one. Needs llama-cpp-python (optional, not a
janus-edge dependency): skipped with the reason without it.
"""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from janus_edge.benchmarks import gguf_convert as G
from janus_edge.benchmarks import llamacpp as LC

TOKENS = [5, 17, 300, 2, 499, 64, 64, 128, 7, 511, 42, 1]  # < 512: valid text ids and image codes of `tiny`
GGML_F32 = 0
QK_SCALE = 6.0


def _need_llamacpp():
    reason = LC.missing()
    if reason:
        pytest.skip(reason)


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def _llama_logits(path: str, tokens: list[int]) -> np.ndarray:
    lc = LC.LlamaCpp(path, threads=2, n_ctx=256, n_seq=1, n_batch=64, kv_type=GGML_F32)
    try:
        return lc.decode([tokens], 0, all_logits=True).copy()
    finally:
        lc.close()


@pytest.fixture(scope="module")
def sharp_ckpt(tiny_ckpt, tmp_path_factory) -> str:
    """`tiny` with q_proj / k_proj scaled by QK_SCALE: the random init's attention is nearly uniform (scores ~0.1),
    so a wrong rotary layout (no Q/K permutation) would move the logits by only ~5e-5 in cosine; with peaked
    attention it moves them far."""
    from safetensors.numpy import load_file, save_file

    d = tmp_path_factory.mktemp("sharp") / "ckpt"
    shutil.copytree(tiny_ckpt, d)
    sd = load_file(str(d / "model.safetensors"))
    for k in sd:
        if k.endswith(("self_attn.q_proj.weight", "self_attn.k_proj.weight")):
            sd[k] = sd[k] * QK_SCALE
    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
    return str(d)


@pytest.fixture(scope="module")
def sharp_model(sharp_ckpt):
    from janus_edge.export.checkpoint import load_checkpoint

    return load_checkpoint(sharp_ckpt).model


@pytest.fixture(scope="module")
def ggufs(sharp_ckpt, tmp_path_factory):
    d = tmp_path_factory.mktemp("gguf")
    out = {h: str(d / f"{h}.gguf") for h in ("text", "image")}
    for h, p in out.items():
        G.convert(sharp_ckpt, p, head=h)
    return out


def _check(ours: np.ndarray, ref: np.ndarray) -> None:
    # fp32 weights and an fp32 KV cache: only summation order differs (tolerance: cosine >= 0.99999 per position,
    # max abs error <= 1e-3 of the largest logit)
    cos = _cos(ours, ref)
    assert cos.min() >= 0.99999, cos
    assert np.abs(ours - ref).max() <= 1e-3 * np.abs(ref).max(), np.abs(ours - ref).max()


def test_text_head_f32_matches_transformers(ggufs, sharp_model):
    _need_llamacpp()
    import torch

    with torch.no_grad():
        ids = torch.tensor([TOKENS])
        h = sharp_model.model.language_model(input_ids=ids).last_hidden_state
        ref = sharp_model.lm_head(h)[0].numpy()
    _check(_llama_logits(ggufs["text"], TOKENS), ref)


def test_image_head_f32_matches_transformers(ggufs, sharp_model):
    """token_embd = aligned image-code embeddings, output = vision_head (no bias, no proj_out: see gguf_convert)."""
    _need_llamacpp()
    import torch

    with torch.no_grad():
        emb = sharp_model.prepare_embeddings_for_image_generation(torch.tensor([TOKENS]))
        h = sharp_model.model.language_model(inputs_embeds=emb).last_hidden_state
        ref = (h @ sharp_model.model.generation_head.vision_head.weight.T)[0].numpy()
    _check(_llama_logits(ggufs["image"], TOKENS), ref)


@pytest.mark.parametrize("qtype,min_cos", [("Q8_0", 0.999), ("Q4_0", 0.95)])
def test_llamacpp_quantized(ggufs, tmp_path, qtype, min_cos):
    _need_llamacpp()
    dst = G.quantize(ggufs["text"], str(tmp_path / f"text-{qtype}.gguf"), qtype, threads=2)
    types = G.tensor_types(dst)["types"]
    assert qtype in types and types[qtype][0] >= 7 * 2, types  # the 2 layers' weight matrices at least
    cos = _cos(_llama_logits(dst, TOKENS), _llama_logits(ggufs["text"], TOKENS))
    assert min_cos <= cos.min() < 1.0 - 1e-7, cos  # close to F32, and not the F32 file itself


def test_no_llamacpp_rows_skip_with_reason(monkeypatch, tiny_bundle, tmp_path):
    """Without llama-cpp-python the side-by-side still runs our rows and records why llama.cpp's are absent."""
    import sys

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp -> ImportError
    monkeypatch.setattr(LC.importlib.util, "find_spec", lambda name: None)
    assert "llama-cpp-python is not installed" in LC.missing()
    cfg = LC.SideConfig(bundles={"fp32": tiny_bundle}, gguf_dir=str(tmp_path), json_out=str(tmp_path / "o.json"),
                        steps=2, threads=1, bandwidth_mb=8, phases=["chat"])
    res = LC.run(cfg)
    skipped = [r for r in res["results"] if r["side"] == "llama.cpp"]
    assert skipped and all("not installed" in r["skipped"] for r in skipped)
    assert [r["phase"] for r in res["results"] if r["side"] == "janus-edge"] == ["t2i", "chat"]
    assert res["comparison"] == []


def test_convert_bad_checkpoint(tmp_path, capsys):
    out = tmp_path / "x.gguf"
    assert G.main([str(tmp_path), str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "config.json" in err[0]
    assert not out.exists() and os.listdir(tmp_path) == []
