"""The ORT runtime against transformers' own generate loops on the same tiny checkpoint.

The tiny LM is random: its greedy image tokens are nearly constant (2-5 distinct codes of 64), so the image-token
tests here check the CFG plumbing (rows, weights, n) and little else. Parity on diverse references (a trained LM,
real text, varied image tokens) is tests/test_trained_lm.py.
"""
import numpy as np
import pytest
import torch

from janus_edge import Pipeline

PROMPTS = ["a red fox in snow", "A portrait of young girl. masterpiece, film grained, best quality.", "x"]


@pytest.fixture(scope="module")
def pipe(tiny_bundle):
    return Pipeline.from_bundle(tiny_bundle)


def hf_image_tokens(model, ids, n, w):
    inp = torch.tensor([ids] * n)
    with torch.no_grad():
        out = model.generate(inputs=inp, attention_mask=torch.ones_like(inp), generation_mode="image",
                             do_sample=False, guidance_scale=w)
    return out.numpy()


@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize("w,n", [(5.0, 1), (1.5, 2), (5.0, 2)])
def test_greedy_image_tokens_equal_transformers(pipe, tiny_model, prompt, w, n):
    ids = pipe.prompt_ids(prompt)
    ours = pipe.generate_image(input_ids=ids, n=n, cfg_weight=w, temperature=0, decode=False).tokens
    ref = hf_image_tokens(tiny_model, ids, n, w)
    assert ours.shape == ref.shape == (n, pipe.dims.num_image_tokens)
    assert (ours == ref).all(), f"first mismatch at {np.argwhere(ours != ref)[0]}"


def test_prompt_and_input_ids_give_the_same_result(pipe):
    a = pipe.generate_image("a red fox in snow", temperature=0)
    b = pipe.generate_image(input_ids=a.prompt_ids, temperature=0)
    assert (a.tokens == b.tokens).all()
    assert a.prompt_ids[0] == pipe.bundle.tokens["bos"] and a.prompt_ids[-1] == pipe.bundle.tokens["boi"]


def test_prompt_ids_match_the_official_template(pipe, tiny_ckpt):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_ckpt)
    text = "<|User|>: a red fox\n\n<|Assistant|>:<begin_of_image>"
    assert pipe.prompt_ids("a red fox") == tok(text).input_ids


@pytest.mark.parametrize("prompt", PROMPTS + ["  a red fox in snow \n"])
def test_prompt_ids_equal_what_transformers_processor_builds(pipe, tiny_ckpt, prompt):
    """transformers' recipe for image generation: chat template, then the processor in generation_mode="image"."""
    from transformers import JanusProcessor

    processor = JanusProcessor.from_pretrained(tiny_ckpt)
    text = processor.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": prompt}]}],
                                         add_generation_prompt=True)
    assert pipe.prompt_ids(prompt) == processor(text=text, generation_mode="image")["input_ids"][0].tolist()


def test_cfg_1_runs_without_unconditional_rows(pipe, tiny_model):
    ids = pipe.prompt_ids("a red fox in snow")
    ours = pipe.generate_image(input_ids=ids, n=2, cfg_weight=1.0, temperature=0, decode=False).tokens
    # reference: transformers' model, conditional rows only, argmax of the generation head
    T = pipe.dims.num_image_tokens
    with torch.no_grad():
        m = tiny_model
        emb = m.get_input_embeddings()(torch.tensor([ids] * 2))
        out = m.model.language_model(inputs_embeds=emb, use_cache=True)
        toks = []
        for _ in range(T):
            t = m.model.generation_head(out.last_hidden_state[:, -1]).argmax(-1)
            toks.append(t)
            out = m.model.language_model(inputs_embeds=m.prepare_embeddings_for_image_generation(t[:, None]),
                                         past_key_values=out.past_key_values, use_cache=True)
    assert (ours == torch.stack(toks, 1).numpy()).all()


def hf_chat_ids(model, processor, question, image, max_new_tokens):
    conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    text = processor.apply_chat_template(conv, add_generation_prompt=True)
    inputs = processor(text=text, images=[image], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return inputs["input_ids"][0].tolist(), out[0, inputs["input_ids"].shape[1]:].tolist()


@pytest.mark.parametrize("question", ["What is in this picture?", "Describe it.", "  Describe it. "])
def test_greedy_chat_equals_transformers(pipe, tiny_model, tiny_ckpt, sample_image, question):
    from transformers import JanusProcessor

    processor = JanusProcessor.from_pretrained(tiny_ckpt)
    ref_prompt, ref_new = hf_chat_ids(tiny_model, processor, question, sample_image, 24)
    ids, _ = pipe.chat_inputs(question, [sample_image])
    assert ids == ref_prompt  # the same prompt as the published processor builds
    ours = list(pipe.chat_token_ids(question, [sample_image], max_new_tokens=24))
    stops = pipe.stop_ids()
    cut = next((i for i, t in enumerate(ref_new) if t in stops), len(ref_new))
    assert cut >= 24 and len(set(ref_new[:cut])) >= 12  # a reference that runs on, not a stop or a repeated token
    assert ours == ref_new[:cut + 1]
    # the answer is transformers' decode of the same ids (the CLI prints it and a newline)
    assert pipe.chat(question, [sample_image], max_new_tokens=24) == processor.decode(ref_new[:cut],
                                                                                      skip_special_tokens=True)


def test_image_preprocessing_matches_transformers(pipe, tiny_ckpt, sample_image):
    from transformers import JanusImageProcessor

    ref = JanusImageProcessor.from_pretrained(tiny_ckpt)(sample_image, return_tensors="np")["pixel_values"][0]
    ours = pipe._pixels([sample_image])[0]
    assert ours.shape == ref.shape
    # normalised with mean = std = 0.5, one grey level is 2/255 here; measured: 1.5e-5 levels
    assert np.abs(ours - ref).max() <= 2 / 255  # PIL vs transformers resize rounding: within 1 level


def test_vq_round_trip_matches_transformers(pipe, tiny_model, sample_image):
    codes = pipe.encode_image(sample_image)
    assert codes.shape == (pipe.dims.num_image_tokens,)
    px = torch.from_numpy(pipe._pixels([sample_image]))
    with torch.no_grad():
        ref = tiny_model.model.vqmodel.encode(px).image_tokens.view(1, -1).numpy()[0]
        ref_img = tiny_model.decode_image_tokens(torch.from_numpy(codes[None]))[0].numpy()
    assert (codes == ref).mean() >= 0.99
    img = pipe.decode_tokens(codes)[0]
    expect = np.clip((ref_img + 1) / 2 * 255, 0, 255).astype(np.uint8)
    assert img.size == (pipe.dims.image_size,) * 2
    assert np.abs(np.asarray(img).astype(int) - expect).max() <= 1
