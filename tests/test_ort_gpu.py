"""onnxruntime-gpu execution providers (`--device cuda|tensorrt`, runtime/ort_gpu.py). Here (onnxruntime with the
CPU provider only): the real refusals, one error line, exit 2, nothing written. With onnxruntime-gpu and a GPU
(`gpu` + `ort_gpu`): tokens against the CPU provider, the KV cache on the device allocated once."""
from __future__ import annotations

import os

import numpy as np
import pytest

from janus_edge.errors import BackendUnavailable, InputError
from janus_edge.runtime import ort_gpu, trt_env

ort = pytest.importorskip("onnxruntime")
AVAILABLE = ort.get_available_providers()


def test_missing_providers_are_named_with_the_fix():
    ort_gpu.check_providers("cpu", ["CPUExecutionProvider"])
    with pytest.raises(BackendUnavailable, match=r"device 'cuda' needs onnxruntime's CUDAExecutionProvider, and this "
                                                 r"onnxruntime has CPUExecutionProvider: .*janus-edge\[ort-gpu\]"):
        ort_gpu.check_providers("cuda", ["CPUExecutionProvider"])
    with pytest.raises(BackendUnavailable, match="needs onnxruntime's TensorrtExecutionProvider, and") as e:
        ort_gpu.check_providers("tensorrt", ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert "Jetson" in str(e.value)
    with pytest.raises(BackendUnavailable, match="TensorrtExecutionProvider and CUDAExecutionProvider"):
        ort_gpu.check_providers("tensorrt", ["CPUExecutionProvider"])
    with pytest.raises(InputError, match="unknown device 'npu'"):
        ort_gpu.check_device("npu")


def test_provider_options():
    o = ort_gpu.trt_ep_options("/c", quantized=True, stream=1234)
    assert o["trt_engine_cache_enable"] and o["trt_engine_cache_path"] == "/c" and o["trt_fp16_enable"]
    assert o["trt_int8_enable"] and o["user_compute_stream"] == "1234"
    assert not ort_gpu.trt_ep_options("/c", quantized=False)["trt_int8_enable"]
    assert ort_gpu.cuda_ep_options(7)["user_compute_stream"] == "7"


@pytest.mark.skipif("CUDAExecutionProvider" in AVAILABLE, reason="onnxruntime-gpu is installed: no refusal")
@pytest.mark.parametrize("device", ["cuda", "tensorrt"])
def test_pipeline_never_falls_back_to_the_cpu(device, tiny_bundle):
    from janus_edge import Pipeline

    with pytest.raises(BackendUnavailable, match=f"device '{device}' needs onnxruntime's"):
        Pipeline.from_bundle(tiny_bundle, backend="ort", device=device)


@pytest.mark.skipif("CUDAExecutionProvider" in AVAILABLE, reason="onnxruntime-gpu is installed: no refusal")
@pytest.mark.parametrize("cmd,device", [("generate", "cuda"), ("generate", "tensorrt"), ("chat", "cuda")])
def test_cli_device_refusal_is_one_line_exit_2_nothing_written(cmd, device, cli, one_error_line, tiny_bundle,
                                                               tmp_path, sample_image):
    img = tmp_path / "in.png"
    sample_image.save(img)
    out = tmp_path / "out"
    out.mkdir()
    args = {"generate": ["--prompt", "a fox", "--out", out / "x.png", "--tokens-out", out / "t.npy"],
            "chat": ["--image", img, "--question", "what is this?"]}[cmd]
    code, stdout, err = cli(cmd, tiny_bundle, *args, "--device", device)
    line = one_error_line(err)
    assert code == 2 and stdout == "" and f"device '{device}' needs onnxruntime's" in line
    assert os.listdir(out) == []


def test_trt_backend_takes_no_ort_device(cli, one_error_line, tiny_bundle, tmp_path):
    code, _, err = cli("generate", tiny_bundle, "--prompt", "x", "--out", tmp_path / "x.png", "--backend", "trt",
                       "--device", "tensorrt")
    assert code == 2 and "--device tensorrt is for backend 'ort'" in one_error_line(err)


# ---- on a GPU with onnxruntime-gpu ------------------------------------------------------------------------------------
NO_GPU = None if trt_env.probe(need_trt=False).ok else "; ".join(trt_env.probe(need_trt=False).problems)


def _needs(device):
    missing = [p for p in ort_gpu.required_providers(device) if p not in AVAILABLE]
    why = NO_GPU or (f"onnxruntime lacks {', '.join(missing)} (pip install 'janus-edge[ort-gpu]')" if missing else None)
    return pytest.mark.skipif(why is not None, reason=f"needs a GPU and onnxruntime-gpu: {why}")


@pytest.mark.gpu
@pytest.mark.ort_gpu
@pytest.mark.parametrize("device", [pytest.param("cuda", marks=_needs("cuda")),
                                    pytest.param("tensorrt", marks=_needs("tensorrt"))])
def test_device_tokens_and_cache_allocated_once(device, tiny_bundle, tmp_path, monkeypatch):
    from janus_edge import Pipeline

    monkeypatch.setenv("JANUS_EDGE_ORT_TRT_CACHE", str(tmp_path / "cache"))
    kw = dict(n=1, cfg_weight=5.0, temperature=0.0, seed=0, decode=False)
    want = Pipeline.from_bundle(tiny_bundle).generate_image("a red fox", **kw).tokens
    gpu = Pipeline.from_bundle(tiny_bundle, backend="ort", device=device)
    got = gpu.generate_image("a red fox", **kw).tokens
    assert np.mean(got == want) > (0.99 if device == "cuda" else 0.5)  # tensorrt: fp16 kernels
    be = gpu.bundle.backend
    mallocs = be.pool.mallocs
    again = gpu.generate_image("a red fox", **kw).tokens
    assert be.pool.mallocs == mallocs, "a second request of the same shape allocated device memory"
    np.testing.assert_array_equal(again, got)
    if device == "tensorrt":
        assert os.listdir(tmp_path / "cache"), "no engine cached"


@pytest.mark.skipif("CUDAExecutionProvider" in AVAILABLE, reason="onnxruntime-gpu is installed: no fallback here")
def test_a_session_that_fell_back_to_the_cpu_is_refused(tiny_bundle):
    """ORT, asked for CUDAExecutionProvider it cannot start, makes a CPU session with a log line (real here: this
    onnxruntime has no CUDA provider). The backend's per-session check refuses it. The backend object is made
    without its GPU setup (none here); `open` runs as on a GPU whose CUDA provider fails to load."""
    from janus_edge import contract as C

    be = ort_gpu.OrtGpuBackend.__new__(ort_gpu.OrtGpuBackend)
    be.ort, be.device_name, be.threads, be.stream, be.cache_dir = ort, "cuda", None, 0, None
    m = C.load_manifest(tiny_bundle)
    with pytest.raises(BackendUnavailable, match="could not start CUDAExecutionProvider for lm_head .*offered "
                                                 "CPUExecutionProvider"):
        be.open(os.path.join(tiny_bundle, m.graphs["lm_head"].file), m.graphs["lm_head"].spec("lm_head"))
