"""Export: every graph against transformers, the manifest contract, external data, fp16, bad input."""
import json
import os
import shutil

import numpy as np
import onnx
import pytest

from janus_edge import contract as C
from janus_edge.export.exporter import ExportOptions, export_bundle
from janus_edge.export.verify import verify_bundle

ONNX_TO_NP = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16", onnx.TensorProto.INT64: "int64"}


def test_every_graph_matches_transformers_fp32(tiny_bundle, tiny_ckpt):
    report = verify_bundle(tiny_bundle, tiny_ckpt)
    names = {r.graph.split(" ")[0] for r in report.rows}
    assert set(C.GRAPHS) <= names | {"gen"}  # the lm rows cover prefill + decode steps and the gen loop
    assert report.ok, report.table()
    lm = next(r for r in report.rows if r.graph.startswith("lm hidden"))
    assert lm.max_abs_err < 1e-4 and lm.cosine > 0.99999


def test_fp16_bundle_matches_transformers_fp16(tiny_bundle_fp16, tiny_ckpt):
    m = C.load_manifest(tiny_bundle_fp16)
    assert m.dtype == "float16" and all(g.precision == "float16" for g in m.graphs.values())
    assert np.load(os.path.join(tiny_bundle_fp16, "text_embed.npy"), mmap_mode="r").dtype == np.float16
    report = verify_bundle(tiny_bundle_fp16, tiny_ckpt)
    assert report.ok, report.table()


def test_verify_detects_a_wrong_graph(tiny_bundle, tiny_ckpt, tmp_path, cli):
    """Swap in a gen_head whose weights differ (1%; its sha256 updated, so the bundle loads): verify must fail,
    and `janus-edge verify` exit 1 (0 on the intact bundle: test_verify_cli_prints_a_table)."""
    bad = str(tmp_path / "bad")
    shutil.copytree(tiny_bundle, bad)
    model = onnx.load(os.path.join(bad, "gen_head.onnx"))
    init = max(model.graph.initializer, key=lambda t: np.prod(t.dims))
    arr = onnx.numpy_helper.to_array(init).copy()
    arr *= 1.01
    init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
    onnx.save(model, os.path.join(bad, "gen_head.onnx"))
    m = json.load(open(os.path.join(bad, C.MANIFEST)))
    m["files"]["gen_head.onnx"] = C.sha256_file(os.path.join(bad, "gen_head.onnx"))
    json.dump(m, open(os.path.join(bad, C.MANIFEST), "w"))
    report = verify_bundle(bad, tiny_ckpt)
    failed = {r.graph.split(" ")[0] for r in report.rows if not r.ok}
    assert "gen_head" in failed and not report.ok
    code, out, err = cli("verify", bad, "--against", tiny_ckpt)
    assert code == 1 and "gen_head" in out and "out of tolerance" in err


def test_manifest_is_the_contract(tiny_bundle):
    m = C.load_manifest(tiny_bundle)
    assert m.format == C.FORMAT_NAME and m.format_version == C.FORMAT_VERSION
    # every file of the bundle is recorded with its sha256, and nothing else is
    on_disk = {f for f in os.listdir(tiny_bundle) if f != C.MANIFEST}
    assert set(m.files) == on_disk
    C.check_files(tiny_bundle, m)
    specs = C.graph_specs(m.dims, m.dtype)
    for name in C.GRAPHS:
        entry = m.graphs[name]
        assert entry.spec(name) == specs[name]
        g = onnx.load(os.path.join(tiny_bundle, entry.file), load_external_data=False).graph
        for got, want in ((g.input, specs[name].inputs), (g.output, specs[name].outputs)):
            assert [t.name for t in got] == [t.name for t in want]
            for t, s in zip(got, want):
                assert ONNX_TO_NP[t.type.tensor_type.elem_type] == s.dtype
                dims = [d.dim_param or d.dim_value for d in t.type.tensor_type.shape.dim]
                assert dims == list(s.dims), (name, t.name, dims, s.dims)
        assert entry.weight_bytes > 0
    st = m.special_tokens
    assert {"bos", "eos", "pad", "image", "boi", "eoi"} <= set(st)
    assert m.text_embedding["kind"] == "table" and m.text_embedding["shape"] == [m.dims.vocab_size, m.dims.hidden_size]
    assert "{prompt}" in m.prompts["t2i"] and m.image_preprocess["size"] == m.dims.image_size


