"""Streaming export and init (issue 12 part 4): the bundle written with weights read per graph / per tensor is the
bundle of the in-memory export (same nodes, same initializer data at every node input, bit-equal outputs), the
lazy checkpoint reads the same tensors as transformers, and no step holds more weights than its plan says."""
from __future__ import annotations

import json
import os
import weakref

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from onnx import numpy_helper  # noqa: E402

from janus_edge import contract as C  # noqa: E402
from janus_edge.export import stream  # noqa: E402
from janus_edge.export.checkpoint import load_checkpoint, open_checkpoint  # noqa: E402
from janus_edge.export.exporter import ExportOptions, example_inputs, export_bundle  # noqa: E402
from janus_edge.export.init_random import BLOCK_BYTES, _meta_model, _pieces, init_random  # noqa: E402
from janus_edge.export.presets import make_config  # noqa: E402


def _graph_view(path: str):
    """(op types in order, [initializer array or None per node input]) with Identity(initializer) aliases resolved
    (the in-memory export de-duplicates equal initializers through Identity nodes)."""
    m = onnx.load(path)
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    alias = {n.output[0]: n.input[0] for n in m.graph.node if n.op_type == "Identity" and n.input[0] in inits}
    ops, data = [], []
    for n in m.graph.node:
        if n.output[0] in alias:
            continue
        ops.append(n.op_type)
        data.append([inits.get(alias.get(i, i)) for i in n.input])
    return ops, data


def assert_same_graph(a: str, b: str, name: str, dtype: str) -> None:
    ops_a, data_a = _graph_view(os.path.join(a, f"{name}.onnx"))
    ops_b, data_b = _graph_view(os.path.join(b, f"{name}.onnx"))
    assert ops_a == ops_b, f"{name}: node sequences differ"
    for k, (xa, xb) in enumerate(zip(data_a, data_b)):
        for x, y in zip(xa, xb):
            assert (x is None) == (y is None), f"{name} node {k} ({ops_a[k]}): initializer vs computed input"
            if x is not None:
                assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y), \
                    f"{name} node {k} ({ops_a[k]}): initializer data differs"
    import onnxruntime as ort

    model = json.load(open(os.path.join(a, C.MANIFEST)))["model"]  # (a bundle of some graphs only: no load_manifest)
    dims = C.ModelDims(**{k: model[k] for k in C.ModelDims.__dataclass_fields__})
    spec = C.graph_specs(dims, dtype)[name]
    feeds = {t.name: x.numpy() for t, x in zip(spec.inputs, example_inputs(spec, dims, getattr(torch, dtype)))}
    out_a = ort.InferenceSession(os.path.join(a, f"{name}.onnx")).run(None, feeds)
    out_b = ort.InferenceSession(os.path.join(b, f"{name}.onnx")).run(None, feeds)
    for x, y in zip(out_a, out_b):
        assert np.array_equal(x, y), f"{name}: outputs differ"


@pytest.fixture(scope="module")
def in_memory_bundle(tiny_ckpt, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("mem") / "b")
    return export_bundle(tiny_ckpt, out, options=ExportOptions(progress=False, streaming=False))


def test_streamed_bundle_is_the_in_memory_bundle(tiny_bundle, in_memory_bundle, tiny_model):
    """tiny_bundle is written by the (default) streaming export."""
    for name in C.GRAPHS:
        assert_same_graph(tiny_bundle, in_memory_bundle, name, "float32")
    a = np.load(os.path.join(tiny_bundle, "text_embed.npy"))
    assert np.array_equal(a, np.load(os.path.join(in_memory_bundle, "text_embed.npy")))
    # (the in-memory export de-duplicates equal initializers, all-ones norms here, so its byte counts are lower)
    lm = tiny_model.model.language_model
    want = sum(p.numel() * 4 for n, p in lm.named_parameters() if not n.startswith("embed_tokens"))
    assert C.load_manifest(tiny_bundle).graphs["lm"].weight_bytes == want


def test_fp16_from_bf16_checkpoint_streamed_equals_in_memory(tmp_path):
    """bf16 checkpoint (as Pro-7B is published) -> fp16 bundle: the per-tensor cast gives what transformers'
    fp16 load gives; external data written straight from the stream loads in ORT and matches too."""
    ck = init_random("tiny", str(tmp_path / "ck16"), seed=3, dtype="bfloat16")
    graphs = ("lm", "gen_embed", "lm_head", "gen_head", "vision")
    mem = export_bundle(ck, str(tmp_path / "mem"), options=ExportOptions(
        dtype="float16", graphs=graphs, progress=False, streaming=False))
    ext = export_bundle(ck, str(tmp_path / "ext"), options=ExportOptions(
        dtype="float16", graphs=graphs, progress=False, external_data_threshold=0))
    for name in graphs:
        assert_same_graph(ext, mem, name, "float16")
    m = json.load(open(os.path.join(ext, C.MANIFEST)))
    assert all(m["graphs"][g]["external_data"] == [f"{g}.onnx.data"] for g in graphs)
    assert sorted(os.listdir(ext)) == sorted([*m["files"], C.MANIFEST])  # no stray raw files
    offsets = []  # every tensor in the data files starts on a page (ORT may mmap them)
    for name in graphs:
        g = onnx.load(os.path.join(ext, f"{name}.onnx"), load_external_data=False).graph
        offsets += [int({e.key: e.value for e in t.external_data}["offset"]) for t in g.initializer
                    if t.data_location == onnx.TensorProto.EXTERNAL]
    assert len(offsets) > 20 and all(o % 4096 == 0 for o in offsets)


