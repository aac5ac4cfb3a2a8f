"""init_random: the written checkpoint loads in transformers (model, processor, tokenizer) as a published one does."""
from __future__ import annotations

import json
import os

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from PIL import Image  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

from janus_edge.errors import CheckpointError  # noqa: E402
from janus_edge.export.init_random import init_random  # noqa: E402
from janus_edge.export.presets import PRESETS, make_config  # noqa: E402
from janus_edge.export.tokenizer_build import (BOI, BOS, EOI, IMAGE, PAD, PRO_IDS, SPECIAL_TEXT,  # noqa: E402
                                               TINY_IDS, build_tokenizer)

SYSTEM = ("You are a helpful language and vision assistant. You are able to understand the visual content that "
          "the user provides, and assist the user with a variety of tasks using natural language.")


@pytest.fixture(scope="module")
def processor(tiny_ckpt):
    return transformers.JanusProcessor.from_pretrained(tiny_ckpt)


def test_files(tiny_ckpt):
    names = set(os.listdir(tiny_ckpt))
    for f in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
              "tokenizer_config.json", "processor_config.json", "preprocessor_config.json"):
        assert f in names
    assert not [n for n in os.listdir(os.path.dirname(tiny_ckpt)) if ".tmp-" in n]


def test_transformers_loads_model(tiny_ckpt):
    model, info = transformers.JanusForConditionalGeneration.from_pretrained(tiny_ckpt, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert model.config.image_token_id == TINY_IDS["image"]
    assert model.config.vision_config.num_image_tokens == 64
    assert model.config.vq_config.num_patches == 8
    # The original model has a separate lm_head; ours too.
    assert model.lm_head.weight.data_ptr() != model.model.language_model.embed_tokens.weight.data_ptr()


def test_generation_config(tiny_ckpt):
    gen = json.load(open(os.path.join(tiny_ckpt, "generation_config.json")))
    assert gen["bos_token_id"] == TINY_IDS["bos"] and gen["eos_token_id"] == TINY_IDS["eos"]
    assert gen["pad_token_id"] == TINY_IDS["pad"]
    assert gen["generation_kwargs"]["boi_token_id"] == TINY_IDS["boi"]
    assert gen["guidance_scale"] == 5


def test_processor_expands_image_placeholder(processor):
    assert processor.num_image_tokens == 64 and processor.use_default_system_prompt
    out = processor(text=f"{IMAGE}\nhi", images=[Image.new("RGB", (200, 100), (255, 0, 0))])
    ids = out["input_ids"][0].tolist()
    assert ids[0] == TINY_IDS["bos"]
    assert ids.count(TINY_IDS["image"]) == 64
    start = ids.index(TINY_IDS["boi"])
    assert ids[start + 1:start + 65] == [TINY_IDS["image"]] * 64 and ids[start + 65] == TINY_IDS["eoi"]
    pix = out["pixel_values"]
    assert tuple(pix.shape) == (1, 3, 128, 128)
    assert torch.allclose(pix[0, :, 0, 0], torch.full((3,), 127 / 255 * 2 - 1))  # padded with gray 127


def test_chat_template_gives_official_prompt(processor):
    conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in this picture?"}]}]
    prompt = processor.apply_chat_template(conv, add_generation_prompt=True)
    assert prompt == "<|User|>: <image_placeholder>\nWhat is in this picture?\n\n<|Assistant|>:"
    two = conv + [{"role": "assistant", "content": [{"type": "text", "text": "A fox."}]},
                  {"role": "user", "content": "And?"}]
    assert processor.apply_chat_template(two, add_generation_prompt=True).endswith(
        "<|Assistant|>: A fox.<｜end▁of▁sentence｜><|User|>: And?\n\n<|Assistant|>:")
    ids = processor(text=prompt, images=[Image.new("RGB", (64, 64))])["input_ids"][0].tolist()
    text = processor.tokenizer.decode(ids[:ids.index(TINY_IDS["boi"])])
    assert text == f"{BOS}{SYSTEM}\n\n<|User|>: "


def test_tokenizer_adds_bos_and_keeps_specials(tiny_ckpt, processor):
    tok = Tokenizer.from_file(os.path.join(tiny_ckpt, "tokenizer.json"))  # what the runtime reads
    ids = tok.encode("<|User|>: a red fox\n\n<|Assistant|>:" + BOI).ids
    assert ids[0] == TINY_IDS["bos"] and ids[1] == TINY_IDS["user"] and ids[-1] == TINY_IDS["boi"]
    assert TINY_IDS["assistant"] in ids
    assert tok.encode("a red fox", add_special_tokens=False).ids[0] != TINY_IDS["bos"]
    hf = processor.tokenizer
    assert hf("hi")["input_ids"][0] == TINY_IDS["bos"]
    assert (hf.image_token, hf.boi_token, hf.eoi_token) == (IMAGE, BOI, EOI)
    assert hf.pad_token == PAD and hf.pad_token_id == TINY_IDS["pad"]
    for name, text in SPECIAL_TEXT.items():
        assert tok.token_to_id(text) == TINY_IDS[name]
    assert tok.decode(tok.encode("The quick brown fox.").ids) == "The quick brown fox."


def test_pro_tokenizer_ids():
    tok = build_tokenizer("pro-1b")
    assert tok.get_vocab_size() == 102400
    for name, text in SPECIAL_TEXT.items():
        assert tok.token_to_id(text) == PRO_IDS[name]
    ids = tok.encode("<|User|>: a red fox\n\n<|Assistant|>:<begin_of_image>").ids
    assert ids[0] == 100000 and ids[-1] == 100016 and max(ids[1:-1]) < 102400


def test_pro_configs():
    c1, c7 = make_config("pro-1b"), make_config("pro-7b")
    t = c1.text_config
    assert (t.hidden_size, t.num_hidden_layers, t.num_attention_heads, t.num_key_value_heads) == (2048, 24, 16, 16)
    assert (t.intermediate_size, t.vocab_size, t.max_position_embeddings) == (5632, 102400, 16384)
    assert t.rms_norm_eps == 1e-6 and c1.image_token_id == 100581
    v, q = c1.vision_config, c1.vq_config
    assert (v.hidden_size, v.num_hidden_layers, v.image_size, v.patch_size, v.num_image_tokens) == (1024, 24, 384, 16,
                                                                                                     576)
    assert v.projection_dim == q.projection_dim == q.image_token_embed_dim == 2048
    assert (q.num_embeddings, q.embed_dim, q.num_patches) == (16384, 8, 24)
    t7 = c7.text_config
    assert (t7.hidden_size, t7.num_hidden_layers, t7.num_attention_heads, t7.intermediate_size) == (4096, 30, 32,
                                                                                                   11008)
    assert c7.vision_config.projection_dim == c7.vq_config.projection_dim == 4096
    assert set(PRESETS) == {"tiny", "shapes", "pro-1b", "pro-7b"}


def test_seeded_and_refuses_existing(tmp_path, tiny_ckpt):
    out = str(tmp_path / "again")
    init_random("tiny", out, seed=0)
    a, b = load_file(os.path.join(tiny_ckpt, "model.safetensors")), load_file(os.path.join(out, "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(CheckpointError, match="already exists"):
        init_random("tiny", out, seed=1)
    init_random("tiny", out, seed=1, force=True)
    c = load_file(os.path.join(out, "model.safetensors"))
    assert not torch.equal(a["lm_head.weight"], c["lm_head.weight"])
    assert sorted(os.listdir(tmp_path)) == ["again"]


def test_unknown_preset(tmp_path):
    with pytest.raises(CheckpointError, match="unknown preset"):
        init_random("huge", str(tmp_path / "x"))


def test_fp16_forward_is_finite(tiny_ckpt):
    model = transformers.JanusForConditionalGeneration.from_pretrained(tiny_ckpt, dtype=torch.float16).eval()
    ids = torch.tensor([[TINY_IDS["bos"], 5, 6, 7, TINY_IDS["boi"]]])
    with torch.no_grad():  # (the VQ decoder is left out: fp16 convolutions are very slow on the CPU)
        hidden = model.model(input_ids=ids).last_hidden_state
        logits = model.model.generation_head(hidden)
        features = model.model.get_image_features(torch.randn(1, 3, 128, 128, dtype=torch.float16))
    features = features if torch.is_tensor(features) else features.pooler_output
    assert torch.isfinite(hidden).all() and torch.isfinite(logits).all() and torch.isfinite(features).all()
