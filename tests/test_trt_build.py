"""`janus-edge build` logic that needs no TensorRT: limits, profiles, precision refusals, engines.json checks,
and the real no-GPU refusal (exit 2, one line, nothing written). tensorrt is never imported here."""
from __future__ import annotations

import json
import os
import sys

import pytest

from janus_edge import contract as C
from janus_edge.errors import BackendUnavailable, BundleError, InputError
from janus_edge.runtime import trt_engines as E
from janus_edge.runtime import trt_env

DIMS = C.ModelDims(hidden_size=2048, num_layers=24, num_heads=16, num_kv_heads=16, head_dim=128, vocab_size=102400,
                   image_vocab_size=16384, num_image_tokens=576, image_size=384, max_position_embeddings=16384)


def test_limits_defaults_and_refusals():
    lim = E.plan_limits(DIMS)
    assert (lim.max_images, lim.max_rows) == (4, 8)
    assert lim.max_prompt_len == 576 + 512 and lim.max_cache_len == lim.max_prompt_len + 576
    lim = E.plan_limits(DIMS, 2, 100, 1000)
    assert lim.max_cache_len == 1100
    for kw in ({"max_images": 0}, {"max_new_tokens": -1}, {"max_prompt_len": 16000}, {"max_images": True}):
        with pytest.raises(InputError):
            E.plan_limits(DIMS, **kw)


def test_profiles_cover_every_input_and_dim():
    lim = E.plan_limits(DIMS, max_images=3, max_prompt_len=700)
    specs = C.graph_specs(DIMS)
    for g, spec in specs.items():
        profs = E.profiles_for(g, spec, lim, DIMS)
        for p in profs:
            assert set(p["shapes"]) == {t.name for t in spec.inputs}
            for t in spec.inputs:
                mn, opt, mx = p["shapes"][t.name]
                assert len(mn) == len(t.dims) and all(a <= b <= c for a, b, c in zip(mn, opt, mx))
                assert all(mn[i] == mx[i] == d for i, d in enumerate(t.dims) if isinstance(d, int))
    lm = E.profiles_for("lm", specs["lm"], lim, DIMS)
    assert [p["name"] for p in lm] == ["prefill", "step"]
    pre, step = (p["shapes"]["inputs_embeds"] for p in lm)
    assert [s[0] for s in pre] == [1, 2, 6] and [s[1] for s in pre] == [1, 64, 700]  # rows 2n for n in 1..3
    assert [s[1] for s in step] == [1, 1, 1]
    past = lm[1]["shapes"]["past_key.0"]
    assert past[2][2] == lim.max_cache_len == 700 + 576 and past[1][2] == 64 + 576
    head = E.profiles_for("gen_head", specs["gen_head"], lim, DIMS)[0]["shapes"]
    assert head["hidden"][0][0] == 2 and head["hidden"][2][0] == 6 and head["cfg_weight"] == [[1], [1], [1]]


def test_select_profile_prefers_the_step_profile_and_names_the_limit():
    lim = E.plan_limits(DIMS, max_images=1, max_prompt_len=100)
    spec = C.graph_specs(DIMS)["lm"]
    profs = E.profiles_for("lm", spec, lim, DIMS)
    kv = (2, 16, 676, 128)
    shapes = lambda seq: {"inputs_embeds": (2, seq, 2048), "position_ids": (2, seq), "past_key.0": kv}  # noqa: E731
    assert E.select_profile(profs, shapes(1)) == 1 and E.select_profile(profs, shapes(37)) == 0
    with pytest.raises(InputError, match="inputs_embeds"):
        E.select_profile(profs, shapes(101))
    with pytest.raises(InputError, match="rebuild"):
        E.select_profile(profs, {**shapes(1), "inputs_embeds": (4, 1, 2048)})


def test_trt_version_floor_and_ceiling():
    for ok in ("10.3.0.26", "10.13.2", "10.15.1"):
        E.check_trt_version(ok)
    for untested in ("11.0", "11.4.0.106"):  # pip's `tensorrt` today: refused, with the pin that avoids it
        with pytest.raises(BackendUnavailable, match=r"untested.*10\.3 to <11.*trt-cu12"):
            E.check_trt_version(untested)
    with pytest.raises(BackendUnavailable, match="JetPack 6.0"):
        E.check_trt_version("8.6.2.3")
    with pytest.raises(BackendUnavailable, match=">= 10.3"):
        E.check_trt_version("10.2.0")


def _manifest(precisions: dict, targets: dict | None = None) -> C.Manifest:
    specs = C.graph_specs(DIMS, "float16")
    graphs = {g: C.GraphEntry(file=f"{g}.onnx", inputs=[t.to_json() for t in s.inputs],
                              outputs=[t.to_json() for t in s.outputs], precision=precisions.get(g, "float16"),
                              target=(targets or {}).get(g, "any"))
              for g, s in specs.items()}
    return C.Manifest(model={**DIMS.__dict__}, special_tokens={}, prompts={}, image_preprocess={}, graphs=graphs,
                      text_embedding={"kind": "table", "file": "t.npy"}, tokenizer={"file": "tokenizer.json"},
                      files={f"{g}.onnx": "0" * 64 for g in specs}, dtype="float16")


def test_fp8_is_refused_below_compute_capability_8_9():
    m = _manifest({"lm": "fp8", "lm_head": "fp8"})
    with pytest.raises(InputError, match=r"lm, lm_head are FP8.*8\.9.*Orin is 8\.7"):
        E.check_precisions(m, (8, 7), "Orin")
    E.check_precisions(m, (8, 9))
    E.check_precisions(m, (9, 0))
    E.check_precisions(_manifest({"lm": "int4", "lm_head": "int8"}), (8, 7))
    E.check_precisions(_manifest({"lm": "fp8"}, {"lm": "ort"}), (8, 7))  # an ORT-only variant is not built


