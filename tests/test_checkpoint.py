"""load_checkpoint: HF and original deepseek-ai formats load to the same model; bad input gives one-line errors."""
from __future__ import annotations

import json
import os
import shutil

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from safetensors.torch import load_file, save_file  # noqa: E402

from janus_edge.errors import CheckpointError, InputError  # noqa: E402
from janus_edge.export.checkpoint import load_checkpoint  # noqa: E402
from janus_edge.export.original_format import (hf_to_original_config, original_to_hf_config,  # noqa: E402
                                               original_to_hf_state_dict, write_original)
from janus_edge.export.presets import make_config  # noqa: E402
from janus_edge.export.tokenizer_build import PRO_IDS, TINY_IDS  # noqa: E402


@pytest.fixture(scope="module")
def hf(tiny_ckpt):
    return load_checkpoint(tiny_ckpt)


@pytest.fixture(scope="module", params=[("bin", 1), ("safetensors", 2)], ids=["bin", "safetensors-sharded"])
def original_dir(request, tiny_ckpt, tmp_path_factory):
    weights, shards = request.param
    return write_original(tiny_ckpt, str(tmp_path_factory.mktemp("orig") / weights), weights=weights, shards=shards)


def _copy(src: str, tmp_path) -> str:
    dst = str(tmp_path / "ckpt")
    shutil.copytree(src, dst)
    return dst


def _one_line_error(path, match):
    with pytest.raises(CheckpointError, match=match) as e:
        load_checkpoint(path)
    assert "\n" not in str(e.value)


def test_hf_checkpoint(hf, tiny_ckpt):
    assert hf.format == "hf" and hf.tokenizer_dir == tiny_ckpt
    assert os.path.isfile(os.path.join(hf.tokenizer_dir, "tokenizer.json"))
    assert hf.special_tokens == TINY_IDS
    assert hf.image_preprocess == {"size": 128, "image_mean": [0.5] * 3, "image_std": [0.5] * 3, "resample": "bicubic",
                                   "background_color": [127] * 3, "rescale_factor": 1 / 255, "min_size": 14,
                                   "do_normalize": True}
    assert hf.use_default_system_prompt and hf.num_image_tokens == 64
    assert "<|Assistant|>:" in hf.chat_template
    assert not hf.model.training
    assert hf.model.config.text_config._attn_implementation == "eager"
    assert hf.model.config.vision_config._attn_implementation == "eager"
    assert next(hf.model.parameters()).dtype == torch.float32


def test_tiny_model_fixture(tiny_model):
    with torch.no_grad():
        logits = tiny_model(input_ids=torch.tensor([[TINY_IDS["bos"], 10, 11]])).logits
    assert logits.shape == (1, 3, 1024) and torch.isfinite(logits).all()


def test_original_equals_hf(hf, original_dir):
    orig = load_checkpoint(original_dir)
    assert orig.format == "original"
    assert orig.special_tokens == hf.special_tokens and orig.image_preprocess == hf.image_preprocess
    assert orig.use_default_system_prompt and orig.num_image_tokens == 64
    a, b = hf.model.state_dict(), orig.model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert orig.model.config.text_config._attn_implementation == "eager" and not orig.model.training
    ids = torch.tensor([[TINY_IDS["bos"], 10, 11, 12, TINY_IDS["boi"]]])
    codes = torch.randint(0, 512, (1, 64))
    with torch.no_grad():
        assert torch.equal(hf.model(input_ids=ids).logits, orig.model(input_ids=ids).logits)
        assert torch.equal(hf.model.decode_image_tokens(codes), orig.model.decode_image_tokens(codes))


def test_original_files(original_dir):
    names = set(os.listdir(original_dir))
    assert {"config.json", "tokenizer.json", "preprocessor_config.json", "processor_config.json"} <= names
    if "pytorch_model.bin" in names:
        sd = torch.load(os.path.join(original_dir, "pytorch_model.bin"), weights_only=True)
        assert "vision_model.vision_tower.blocks.0.attn.qkv.weight" in sd
        assert sd["vision_model.vision_tower.pos_embed"].shape == (1, 64, 32)
    else:
        assert "model.safetensors.index.json" in names
    cfg = json.load(open(os.path.join(original_dir, "config.json")))
    assert cfg["architectures"] == ["MultiModalityCausalLM"] and cfg["model_type"] == "multi_modality"


def test_original_config_layout_matches_published():
    cfg = hf_to_original_config(make_config("pro-1b"))
    assert cfg["vision_config"] == {"cls": "CLIPVisionTower", "model_type": "vision",
                                    "params": {"image_size": 384, "model_name": "siglip_large_patch16_384",
                                               "select_feature": "same", "select_layer": -1}}
    assert cfg["gen_vision_config"]["params"] == {"image_token_size": 16384, "n_embed": 8}
    assert cfg["gen_head_config"]["params"] == {"image_token_embed": 2048, "image_token_size": 16384, "n_embed": 2048}
    assert cfg["aligner_config"]["params"] == {"projector_type": "mlp_gelu", "depth": 2, "input_dim": 1024,
                                               "n_embed": 2048}
    assert cfg["language_config"]["num_hidden_layers"] == 24 and cfg["language_config"]["vocab_size"] == 102400
    back = original_to_hf_config(cfg, PRO_IDS)
    ref = make_config("pro-1b")
    for sub in ("text_config", "vision_config", "vq_config"):
        got, want = getattr(back, sub).to_dict(), getattr(ref, sub).to_dict()
        assert {k: v for k, v in got.items() if k != "dtype"} == {k: v for k, v in want.items() if k != "dtype"}


