"""int4 `--target ort`: the ONNX-Runtime-only MatMulNBits form. Same numbers as the QDQ form after ORT's fusion
(equal outputs), marked `target: "ort"` in the manifest, run through Pipeline; tiny preset."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from janus_edge.quant.api import QuantOptions, quantize_bundle  # noqa: E402


def _q(src, out, **kw):
    return quantize_bundle(src, str(out), QuantOptions(force=True, progress=False, report=False, mode="int4",
                                                       method="clip", **kw))


@pytest.fixture(scope="module")
def both(tiny_bundle, tmp_path_factory):
    d = tmp_path_factory.mktemp("q_ort")
    return _q(tiny_bundle, d / "qdq"), _q(tiny_bundle, d / "ort", target="ort")


def _manifest(b):
    with open(os.path.join(b, "manifest.json")) as fh:
        return json.load(fh)


def _session(bundle, graph):
    from janus_edge.runtime.ort_backend import OrtBackend

    return ort.InferenceSession(os.path.join(bundle, _manifest(bundle)["graphs"][graph]["file"]),
                                OrtBackend(threads=1).options(), providers=["CPUExecutionProvider"])


def test_ort_form_is_matmulnbits_marked_ort(both, tiny_bundle, tmp_path):
    qdq, ortb = both
    man = _manifest(ortb)
    for g in ("lm", "gen_head", "lm_head"):
        e = man["graphs"][g]
        assert e["target"] == "ort" and e["precision"] == "int4" and "MatMulNBits" in e["quantization"]["format"]
        m = onnx.load(os.path.join(ortb, e["file"]))
        ops = [n.op_type for n in m.graph.node]
        assert "DequantizeLinear" not in ops
        nbits = [n for n in m.graph.node if n.op_type == "MatMulNBits"]
        assert nbits and all(n.domain == "com.microsoft" for n in nbits)
        assert len(nbits) == len([n for n in onnx.load(os.path.join(qdq, e["file"])).graph.node
                                  if n.op_type == "DequantizeLinear"])
        assert _manifest(qdq)["graphs"][g]["target"] == "any"
    assert man["graphs"]["vq_decoder"]["target"] == "any"
    mixed = _q(tiny_bundle, tmp_path / "mixed", target="ort", graphs="lm", int8_layers=("down",))
    m = onnx.load(os.path.join(mixed, _manifest(mixed)["graphs"]["lm"]["file"]))
    bits = [a.i for n in m.graph.node if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "bits"]
    assert sorted(set(bits)) == [4, 8] and bits.count(8) == 2  # 2 layers: down_proj in 8 bits


def test_ort_form_outputs_equal_the_fused_qdq_form(tiny_bundle, tmp_path):
    """The same codes and scales: ORT's fusion of the QDQ form and the written MatMulNBits give the same lm output."""
    qdq, ortb = _q(tiny_bundle, tmp_path / "a"), _q(tiny_bundle, tmp_path / "b", target="ort")
    man = _manifest(qdq)
    rng = np.random.default_rng(0)
    feeds = {}
    for t in man["graphs"]["lm"]["inputs"]:
        shape = [{"rows": 2, "seq": 3, "past": 8}.get(d, d) for d in t["dims"]]
        feeds[t["name"]] = (np.tile(np.arange(8, 11), (2, 1)) if t["name"] == "position_ids"
                            else rng.standard_normal(shape)).astype(t["dtype"])
    a = _session(qdq, "lm").run(None, feeds)
    b = _session(ortb, "lm").run(None, feeds)
    for x, y in zip(a, b):
        # Not bit-equal: 275 of the 384 outputs differ in the last bits (measured), as ORT's fused QDQ node and the
        # written MatMulNBits (both accuracy_level 4: activations quantized to int8 per block, int32 dot products,
        # float32 scale products summed over the blocks) accumulate in a different order. A float32 sum of K terms
        # rounds by up to K * 2^-24 of their magnitude (K = 64..256 here: 4e-6..1.5e-5), per layer, through 2 layers
        # and the final norm, on outputs up to ~3.5: worst seen 1.9e-5 abs (on 0.37). 1e-4 bounds that with margin,
        # while a kernel path that differs moves outputs by more (measured: accuracy_level 0, fp32 compute, in the ORT
        # form: 1.3e-3 off on 253 of 384, and this fails).
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-4)


def test_ort_form_runs_through_pipeline(both):
    from janus_edge.runtime.pipeline import Pipeline

    qdq, ortb = both
    ref = Pipeline.from_bundle(qdq, threads=1).generate_image("a cat", temperature=0.0, seed=0, decode=False)
    res = Pipeline.from_bundle(ortb, threads=1).generate_image("a cat", temperature=0.0, seed=0, decode=False)
    assert np.array_equal(res.tokens, ref.tokens)  # the same kernel on the same numbers


def test_fp16_cache_casts_sit_before_their_layer(tiny_bundle, tmp_path):
    """Each past-cache Cast runs right before its first reader, not all at the graph's start (else every layer's fp32
    copy of the cache is alive at once: as much memory as the fp32 cache the fp16 one replaces)."""
    out = _q(tiny_bundle, tmp_path / "kv16", graphs="lm", kv_dtype="float16")
    m = onnx.load(os.path.join(out, _manifest(out)["graphs"]["lm"]["file"]))
    nodes = list(m.graph.node)
    pos = {o: i for i, n in enumerate(nodes) for o in n.output}
    casts = [i for i, n in enumerate(nodes) if n.op_type == "Cast" and n.input[0].startswith("past_")]
    assert len(casts) == 4  # 2 layers x K, V
    for i in casts:
        readers = [j for j, n in enumerate(nodes) if nodes[i].output[0] in n.input]
        assert readers and min(readers) == i + 1 or all(nodes[k].op_type in ("Cast", "Constant")
                                                         for k in range(i + 1, min(readers)))
    layer1 = next(i for i, n in enumerate(nodes) if n.input and n.input[0] == "past_key.1")
    first_q = next(i for i, n in enumerate(nodes) if "q_proj" in n.name)
    assert layer1 > first_q and pos  # layer 1's cache is cast after layer 0 has started
