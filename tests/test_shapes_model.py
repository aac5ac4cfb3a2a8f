"""The trained shapes model through the runtime: its pictures match their prompts and its answers are right
(ShapeEval), planted faults in a bundle fail those checks, and it agrees with transformers token for token.

Thresholds sit well under what the committed model measures (docs/shapes.md) and well over what a broken model
gets; each fault test below shows the check failing on one planted fault.
"""
import os
import shutil

import numpy as np
import pytest

from janus_edge.shapes import scenes as S

pytest.importorskip("onnx", reason="the export toolchain is not installed")

from shapes_checks import check_chat, check_generation  # noqa: E402


@pytest.fixture(scope="module")
def pipe(shapes_bundle):
    from janus_edge import Pipeline

    return Pipeline.from_bundle(shapes_bundle)


def test_generated_pictures_match_their_prompts(pipe):
    check_generation(pipe)


def test_chat_answers_drawn_scenes(pipe):
    check_chat(pipe)


# ---- planted faults: the same checks on a bundle with one thing broken ---------------------------------------
def _faulty_bundle(src: str, dst: str, graph: str, edit) -> str:
    """A copy of `src` whose `graph` has `edit(initializers by name)` applied, manifest sha256 updated."""
    import onnx
    from onnx import numpy_helper

    from janus_edge import contract as C

    shutil.copytree(src, dst)
    path = os.path.join(dst, f"{graph}.onnx")
    model = onnx.load(path)
    inits = {t.name: t for t in model.graph.initializer}
    arrays = {n: numpy_helper.to_array(t) for n, t in inits.items()}
    for name, new in edit(arrays).items():
        inits[name].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(new).astype(arrays[name].dtype), name))
    onnx.save(model, path)
    m = C.load_manifest(dst)
    m.files[f"{graph}.onnx"] = C.sha256_file(path)
    m.save(dst)
    return dst


def _pipe(path):
    from janus_edge import Pipeline

    return Pipeline.from_bundle(path)


def test_fault_shuffled_gen_head_rows_is_caught(shapes_bundle, tmp_path):
    """The image-code rows of the generation head permuted: the logits name the wrong codes."""
    def edit(a):
        perm = np.random.default_rng(0).permutation(512)
        return {n: (w[perm] if w.shape[0] == 512 else w[:, perm]) for n, w in a.items() if 512 in w.shape}

    bad = _pipe(_faulty_bundle(shapes_bundle, str(tmp_path / "b"), "gen_head", edit))
    with pytest.raises(AssertionError, match="ShapeEval"):
        check_generation(bad)


def test_fault_wrong_codebook_row_order_is_caught(shapes_bundle, tmp_path):
    """The VQ decoder's code book rows in the wrong order: every code draws another code's patch."""
    def edit(a):
        perm = np.random.default_rng(1).permutation(512)
        return {n: w[perm] for n, w in a.items() if w.ndim == 2 and w.shape[0] == 512}

    bad = _pipe(_faulty_bundle(shapes_bundle, str(tmp_path / "b"), "vq_decoder", edit))
    with pytest.raises(AssertionError, match="ShapeEval"):
        check_generation(bad)


@pytest.mark.parametrize("check", [check_generation, check_chat])
def test_fault_zeroed_layer_is_caught(shapes_bundle, tmp_path, check):
    """Every weight of the LM's first decoder layer zeroed (the layer then adds nothing): both directions fail."""
    def edit(a):
        hit = {n: np.zeros_like(w) for n, w in a.items() if ".layers.0." in f".{n}" or n.startswith("layers.0.")}
        assert hit, sorted(a)[:20]
        return hit

    bad = _pipe(_faulty_bundle(shapes_bundle, str(tmp_path / "b"), "lm", edit))
    with pytest.raises(AssertionError):
        check(bad)


# ---- parity with transformers ------------------------------------------------------------------------------------
@pytest.mark.parametrize("caption", ["a red circle in the top left", "a yellow triangle in the bottom right",
                                     "a blue square in the center"])
def test_greedy_image_tokens_equal_transformers(pipe, shapes_model, caption):
    torch = pytest.importorskip("torch")
    ids = pipe.prompt_ids(caption)
    inp = torch.tensor([ids])
    with torch.no_grad():
        ref = shapes_model.generate(inputs=inp, attention_mask=torch.ones_like(inp), generation_mode="image",
                                    do_sample=False, guidance_scale=5.0).numpy()
    assert len(np.unique(ref)) >= 4, f"reference uses {len(np.unique(ref))} distinct codes"  # a picture, not one code
    ours = pipe.generate_image(input_ids=ids, cfg_weight=5.0, temperature=0, decode=False).tokens
    assert ours.shape == ref.shape == (1, pipe.dims.num_image_tokens)
    assert (ours == ref).all(), f"first mismatch at {np.argwhere(ours != ref)[0]}"


def test_greedy_chat_equals_transformers(pipe, shapes_model, shapes_ckpt):
    torch = pytest.importorskip("torch")
    from transformers import JanusProcessor

    processor = JanusProcessor.from_pretrained(shapes_ckpt)
    scenes = [S.Scene(*t) for t in S.all_triples()[5::27]]
    images = [S.draw(s) for s in scenes]
    answers = set()
    for scene, img in zip(scenes, images):
        for q in S.QUESTIONS.values():
            conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}]
            text = processor.apply_chat_template(conv, add_generation_prompt=True)
            inputs = processor(text=text, images=[img], return_tensors="pt")
            with torch.no_grad():
                out = shapes_model.generate(**inputs, max_new_tokens=6, do_sample=False, generation_mode="text")
            ref = out[0, inputs["input_ids"].shape[1]:].tolist()
            ids, _ = pipe.chat_inputs(q, [img])
            assert inputs["input_ids"][0].tolist() == ids
            ours = list(pipe.chat_token_ids(q, [img], max_new_tokens=6))
            assert ours == ref[:len(ours)] and (len(ours) == len(ref) or ref[len(ours)] in pipe.stop_ids())
            answers.add(pipe.chat(q, images=[img], max_new_tokens=6))
    assert len(answers) >= 6, answers  # the reference answers vary with the picture and question


def test_init_writes_the_trained_checkpoint_and_init_random_is_an_alias(tmp_path, capsys):
    pytest.importorskip("torch")
    from safetensors.numpy import load_file

    from janus_edge.cli import main
    from janus_edge.export.shapes_model import WEIGHTS_FILE

    assert main(["init", "--preset", "shapes", "--out", str(tmp_path / "s")]) == 0
    ours = load_file(str(tmp_path / "s" / "model.safetensors"))
    committed = load_file(WEIGHTS_FILE)
    key = "model.generation_head.vision_head.weight"
    assert ours[key].dtype == np.float32 and (ours[key] == committed[key].astype(np.float32)).all()
    for f in ("config.json", "generation_config.json", "tokenizer.json", "processor_config.json"):
        assert (tmp_path / "s" / f).is_file()
    assert main(["init-random", "--preset", "tiny", "--out", str(tmp_path / "t")]) == 0
    assert main(["init", "--preset", "shapes", "--dtype", "float16", "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: ")
    assert not (tmp_path / "x").exists()
