"""The `trt` backend. Here (no GPU, no TensorRT): the real refusal paths. On a GPU (marked `gpu`, skipped with the
reason elsewhere): device buffers, KV append and CUDA-graph capture without TensorRT; with TensorRT, engines from the
tiny bundles against ONNX Runtime, greedy tokens, CUDA-graph replay against the plain loop, host syncs per step."""
from __future__ import annotations

import importlib.util
import json
import os
import sys

import numpy as np
import pytest

from janus_edge.errors import BackendUnavailable
from janus_edge.runtime import trt_env


def _probe_line(need_trt=True):
    env = trt_env.probe(need_trt)
    return None if env.ok else "; ".join(env.problems)


NO_GPU = _probe_line(need_trt=False)
NO_TRT = _probe_line(need_trt=True)
needs_gpu = pytest.mark.skipif(NO_GPU is not None, reason=f"needs an NVIDIA GPU and cuda-python: {NO_GPU}")
needs_trt = pytest.mark.skipif(NO_TRT is not None, reason=f"needs a GPU and TensorRT >= 10.3: {NO_TRT}")


# ---- what runs here: the refusals, for real ----------------------------------------------------------------------
@pytest.mark.skipif(NO_TRT is None, reason="TensorRT and a GPU are present: the refusal path cannot happen")
def test_pipeline_refuses_with_the_missing_pieces(tiny_bundle):
    from janus_edge import Pipeline

    with pytest.raises(BackendUnavailable) as e:
        Pipeline.from_bundle(tiny_bundle, backend="trt")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("backend 'trt' cannot run here: ")
    for problem in trt_env.probe().problems:
        assert problem in msg
    if NO_GPU is not None and trt_env.import_cudart() is not None:  # the driver query really ran and failed
        assert "no usable NVIDIA GPU (cudaGetDeviceCount: cuda" in msg
    if importlib.util.find_spec("tensorrt") is None:  # a GPU machine without TensorRT gets only this line
        assert "tensorrt is not installed" in msg and "--system-site-packages" in msg


def test_missing_cuda_python_is_named(monkeypatch):
    for mod in ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart"):
        monkeypatch.setitem(sys.modules, mod, None)  # makes `import` fail as if not installed
    assert trt_env.import_cudart() is None
    env = trt_env.probe()
    assert any(p.startswith("cuda-python is not installed (pip install 'janus-edge[trt-cu12]'") for p in env.problems)


@pytest.mark.skipif(NO_TRT is None, reason="TensorRT and a GPU are present")
@pytest.mark.parametrize("cmd", ["generate", "chat", "bench"])
def test_cli_exits_2_with_one_line_and_writes_nothing(cmd, cli, one_error_line, tiny_bundle, tmp_path, sample_image):
    img = tmp_path / "in.png"
    sample_image.save(img)
    out = tmp_path / "out"
    out.mkdir()
    args = {"generate": ["--prompt", "a fox", "--out", out / "x.png", "--tokens-out", out / "t.npy"],
            "chat": ["--image", img, "--question", "what is this?"],
            "bench": ["--json", out / "b.json"]}[cmd]
    code, stdout, err = cli(cmd, tiny_bundle, *args, "--backend", "trt")
    line = one_error_line(err)
    assert code == 2 and "backend 'trt' cannot run here" in line and stdout == ""
    assert os.listdir(out) == []


def test_memory_kv_is_what_the_runtime_allocates(tiny_bundle, cli):
    """`janus-edge memory`'s KV figure against the cache the decode loop really allocates (ORT backend)."""
    from janus_edge import Pipeline
    from janus_edge.runtime import decode, trt_memory

    pipe = Pipeline.from_bundle(tiny_bundle)
    d = pipe.dims
    lm = decode.LMRunner(pipe.bundle, 2, 64 + d.num_image_tokens)
    allocated = sum(int(np.asarray(c).nbytes) for c in getattr(lm, "store", lm.cache))  # chunked: the whole store
    assert trt_memory.kv_bytes(d, 2, 64 + d.num_image_tokens, "float32") == allocated
    code, out, _ = cli("memory", tiny_bundle, "--json")
    r = json.loads(out)
    assert code == 0 and r["requests"]["t2i n=1"]["kv_mib"] == round(allocated / 2**20, 1)
    assert r["weights_total_mib"] > 0


# ---- on a GPU without TensorRT: the backend's own device code ------------------------------------------------------
@pytest.fixture
def dev():
    from janus_edge.runtime.trt_backend import TrtBackend

    return TrtBackend(need_trt=False)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("path", ["memcpy2d", "native"])
