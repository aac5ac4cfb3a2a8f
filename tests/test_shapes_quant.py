"""Quantized bundles of the trained shapes model: their pictures and answers still pass ShapeEval, and their greedy
pictures stay close to the fp32 bundle's. This replaces the tiny random model's near-constant image tokens (2-14
distinct codes, where "agreement > 0.5" held for almost any output) as the image-side check of quantization.

Each mode is quantized once a module with a small calibration on the shapes grammar (captions, drawn scenes).
Thresholds: docs/shapes.md (measured per mode in benchmarks/results/shapes_eval.md); a planted fault fails them
(tests/test_shapes_model.py shows the same checks failing on faulty fp32 bundles).
"""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx", reason="the export toolchain is not installed")

from shapes_checks import GREEDY, check_chat, check_generation  # noqa: E402

from janus_edge.shapes import scenes as S  # noqa: E402
from janus_edge.shapes.evaluate import SHAPES_CFG, agreement, generation_rows  # noqa: E402

CALIB = {"calib": {"n_prompts": 8, "image_steps": 64, "n_chats": 4, "chat_tokens": 4, "text_file": None}}
# mode -> (min greedy pictures right, min sampled, min chat, min greedy-token agreement with fp32)
# (measured on all 108 captions: greedy tokens equal fp32's 97.9% int8, 92.0% int4; pictures and chat as fp32's)
MINIMA = {"int8": (0.6, 0.5, 0.85, 0.85), "int4": (0.6, 0.5, 0.85, 0.75)}


@pytest.fixture(scope="module")
def calib_inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("shapes_calib")
    captions = [S.Scene(*t).caption for t in S.train_triples()[::6]]
    (d / "prompts.txt").write_text("\n".join(captions) + "\n")
    (d / "images").mkdir()
    from PIL import Image

    for i, a in enumerate(S.scene_images(S.sample_scenes(8, 77), 78)):
        Image.fromarray(a).save(d / "images" / f"{i}.png")
    return str(d / "prompts.txt"), str(d / "images")


@pytest.fixture(scope="module")
def fp_greedy(shapes_bundle):
    from janus_edge import Pipeline

    return generation_rows(Pipeline.from_bundle(shapes_bundle), GREEDY, n=1, cfg=SHAPES_CFG, temperature=0.0,
                           keep=True)


@pytest.fixture(scope="module", params=sorted(MINIMA))
def quantized(request, shapes_bundle, calib_inputs, tmp_path_factory):
    from janus_edge.quant.api import QuantOptions, quantize_bundle

    prompts, images = calib_inputs
    out = tmp_path_factory.mktemp("shapes_q") / request.param
    quantize_bundle(shapes_bundle, str(out), QuantOptions(mode=request.param, calib_prompts=prompts,
                                                          calib_images=images, report="none", force=True,
                                                          progress=False, extra=CALIB))
    return request.param, str(out)


def test_quantized_shapes_bundle_draws_and_answers(quantized, fp_greedy):
    from janus_edge import Pipeline

    mode, path = quantized
    min_greedy, min_sampled, min_chat, min_agree = MINIMA[mode]
    pipe = Pipeline.from_bundle(path)
    check_generation(pipe, min_greedy, min_sampled)
    check_chat(pipe, min_chat)
    ours = generation_rows(pipe, GREEDY, n=1, cfg=SHAPES_CFG, temperature=0.0, keep=True)
    v = agreement(ours, fp_greedy)
    assert v["greedy_token_agreement"] >= min_agree, (mode, v)
    assert len(np.unique(np.concatenate([r["tokens"] for r in fp_greedy]))) >= 20  # the reference is no near-constant


@pytest.mark.parametrize("quantized", ["int8"], indirect=True)  # measured once, on the int8 bundle
def test_quant_report_has_the_shapes_rows(quantized, shapes_bundle):
    """The full quantization report of a shapes bundle scores pictures and answers of both bundles with ShapeEval and
    compares the quantized pictures with the fp ones (issue 25's image rows); its image prompts are shapes captions."""
    from janus_edge.quant.report import build_report, markdown

    mode, path = quantized
    d = build_report(shapes_bundle, path, text_tokens=64, image_prompts=2, chat_questions=1, scope="full")
    assert all(S.parse_caption(p) for p in d["data"]["image_prompts"])
    sh = d["shapes"]
    assert sh["captions"] == 36 and sh["chat_scenes"] == 36
    assert sh["fp"]["greedy"]["all"] >= 0.6 and sh["quantized"]["greedy"]["all"] >= 0.6, sh
    assert 0.85 <= sh["vs_fp"]["greedy_token_agreement"] <= 1 and sh["vs_fp"]["psnr_db_min"] > 0, sh["vs_fp"]
    assert "## Pictures and answers (the shapes model" in markdown(d)