def test_ort_only_variants_are_not_built_and_engines_manifest_points_at_plans():
    pytest.importorskip("onnx")  # export/ imports it (the lint)
    from janus_edge.export.trt_build import engines_manifest

    m = _manifest({}, {"lm_head": "ort"})
    build, skip = E.buildable_graphs(m)
    assert skip == ["lm_head"] and "lm" in build and "lm_head" not in build
    em = engines_manifest(m, build, {"lm.plan": "a" * 64})
    assert em.graphs["lm"].file == "lm.plan" and em.graphs["lm_head"].file == "lm_head.onnx"
    assert em.files == {"lm.plan": "a" * 64}
    assert C.Manifest.from_json(json.loads(json.dumps(em.to_json()))).graphs["gen_head"].file == "gen_head.plan"


def _meta(**kw):
    lim = E.plan_limits(DIMS, 1, 100)
    base = dict(trt_version="10.3.0.26", device={"name": "Orin", "compute_capability": [8, 7]}, bundle_path="/b",
                bundle_sha256="0" * 64, limits=lim, engines={"lm": {"profiles": []}}, skipped=[])
    return E.engines_meta(**{**base, **kw})


def test_engines_json_checks(tmp_path):
    meta = _meta()
    (tmp_path / E.ENGINES_JSON).write_text(json.dumps(meta))
    got = E.read_meta(str(tmp_path))
    assert E.meta_limits(got) == E.plan_limits(DIMS, 1, 100)
    E.check_meta(got, "10.3.0.26", {"name": "Orin", "compute_capability": [8, 7]})
    with pytest.raises(BundleError, match="built with TensorRT 10.3.0.26, this is TensorRT 10.13"):
        E.check_meta(got, "10.13.0", {"name": "Orin", "compute_capability": [8, 7]})
    with pytest.raises(BundleError, match="built for Orin.*this GPU is NVIDIA H100"):
        E.check_meta(got, "10.3.0.26", {"name": "NVIDIA H100", "compute_capability": [9, 0]})
    (tmp_path / E.ENGINES_JSON).write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(BundleError, match="rebuild"):
        E.read_meta(str(tmp_path))
    (tmp_path / E.ENGINES_JSON).unlink()
    (tmp_path / C.MANIFEST).write_text("{}")
    with pytest.raises(BundleError, match="is a bundle, not TensorRT engines"):
        E.read_meta(str(tmp_path))


def test_profile_mismatch_is_refused():
    rec = [{"shapes": {"x": [[1, 4], [2, 4], [8, 4]]}}]
    E.check_profiles("g", rec, [{"x": [[1, 4], [2, 4], [8, 4]]}])
    with pytest.raises(BundleError, match="profile 0 of input x"):
        E.check_profiles("g", rec, [{"x": [[1, 4], [2, 4], [16, 4]]}])
    with pytest.raises(BundleError, match="2 optimization profiles"):
        E.check_profiles("g", rec, [{}, {}])


@pytest.mark.skipif(trt_env.probe().ok, reason="a GPU and TensorRT are present: `build` would build")
def test_build_without_gpu_or_tensorrt_exits_2_and_writes_nothing(cli, one_error_line, tiny_bundle, tmp_path):
    out = tmp_path / "engines"
    code, stdout, err = cli("build", tiny_bundle, "--out", out, "--timing-cache", tmp_path / "tc.bin")
    line = one_error_line(err)
    assert code == 2 and stdout == ""
    assert "tensorrt" in line or "GPU" in line or "cuda-python" in line, line
    assert os.listdir(tmp_path) == []  # no --out, no staging dir, no timing cache


@pytest.mark.parametrize("args,match", [
    (["--max-images", "0"], "--max-images"),
    (["--max-prompt-len", "100000"], "exceeds the model context"),
    (["--workspace-mb", "0"], "--workspace-mb"),
    (["--timing-cache", "/nonexistent/dir/tc.bin"], "--timing-cache"),
])
def test_build_bad_input_is_refused_before_probing(cli, one_error_line, tiny_bundle, tmp_path, args, match):
    code, _, err = cli("build", tiny_bundle, "--out", tmp_path / "e", *args)
    assert code == 2 and match in one_error_line(err) and os.listdir(tmp_path) == []


def test_build_refuses_missing_and_altered_bundles(cli, one_error_line, tiny_bundle, tmp_path):
    code, _, err = cli("build", tmp_path / "nope", "--out", tmp_path / "e")
    assert code == 2 and "not found" in one_error_line(err)
    (tmp_path / "e").mkdir()
    code, _, err = cli("build", tiny_bundle, "--out", tmp_path / "e")
    assert code == 2 and "already exists" in one_error_line(err)


# In a fresh interpreter (in this one, earlier tests may have imported them already), with a finder that records
# every lookup of tensorrt: an import at module level, even one guarded by try/except ImportError, is seen.
_NO_TRT_AT_IMPORT = """
import sys
asked = []
class Spy:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "tensorrt":
            asked.append(name)
        return None
sys.meta_path.insert(0, Spy())
import janus_edge.export.trt_build, janus_edge.runtime.trt_backend
assert not asked and "tensorrt" not in sys.modules, asked
"""


def test_builder_module_never_imports_tensorrt_at_import_time():
    import subprocess

    r = subprocess.run([sys.executable, "-c", _NO_TRT_AT_IMPORT], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