def test_device_buffers_round_trip_and_kv_append(dev, path):
    if path == "memcpy2d":
        dev.kernels = None
    elif dev.kernels is None:
        pytest.skip("the native CUDA library is not built (cmake; runtime/native.py)")
    rng = np.random.default_rng(0)
    rows, kvh, L, D, S = 3, 2, 11, 8, 4
    host = [np.zeros((rows, kvh, L, D), np.float16) for _ in range(2)]
    cache = [dev.alloc(h.shape, "float16") for h in host]
    for pos, s in ((0, S), (S, 1), (S + 1, 1)):
        new = [rng.standard_normal((rows, kvh, s, D)).astype(np.float16) for _ in range(2)]
        nb = [dev.alloc(n.shape, "float16", zero=False) for n in new]
        for b, n in zip(nb, new):
            dev.write(b, n)
        dev.kv_append(cache, nb if pos else new, pos)  # host arrays are accepted too (the scheduler's prefill)
        for h, n in zip(host, new):
            h[:, :, pos:pos + s] = n
    for c, h in zip(cache, host):
        np.testing.assert_array_equal(dev.read(c), h)
    # per-row slots (serving)
    new = [rng.standard_normal((rows, kvh, 1, D)).astype(np.float16) for _ in range(2)]
    nb = [dev.alloc(n.shape, "float16") for n in new]
    for b, n in zip(nb, new):
        dev.write(b, n)
    slots = np.array([7, 9, 10])
    dev.kv_append(cache, nb, slots)
    for h, n in zip(host, new):
        h[np.arange(rows), :, slots] = n[:, :, 0]
    for c, h in zip(cache, host):
        np.testing.assert_array_equal(dev.read(c), h)


@pytest.mark.gpu
@needs_gpu
def test_pool_reuses_memory_for_the_same_shapes(dev):
    import gc

    a = dev.alloc((64, 64), "float32")
    before = dev.pool.mallocs
    del a
    gc.collect()
    b = dev.alloc((64, 64), "float32")
    assert dev.pool.mallocs == before and np.all(dev.read(b) == 0)


@pytest.mark.gpu
@needs_gpu
def test_captured_copies_replay_with_device_positions(dev):
    """The step pattern of trt_steps without TensorRT: per-step values copied from device tables outside the graph,
    the captured work reading them; replays equal the direct run, and no host sync happens in the loop."""
    from janus_edge.runtime.trt_steps import capture

    T, rows = 6, 4
    table = dev.alloc((T, rows), "int64")
    dev.write(table, np.arange(T * rows, dtype=np.int64).reshape(T, rows))
    cur, acc = dev.alloc((rows,), "int64"), dev.alloc((T, rows), "int64")
    out = dev.alloc((rows,), "int64")

    def body():  # stands in for embed -> lm -> head: reads `cur`, writes `out`
        dev.copy(out.ptr, cur.ptr, cur.nbytes)

    syncs = dev.syncs
    g = None
    for i in range(T):
        dev.copy(cur.ptr, table.ptr + i * rows * 8, rows * 8)
        if i == 2:
            g = capture(dev, body)
        if g is not None:
            dev.cudart.cudaGraphLaunch(g, dev.stream)
        else:
            body()
        dev.copy(acc.ptr + i * rows * 8, out.ptr, rows * 8)
    assert dev.syncs == syncs
    np.testing.assert_array_equal(dev.read(acc), np.arange(T * rows).reshape(T, rows))
    dev.cudart.cudaGraphExecDestroy(g)


# ---- with TensorRT: engines from the tiny bundles ------------------------------------------------------------------
QUANT_KINDS = ("int8", "int4")


def _quantized(src: str, mode: str, out: str) -> str:
    from janus_edge.quant import api

    kw = {"method": "rtn"} if mode == "int4" else {"extra": {"calib": {"n_prompts": 2, "image_steps": 4,
                                                                         "n_chats": 1, "chat_tokens": 2}}}
    return api.quantize_bundle(src, out, api.QuantOptions(mode=mode, target="trt", report=False, progress=False,
                                                          **kw))


@pytest.fixture(scope="module", params=["fp32", "fp16", *QUANT_KINDS])
def engines(request, tmp_path_factory):
    if NO_TRT is not None:
        pytest.skip(f"needs a GPU and TensorRT >= 10.3: {NO_TRT}")
    bundle = request.getfixturevalue("tiny_bundle_fp16" if request.param == "fp16" else "tiny_bundle")
    return _engines_of(bundle, request.param, request.param, tmp_path_factory, max_prompt_len=128)