def test_lazy_checkpoint_reads_what_transformers_loads(tiny_ckpt, tmp_path):
    from janus_edge.export.original_format import write_original

    ref = load_checkpoint(tiny_ckpt).model.state_dict()
    orig = write_original(tiny_ckpt, str(tmp_path / "orig"), weights="safetensors", shards=2)
    for path in (tiny_ckpt, orig):
        ck = open_checkpoint(path)
        assert all(p.is_meta for p in ck.model.parameters())
        keys = [k for k in ref if k in ck.weights.shapes]
        assert len(keys) == len(list(ck.model.parameters()))
        for k in keys:
            assert torch.equal(ck.weights.get(k, torch.float32), ref[k]), (path, k)


def test_streamed_export_holds_one_graph_at_most(tiny_ckpt, tmp_path, monkeypatch):
    """Weight tensors alive at once during a streaming export: at most one non-LM graph's weights; the LM-side
    graphs only ever hold one tensor (so the lm's weights are never all in memory)."""
    live, peak, in_lm = {"bytes": 0}, {"any": 0, "lm": 0}, {"on": False}
    real_get = stream.WeightSource.get

    def counting_get(self, name, dtype=None):
        t = real_get(self, name, dtype)
        size = t.nbytes
        live["bytes"] += size
        weakref.finalize(t, lambda: live.__setitem__("bytes", live["bytes"] - size))
        peak["any"] = max(peak["any"], live["bytes"])
        if in_lm["on"]:
            peak["lm"] = max(peak["lm"], live["bytes"])
        return t

    from janus_edge.export import exporter

    real_export = exporter.export_graph

    def tagged(name, *a, **k):
        in_lm["on"] = name == "lm"
        try:
            return real_export(name, *a, **k)
        finally:
            in_lm["on"] = False

    monkeypatch.setattr(stream.WeightSource, "get", counting_get)
    monkeypatch.setattr(exporter, "export_graph", tagged)
    export_bundle(tiny_ckpt, str(tmp_path / "b"), options=ExportOptions(
        graphs=("lm", "lm_head", "vision", "vq_encoder"), progress=False))
    ck = open_checkpoint(tiny_ckpt)
    lm_keys = [k for k in ck.weights.shapes if k.startswith("model.language_model.layers.")]
    biggest_lm = max(int(np.prod(ck.weights.shapes[k])) * 4 for k in lm_keys)
    lm_total = sum(int(np.prod(ck.weights.shapes[k])) * 4 for k in lm_keys)
    assert 0 < peak["lm"] <= biggest_lm < lm_total / 4
    from janus_edge.export.graphs import build_module

    whole = max(sum(p.numel() * 4 for p in build_module(g, ck.model).parameters())
                for g in ("vision", "vq_encoder", "vq_decoder"))  # the graphs materialised as a module
    assert peak["any"] <= whole  # (the tiny model is mostly VQ; Pro-7B's VQ and vision are under 5% of it)


def test_init_pieces_are_bounded_for_pro_7b():
    """The random init of Pro-7B makes one piece at a time: a subtree of at most BLOCK_BYTES, or one module's own
    tensors (an embedding, a head); none near the model's size."""
    model = _meta_model(make_config("pro-7b"))
    keys = set(model.state_dict())
    total = sum(p.numel() * 4 for p in model.parameters())
    assert total > 25e9  # ~28 GB in fp32: the whole model never exists
    sizes = []
    for _, module, recurse, _ in _pieces(model, keys):
        tensors = list(module.parameters()) + list(module.buffers()) if recurse else \
            [t for t in (*module._parameters.values(), *module._buffers.values()) if t is not None]
        size = sum(t.numel() * 4 for t in tensors)
        assert size <= BLOCK_BYTES or not recurse, size
        sizes.append(size)
    assert max(sizes) < 2e9 and len(sizes) > 30