def test_original_key_names():
    t = torch.arange(12.0).reshape(6, 2)
    sd = {"vision_model.vision_tower.blocks.3.attn.qkv.weight": t,
          "vision_model.vision_tower.pos_embed": torch.zeros(1, 4, 2),
          "vision_model.vision_tower.attn_pool.latent": torch.zeros(1),
          "gen_vision_model.quantize.codebook_used": torch.zeros(1),
          "gen_vision_model.decoder.conv_blocks.0.res.2.conv1.weight": torch.zeros(1),
          "gen_vision_model.encoder.conv_blocks.4.attn.1.q.weight": torch.zeros(1),
          "gen_vision_model.encoder.mid.1.proj_out.bias": torch.zeros(1),
          "aligner.layers.2.weight": torch.zeros(1), "gen_aligner.layers.0.bias": torch.zeros(1),
          "gen_head.output_mlp_projector.weight": torch.zeros(1), "gen_embed.weight": torch.zeros(1),
          "language_model.model.norm.weight": torch.zeros(1), "language_model.lm_head.weight": torch.zeros(1),
          "something.else": torch.zeros(1)}
    out, unknown = original_to_hf_state_dict(sd)
    layer = "model.vision_model.encoder.layers.3.self_attn."
    assert torch.equal(out[layer + "q_proj.weight"], t[:2]) and torch.equal(out[layer + "v_proj.weight"], t[4:])
    assert out["model.vision_model.embeddings.position_embedding.weight"].shape == (4, 2)
    for key in ("model.vqmodel.decoder.up.0.block.2.conv1.weight", "model.vqmodel.encoder.down.4.attn.1.q.weight",
                "model.vqmodel.encoder.mid.attn_1.proj_out.bias", "model.aligner.hidden_layers.0.weight",
                "model.generation_aligner.fc1.bias", "model.generation_head.proj_out.weight",
                "model.generation_embeddings.weight", "model.language_model.norm.weight", "lm_head.weight"):
        assert key in out
    assert not any("attn_pool" in k or "codebook_used" in k for k in out)
    assert unknown == ["something.else"]


def test_float16_load(tiny_ckpt, original_dir):
    for path in (tiny_ckpt, original_dir):
        ck = load_checkpoint(path, dtype="float16")
        assert {p.dtype for p in ck.model.parameters()} == {torch.float16}
    with pytest.raises(InputError):
        load_checkpoint(tiny_ckpt, dtype="int3")


def test_missing_dir_and_config(tmp_path):
    _one_line_error(str(tmp_path / "nope"), "does not exist")
    (tmp_path / "empty").mkdir()
    _one_line_error(str(tmp_path / "empty"), "no config.json")


def test_broken_or_unknown_config(tiny_ckpt, tmp_path):
    path = _copy(tiny_ckpt, tmp_path)
    with open(os.path.join(path, "config.json"), "w") as fh:
        fh.write('{"model_type": "janus", ')
    _one_line_error(path, "broken JSON")
    with open(os.path.join(path, "config.json"), "w") as fh:
        json.dump({"model_type": "bert"}, fh)
    _one_line_error(path, "unknown model type 'bert'")


def test_hf_missing_tensors_and_shapes(tiny_ckpt, tmp_path):
    path = _copy(tiny_ckpt, tmp_path)
    weights = os.path.join(path, "model.safetensors")
    sd = load_file(weights)
    good = dict(sd)
    for k in [k for k in sd if k.startswith("model.aligner.")]:
        del sd[k]
    save_file(sd, weights, metadata={"format": "pt"})
    _one_line_error(path, r"missing 4 tensors \(e\.g\. model\.aligner\.fc1\.bias")
    good["model.generation_embeddings.weight"] = torch.zeros(3, 8)
    save_file(good, weights, metadata={"format": "pt"})
    _one_line_error(path, r"unexpected shapes: model\.generation_embeddings\.weight \(3, 8\)")
    os.remove(weights)
    _one_line_error(path, "no weight files")


def test_original_missing_tensors(tiny_ckpt, tmp_path):
    path = write_original(tiny_ckpt, str(tmp_path / "orig"), weights="bin")
    weights = os.path.join(path, "pytorch_model.bin")
    sd = torch.load(weights, weights_only=True)
    del sd["vision_model.vision_tower.blocks.1.attn.qkv.weight"]
    del sd["gen_head.vision_head.bias"]
    torch.save(sd, weights)
    _one_line_error(path, r"missing 2 tensors .*gen_head\.vision_head\.bias.*attn\.qkv\.weight")


def test_original_refuses_pickled_code(tiny_ckpt, tmp_path):
    path = write_original(tiny_ckpt, str(tmp_path / "orig"), weights="bin")
    torch.save({"x": Exploit()}, os.path.join(path, "pytorch_model.bin"))
    _one_line_error(path, "cannot read weights")


def test_original_bad_config(tiny_ckpt, tmp_path):
    path = write_original(tiny_ckpt, str(tmp_path / "orig"), weights="safetensors")
    cfg = json.load(open(os.path.join(path, "config.json")))
    cfg["gen_head_config"]["cls"] = "something_else"
    json.dump(cfg, open(os.path.join(path, "config.json"), "w"))
    _one_line_error(path, "bad original config.*gen_head_config")


class Exploit:
    """Any non-tensor class: weights_only loading must refuse to rebuild it."""