def _engines_of(bundle: str, kind: str, name: str, tmp_path_factory, max_prompt_len: int):
    """(the bundle, its engines dir): `bundle` quantized first when `kind` is one of QUANT_KINDS."""
    from janus_edge.export.trt_build import BuildOptions, build_engines

    if kind in QUANT_KINDS:
        bundle = _quantized(bundle, kind, str(tmp_path_factory.mktemp("q") / name))
    out = str(tmp_path_factory.mktemp("eng") / name)
    return bundle, build_engines(bundle, out, BuildOptions(max_images=2, max_prompt_len=max_prompt_len,
                                                           max_new_tokens=16, progress=False))


@pytest.mark.gpu
@pytest.mark.trt
@needs_trt
def test_engines_dir_records_version_device_profiles(engines):
    from janus_edge.runtime import trt_engines as E

    bundle, eng = engines
    meta = E.read_meta(eng)
    env = trt_env.probe()
    assert meta["tensorrt"] == env.trt.__version__ and meta["device"]["name"] == env.device["name"]
    assert [p["name"] for p in meta["engines"]["lm"]["profiles"]] == ["prefill", "step"]
    from janus_edge import contract as C

    assert meta["bundle"]["sha256"] == C.sha256_file(os.path.join(bundle, C.MANIFEST))


@pytest.mark.gpu
@pytest.mark.trt
@needs_trt
def test_every_graph_matches_onnx_runtime(engines, sample_image):
    from janus_edge import Pipeline

    bundle, eng = engines
    ort, trt = Pipeline.from_bundle(bundle), Pipeline.from_bundle(eng, backend="trt")
    d = ort.dims
    rng = np.random.default_rng(0)
    dt = ort.bundle.dtype
    quantized = any("int" in e.precision or "fp8" in e.precision for e in ort.bundle.manifest.graphs.values())
    tol = 1e-1 if quantized else {"float32": 2e-3, "float16": 3e-2}[dt]
    for g in ("vision", "vq_encoder", "vq_decoder", "gen_embed", "lm_head", "gen_head", "lm"):
        spec = ort.bundle.specs[g]
        feeds = {}
        for t in spec.inputs:
            shape = [{"n": 1, "rows": 2, "seq": 3, "past": 8}.get(x, x) if isinstance(x, str) else x for x in t.dims]
            if t.name == "position_ids":
                feeds[t.name] = np.arange(5, 8)[None].repeat(2, 0)
            elif t.dtype == "int64":
                feeds[t.name] = rng.integers(0, d.image_vocab_size, shape)
            elif t.name == "cfg_weight":
                feeds[t.name] = np.array([5.0], dt)
            else:
                feeds[t.name] = rng.standard_normal(shape).astype(t.dtype)
        if g == "gen_embed":
            feeds["codes"] = feeds["codes"][:, :1]
        want = ort.bundle.graph(g).run(feeds)
        got = trt.bundle.graph(g).run(feeds)
        for k, v in want.items():
            if v.dtype.kind in "iu":  # VQ codes: argmin over distances, ties may flip in reduced precision
                assert np.mean(got[k] == v) > 0.99, (g, k)
            else:
                scale = max(1.0, float(np.abs(v).max()))
                err = float(np.abs(got[k].astype(np.float32) - v.astype(np.float32)).max()) / scale
                assert err < tol, (g, k, err)


@pytest.mark.gpu
@pytest.mark.trt
@needs_trt
def test_greedy_tokens_equal_ort_and_graph_replay_equals_plain_loop(engines, monkeypatch):
    from janus_edge import Pipeline

    from janus_edge.runtime import decode
    from trt_compare import MARGIN, greedy_divergence

    bundle, eng = engines
    kw = dict(n=2, cfg_weight=5.0, temperature=0.0, seed=0, decode=False)
    logits, real = [], decode.sample

    def spy(lg, cfg, rng, step=0, images=None):  # the reference's CFG-combined logits, step by step
        logits.append(np.array(lg, np.float32))
        return real(lg, cfg, rng, step, images)

    monkeypatch.setattr(decode, "sample", spy)
    want = Pipeline.from_bundle(bundle).generate_image("a red fox in snow", **kw).tokens
    monkeypatch.setattr(decode, "sample", real)
    trt = Pipeline.from_bundle(eng, backend="trt")
    got = trt.generate_image("a red fox in snow", **kw).tokens
    if "int" not in trt.bundle.manifest.graphs["lm"].precision:  # fp32 (TF32 off) and fp16: equal up to a near tie
        problem = greedy_divergence(want, got, logits, MARGIN[trt.bundle.dtype])
        assert problem is None, problem
    else:  # quantized: the first tokens agree, later ones may drift
        assert np.mean(got == want) > 0.5
    monkeypatch.setenv("JANUS_EDGE_TRT_CUDA_GRAPH", "0")
    plain = Pipeline.from_bundle(eng, backend="trt").generate_image("a red fox in snow", **kw).tokens
    np.testing.assert_array_equal(got, plain)
    chat = trt.chat("What is this?", max_new_tokens=4)
    assert isinstance(chat, str)