def test_sharded_init_equals_single_file(tmp_path):
    from safetensors.torch import load_file
    from transformers import JanusForConditionalGeneration

    from janus_edge.export.init_random import write_random_weights

    cfg = make_config("tiny")
    one, many = tmp_path / "one", tmp_path / "many"
    one.mkdir()
    many.mkdir()
    write_random_weights(cfg, str(one), torch.bfloat16, seed=5)
    write_random_weights(cfg, str(many), torch.bfloat16, seed=5, max_shard_bytes=1 << 20)
    a = load_file(str(one / "model.safetensors"))
    index = json.load(open(many / "model.safetensors.index.json"))
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and sorted(os.listdir(many)) == sorted([*shards, "model.safetensors.index.json"])
    b = {}
    for s in shards:
        b.update(load_file(str(many / s)))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) and a[k].dtype == torch.bfloat16 for k in a)
    assert index["metadata"]["total_size"] == sum(t.nbytes for t in a.values())
    # transformers reads the sharded checkpoint (config written as init_random does)
    cfg.architectures, cfg.dtype = ["JanusForConditionalGeneration"], "bfloat16"
    cfg.save_pretrained(str(many))
    model = JanusForConditionalGeneration.from_pretrained(str(many))
    assert torch.equal(model.lm_head.weight, a["lm_head.weight"])


def _constants(path: str) -> list:
    m = onnx.load(path)
    return [(n.op_type, [(a.name, a.t.data_type, numpy_helper.to_array(a.t).tobytes()) if a.type == a.TENSOR
                         else (a.name,) for a in n.attribute])
            for n in m.graph.node if n.op_type in ("Constant", "ConstantOfShape")]


def test_fp16_vq_graphs_converted_from_fp32_trace_are_the_fp16_trace(tiny_ckpt, tmp_path):
    """fp16 VQ graphs are traced in fp32 and converted (export/fp16.py: torch's fp16 conv2d on the CPU takes hours
    for Pro-7B's VQ): the result is torch's own fp16 trace, node for node, initializer and constant data equal
    (Resize's scales kept fp32 as ONNX wants), ORT outputs bit-equal. (Against the fp32 model, with fp16
    tolerances, they are checked by verify in test_export.py::test_fp16_bundle_matches_transformers_fp16.)"""
    graphs = ("vq_encoder", "vq_decoder")
    conv = export_bundle(tiny_ckpt, str(tmp_path / "conv"), options=ExportOptions(
        dtype="float16", graphs=graphs, progress=False))
    traced = export_bundle(tiny_ckpt, str(tmp_path / "traced"), options=ExportOptions(
        dtype="float16", graphs=graphs, progress=False, fp16_via_fp32=()))
    for name in graphs:
        assert_same_graph(conv, traced, name, "float16")
        a, b = _constants(os.path.join(conv, f"{name}.onnx")), _constants(os.path.join(traced, f"{name}.onnx"))
        assert len(a) > 20 and a == b, f"{name}: Constant nodes differ"
    m = onnx.load(os.path.join(conv, "vq_decoder.onnx"))
    types = {t.data_type for t in m.graph.initializer}
    assert types == {onnx.TensorProto.FLOAT16}


def test_fp16_conversion_refuses_a_deliberate_fp32_upcast():
    from onnx import TensorProto, helper

    from janus_edge.export.fp16 import NotConvertible, convert_to_fp16

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    g = helper.make_graph([helper.make_node("Cast", ["x"], ["c"], to=TensorProto.FLOAT),
                           helper.make_node("Softmax", ["c"], ["y"])], "g", [x], [y])
    with pytest.raises(NotConvertible, match="casts to float32"):
        convert_to_fp16(helper.make_model(g))


def _status_mb(field: str) -> float:
    return int(open("/proc/self/status").read().split(f"{field}:")[1].split()[0]) / 1024


def test_verify_fp16_session_holds_one_fp32_weight_copy(tmp_path):
    """ORT's CPU provider runs an fp16 MatMul on an fp32 copy of its weight. verify's session options must keep one
    such copy alive at a time: ORT's defaults held all of them at once (and its arena a second set), which put
    verify of Pro-7B's 12 GB fp16 lm out of memory. 16 MatMuls of 8 MB fp16 weights: peak RSS while running must
    stay under 1.4x the weights (the weights paged in + one 16 MB copy); ORT's defaults measured 5.2x."""
    import gc

    from graph_helpers import fp16_matmul_chain

    if not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak RSS")
    path = str(tmp_path / "m.onnx")
    x, weights = fp16_matmul_chain(path)
    import onnxruntime as ort

    from janus_edge.export.verify import session_options

    s = ort.InferenceSession(path, session_options("float16"), providers=["CPUExecutionProvider"])
    feeds = {"x": np.ones((2, 2048), np.float16)}
    s.run(None, feeds)  # warm-up: ORT's first-run allocations, outside the measured window
    del s
    gc.collect()
    s = ort.InferenceSession(path, session_options("float16"), providers=["CPUExecutionProvider"])
    with open("/proc/self/clear_refs", "w") as fh:  # peak RSS (VmHWM) := current RSS
        fh.write("5")
    before = _status_mb("VmRSS")
    for _ in range(3):
        s.run(None, feeds)
    grew = (_status_mb("VmHWM") - before) * 2**20
    assert grew < 1.4 * weights, grew / weights