def test_external_data_export(tiny_ckpt, tmp_path):
    out = str(tmp_path / "ext")
    export_bundle(tiny_ckpt, out, options=ExportOptions(graphs=("lm", "gen_head"), external_data_threshold=0,
                                                        progress=False))
    m = json.load(open(os.path.join(out, C.MANIFEST)))
    assert m["graphs"]["lm"]["external_data"] == ["lm.onnx.data"]
    assert sorted(os.listdir(out)) == sorted(list(m["files"]) + [C.MANIFEST])  # one data file per graph, no strays
    assert os.path.getsize(os.path.join(out, "lm.onnx")) < 100_000 < os.path.getsize(os.path.join(out, "lm.onnx.data"))
    import onnxruntime as ort

    sess = ort.InferenceSession(os.path.join(out, "lm.onnx"))
    assert [i.name for i in sess.get_inputs()][:2] == ["inputs_embeds", "position_ids"]


def test_export_from_original_format_matches(tiny_ckpt, tmp_path):
    from janus_edge.export.original_format import write_original

    orig = str(tmp_path / "orig")
    write_original(tiny_ckpt, orig)
    out = export_bundle(orig, str(tmp_path / "b"), options=ExportOptions(progress=False))
    assert C.load_manifest(out).model["source_format"] == "original"
    report = verify_bundle(out, tiny_ckpt, graphs=("lm", "gen_head", "gen_embed", "vq_decoder", "vision"))
    assert report.ok, report.table()


# ---- bad input: one line, exit 2, nothing written ----------------------------------------------------------


def test_existing_out_is_refused(one_error_line, cli, tiny_ckpt, tiny_bundle):
    before = sorted(os.listdir(tiny_bundle))
    code, _, err = cli("export", tiny_ckpt, "--out", tiny_bundle)
    assert code == 2 and "exists" in one_error_line(err)
    assert sorted(os.listdir(tiny_bundle)) == before


def test_missing_checkpoint_dir(one_error_line, cli, tmp_path):
    code, _, err = cli("export", tmp_path / "nope", "--out", tmp_path / "b")
    assert code == 2 and "nope" in one_error_line(err)
    assert not os.path.exists(tmp_path / "b")


def test_broken_config_json(one_error_line, cli, tiny_ckpt, tmp_path):
    ck = tmp_path / "ck"
    shutil.copytree(tiny_ckpt, ck)
    (ck / "config.json").write_text("{ not json")
    code, _, err = cli("export", ck, "--out", tmp_path / "b")
    assert code == 2 and "config.json" in one_error_line(err)
    assert not os.path.exists(tmp_path / "b") and os.listdir(tmp_path) == ["ck"]


def test_checkpoint_missing_tensors(one_error_line, cli, tiny_ckpt, tmp_path):
    from safetensors.numpy import load_file, save_file

    ck = tmp_path / "ck"
    shutil.copytree(tiny_ckpt, ck)
    f = next(p for p in os.listdir(ck) if p.endswith(".safetensors"))
    tensors = load_file(str(ck / f))
    dropped = [k for k in tensors if "generation_head" in k]
    assert dropped
    save_file({k: v for k, v in tensors.items() if k not in dropped}, str(ck / f), metadata={"format": "pt"})
    code, _, err = cli("export", ck, "--out", tmp_path / "b")
    line = one_error_line(err)
    assert code == 2 and "missing" in line and "generation_head" in line
    assert not os.path.exists(tmp_path / "b") and os.listdir(tmp_path) == ["ck"]


def test_bad_dtype_is_refused(cli, tiny_ckpt, tmp_path):
    with pytest.raises(SystemExit) as e:
        cli("export", tiny_ckpt, "--out", tmp_path / "b", "--dtype", "fp64")
    assert e.value.code == 2 and not os.path.exists(tmp_path / "b")


def test_verify_cli_prints_a_table(cli, tiny_bundle, tiny_ckpt):
    code, out, _ = cli("verify", tiny_bundle, "--against", tiny_ckpt)
    assert code == 0
    assert all(g in out for g in C.GRAPHS) and "cosine" in out
