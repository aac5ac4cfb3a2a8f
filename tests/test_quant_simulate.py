"""quant/simulate.py: torch fake quantization with the bundle's own plan (SmoothQuant vectors, activation scales,
kept weight-only MatMuls as ORT's 8-bit MatMulNBits runs them) reproduces what the ORT int8 bundle computes, on the
trained LM. The per-layer sensitivity table (benchmarks/quant_accuracy.py --per-layer) rests on it.

What "reproduces" means here: quantization error is chaotic through 30 layers (a rounding tie resolved differently
in one layer moves every later logit), so the simulated logits are not bit-equal to ORT's. The test measures the
*error vectors* against the fp logits instead: the simulator's error must point the way ORT's does (cosine), be of
the same size, and the simulated logits must lie much closer to ORT's than to fp's. Measured here (48 held-out tokens,
the default policy, this test's small calibration): relative error |ort - fp| 0.142, |sim - fp| 0.151, error cosine
0.96, |sim - ort| 0.043, argmax agreement 97.9%. A simulator that does not divide the activation by the SmoothQuant
vector (the weights still smoothed): |sim - fp| 1.41, the test fails.
"""
from __future__ import annotations

import copy
import os

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from janus_edge.quant import calib as CB  # noqa: E402
from janus_edge.quant import evaluate as E  # noqa: E402

# a minimal calibration that still reaches every graph quantized here (one t2i prompt with 2 CFG decode steps; one
# chat with an image for lm_head): the bundle and the simulator read the same statistics, so their breadth does not
# matter for this comparison
TINY_CALIB = {"n_prompts": 1, "image_steps": 2, "n_chats": 1, "chat_tokens": 2, "text_file": None}
TOKENS = 48


def _rel(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _cos(a, b) -> float:
    a, b = a.ravel(), b.ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def int8_default(trained_bundle, tmp_path_factory):
    """The trained LM's int8 bundle with the default policy (lm + lm_head; down_proj and lm_head kept int8
    weight-only, SmoothQuant 0.8 on the rest, minmax scales) and its calibration file."""
    from janus_edge.quant.api import QuantOptions, quantize_bundle

    d = tmp_path_factory.mktemp("qsim")
    cache = str(d / "calib.npz")
    out = quantize_bundle(trained_bundle, str(d / "int8"), QuantOptions(
        mode="int8", graphs="lm,lm_head", progress=False, report=False,
        extra={"calib": {**TINY_CALIB, "cache": cache}}))
    return out, cache


def test_simulate_reproduces_the_ort_int8_bundle(trained_ckpt, trained_model, trained_bundle, int8_default):
    import torch

    from janus_edge.quant import simulate as S

    torch.set_num_threads(2)
    qdir, cache = int8_default
    # FakeQuantLM rewrites the Linear forwards in place: a copy, so the shared session model stays float
    sim = S.FakeQuantLM(trained_ckpt, trained_bundle, CB.CalibData.load(cache), "int8",
                        model=copy.deepcopy(trained_model))
    fp = E.open_bundle(trained_bundle)
    ids = E.text_ids(fp, CB.read_text(CB.HELDOUT_FILE), TOKENS)
    l_fp = next(E.tf_logits(fp, ids))[1]
    l_ort = next(E.tf_logits(E.open_bundle(qdir), ids))[1]

    sim.set_all(S.FLOAT)
    assert _rel(sim.logits(ids), l_fp) < 1e-4  # the unquantized simulator is the fp bundle
    kept = {k: S.W8A16 for k in sim.state if "down_proj" in k or k.startswith("lm_head")}
    assert len(kept) == 31 and len(sim.state) == 211  # 30 down_proj + lm_head of 7 x 30 + 1 weight MatMuls
    sim.configure(alpha=0.8, modes=kept)  # the default int8 plan
    l_sim = sim.logits(ids)
    e_ort, e_sim = _rel(l_ort, l_fp), _rel(l_sim, l_fp)
    assert 0.02 < e_ort < 0.3, e_ort  # the bundle is quantized (and not broken; 0.14 measured)
    assert 0.6 < e_sim / e_ort < 1.5, (e_sim, e_ort)  # the simulated error has the bundle's size ...
    assert _cos(l_sim - l_fp, l_ort - l_fp) > 0.8, _cos(l_sim - l_fp, l_ort - l_fp)  # ... and direction
    assert _rel(l_sim, l_ort) < 0.5 * e_ort, (_rel(l_sim, l_ort), e_ort)  # closer to ORT than to fp
    assert (l_sim.argmax(-1) == l_ort.argmax(-1)).mean() >= 0.9
