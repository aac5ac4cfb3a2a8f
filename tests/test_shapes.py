"""The shapes data and its detector (numpy + PIL), and the shapes training code kept alive on a few dozen steps."""
import numpy as np
import pytest

from janus_edge.shapes import scenes as S
from janus_edge.shapes.shapeeval import answer_correct, detect, image_correct


def test_grammar_and_held_out_triples():
    assert len(S.all_triples()) == 108
    assert len(S.HELD_OUT) == len(set(S.HELD_OUT)) == 12
    assert len(S.train_triples()) == 96 and not set(S.train_triples()) & set(S.HELD_OUT)
    seen = S.train_triples()
    for i, words in enumerate((S.COLORS, S.SHAPES, S.POSITIONS)):  # every word still seen in training
        assert {t[i] for t in seen} == set(words)
    scene = S.Scene("yellow", "triangle", "bottom right")
    assert scene.caption == "a yellow triangle in the bottom right"
    assert S.parse_caption(scene.caption) == scene
    with pytest.raises(ValueError):
        S.parse_caption("a purple triangle in the bottom right")
    assert S.Scene("red", "circle", "top left").triple not in S.HELD_OUT  # README command 1's prompt is seen


def test_scenes_are_seeded():
    a = S.scene_images(S.sample_scenes(8, 3), 4)
    b = S.scene_images(S.sample_scenes(8, 3), 4)
    c = S.scene_images(S.sample_scenes(8, 3), 5)
    assert a.shape == (8, S.SIZE, S.SIZE, 3) and a.dtype == np.uint8
    assert (a == b).all() and (a != c).any()


def test_detector_reads_drawn_scenes():
    """ShapeEval on the generator's own pictures, every triple, jittered: >= 99% exact (measured: 100% of 2000)."""
    scenes = S.sample_scenes(600, 11, S.all_triples())
    images = S.scene_images(scenes, 12)
    right = [image_correct(img, s)["all"] for s, img in zip(scenes, images)]
    assert np.mean(right) >= 0.99, f"{np.mean(right):.3f} exact"


def test_detector_sees_nothing_on_white_and_reads_answers():
    blank = np.full((S.SIZE, S.SIZE, 3), 255, np.uint8)
    assert not detect(blank).found
    assert answer_correct(" top left", "top left") and answer_correct("Red.", "red")
    assert not answer_correct("top", "top left") and not answer_correct("red circle", "red")


def test_training_code_runs_and_learns(tmp_path):
    """A few dozen steps of both stages on small batches: the losses fall, and transformers loads the result."""
    torch = pytest.importorskip("torch")
    from transformers import JanusForConditionalGeneration

    from janus_edge.export.shapes_train import TrainConfig, train_shapes

    out = train_shapes(TrainConfig(out=str(tmp_path / "ck"), vq_steps=16, lm_steps=24, vq_batch=4, lm_batch=4,
                                   n_images=48, progress=False))
    rows = [line.split("\t") for line in open(f"{out}/train_log.tsv").read().splitlines()[1:]]
    for stage, steps in (("vq", 16), ("lm", 24)):
        loss = [float(r[3]) for r in rows if r[0] == stage]
        assert len(loss) == steps
        assert np.mean(loss[-4:]) < 0.8 * np.mean(loss[:4]), f"{stage} loss did not fall: {loss}"
    model = JanusForConditionalGeneration.from_pretrained(out)
    book = model.model.vqmodel.quantize.embedding.weight
    assert torch.allclose(book.norm(dim=1), torch.ones(len(book)), atol=1e-5)  # stored L2-normalised


def test_training_prompts_are_the_runtime_prompts(shapes_bundle):
    """The ids training builds are exactly those the runtime feeds (t2i, its CFG row, chat with an image)."""
    from janus_edge import Pipeline
    from janus_edge.export.shapes_train import Prompts
    from janus_edge.export.tokenizer_build import TOKENIZER_SPECS, build_tokenizer
    from janus_edge.runtime import prompts

    pipe = Pipeline.from_bundle(shapes_bundle)
    P = Prompts(build_tokenizer("shapes"), TOKENIZER_SPECS["shapes"].ids, pipe.dims.num_image_tokens)
    for t in (S.all_triples()[0], S.all_triples()[-1]):
        cap = S.Scene(*t).caption
        assert pipe.prompt_ids(cap) == P.t2i(cap)
        assert prompts.uncond_ids(pipe.prompt_ids(cap), pipe.bundle.tokens) == P.uncond(P.t2i(cap))
    img = S.draw(S.Scene("red", "circle", "top"))
    for q in S.QUESTIONS.values():
        assert pipe.chat_inputs(q, [img])[0] == P.chat(q)


def test_blank_tokens_get_the_one_blank_code():
    """Training pins every all-white token to BLANK_CODE (so the LM learns one code for the background): the mask
    marks exactly the 4 x 4 patches without a coloured pixel."""
    torch = pytest.importorskip("torch")
    from janus_edge.export.shapes_model import new_model
    from janus_edge.export.shapes_train import BLANK_CODE, blank_tokens, to_pixels, vq_codes

    scenes = [S.Scene("red", "square", "top left"), S.Scene("blue", "triangle", "bottom right")]
    imgs = S.scene_images(scenes, 3)
    x = to_pixels(imgs)
    mask = blank_tokens(x, 8).view(2, 8, 8).numpy()
    want = (imgs.reshape(2, 8, 4, 8, 4, 3) == 255).all(axis=(2, 4, 5))
    assert (mask == want).all() and 0.7 < mask.mean() < 0.97
    with torch.no_grad():
        codes = vq_codes(new_model(0).model.vqmodel, x)[2].view(2, 8, 8).numpy()
    assert (codes[mask] == BLANK_CODE).all()