@pytest.fixture(scope="module", params=["fp32", "int8"])
def shapes_engines(request, tmp_path_factory):
    """Engines of the trained shapes bundle (fp32, int8): pictures that ShapeEval can score."""
    if NO_TRT is not None:
        pytest.skip(f"needs a GPU and TensorRT >= 10.3: {NO_TRT}")
    return _engines_of(request.getfixturevalue("shapes_bundle"), request.param, f"shapes_{request.param}",
                       tmp_path_factory, max_prompt_len=64)


@pytest.mark.gpu
@pytest.mark.trt
@needs_trt
def test_shapes_engines_draw_and_answer_like_ort(shapes_engines):
    """The trained shapes model on TensorRT: its pictures and answers pass the same ShapeEval thresholds as on ORT
    (tests/shapes_checks.py), and most greedy image tokens equal ORT's (the tiny model's near-constant tokens made
    "> 0.5 agreement" meaningless; here 64 tokens of a real picture must match)."""
    from janus_edge import Pipeline
    from janus_edge.shapes.evaluate import SHAPES_CFG, agreement, generation_rows
    from shapes_checks import GREEDY, check_chat, check_generation

    bundle, eng = shapes_engines
    trt = Pipeline.from_bundle(eng, backend="trt")
    check_generation(trt)
    check_chat(trt)
    ours = generation_rows(trt, GREEDY, n=1, cfg=SHAPES_CFG, temperature=0.0, keep=True)
    ref = generation_rows(Pipeline.from_bundle(bundle), GREEDY, n=1, cfg=SHAPES_CFG, temperature=0.0, keep=True)
    assert agreement(ours, ref)["greedy_token_agreement"] >= 0.8


@pytest.mark.gpu
@pytest.mark.trt
@needs_trt
def test_no_host_sync_inside_the_step_loop(engines):
    from janus_edge import Pipeline

    _, eng = engines
    trt = Pipeline.from_bundle(eng, backend="trt")
    be = trt.bundle.backend
    if be.kernels is None or not hasattr(be.kernels, "cfg_sample"):
        pytest.skip("device sampling needs the native CUDA library (runtime/native.py): not built here")
    counts = []
    trt.generate_image("a fox", n=1, temperature=1.0, seed=3, decode=False, on_step=lambda i: counts.append(be.syncs))
    assert counts[-1] == counts[1], "a host sync happened between decode steps"


# ---- GPU readiness (issue 23): device paths of the fixes whose logic tests/test_gpu_readiness.py checks on the CPU --
@pytest.mark.gpu
@needs_gpu
def test_native_library_passes_its_launch_probe(dev):
    from janus_edge.runtime import native

    if native.find_library(native.CUDA_LIB) is None:
        pytest.skip("the native CUDA library is not built (cmake; runtime/native.py)")
    assert native.probe_cuda_lib(native.load_cuda_lib(), dev.cudart, dev.stream) is None
    assert dev.kernels is not None


@pytest.mark.gpu
@needs_gpu
def test_failed_capture_keeps_the_error_and_leaves_the_stream_usable(dev):
    from janus_edge.runtime.trt_steps import CaptureFailed, capture

    a, b = dev.alloc((4,), "int64"), dev.alloc((4,), "int64")
    dev.write(a, np.arange(4))

    def body():
        dev.copy(b.ptr, a.ptr, a.nbytes)
        raise ValueError("boom in the step")

    with pytest.raises(CaptureFailed, match="ValueError: boom in the step"):
        capture(dev, body)
    dev.copy(b.ptr, a.ptr, a.nbytes)  # the stream runs work again, uncaptured
    np.testing.assert_array_equal(dev.read(b), np.arange(4))


@pytest.mark.gpu
@pytest.mark.trt
@needs_trt
def test_lm_contexts_share_one_user_managed_buffer(engines):
    from janus_edge import Pipeline

    _, eng = engines
    trt = Pipeline.from_bundle(eng, backend="trt")
    trt.generate_image("a fox", n=1, temperature=0.0, seed=0, decode=False)
    lm = trt.bundle.graph("lm")
    assert sorted(lm.contexts) == [0, 1] and lm._scratch is not None
    sizes = [int(lm.engine.get_device_memory_size_for_profile_v2(p)) for p in (0, 1)]
    assert lm._scratch.nbytes == max(sizes) and lm.scratch_saved == max(sizes)
