"""ONNX Runtime on an NVIDIA GPU (onnxruntime-gpu): `Pipeline.from_bundle(b, backend="ort", device="cuda")` runs the
bundle's ONNX graphs with the CUDA execution provider, `device="tensorrt"` with the TensorRT execution provider
(ORT builds and caches the engines itself: fp16, the bundle's Q/DQ). A second GPU path resting on a kept library,
beside the `trt` backend's own engines.

Buffers are device memory, allocated once per request shape and bound by pointer through ORT's I/O binding, so the
KV cache never leaves the device: the device-buffer half of the `trt` backend (TrtBackend with need_trt=False:
cudaMalloc pool, one stream, the native kv_append kernel or cudaMemcpy2DAsync for the append) under ORT sessions
that run on that same stream (the providers' `user_compute_stream`), so no extra synchronisation is needed between
ORT's work and the appends. Image steps use the generic loop (host sampling), not the trt backend's CUDA graph.

A provider that is not there is an error naming it and how to get it, never a silent CPU run: the providers are
checked before anything loads, and each session's providers after it is made (ORT itself falls back to the CPU
with a log line when, e.g., cuDNN is missing).
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Callable

import numpy as np

from janus_edge.contract import GraphSpec
from janus_edge.errors import BackendUnavailable, InputError

from .backend import Graph
from .trt_backend import DeviceBuffer, TrtBackend

DEVICES = ("cpu", "cuda", "tensorrt")
PROVIDER = {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
HOW = ("pip uninstall onnxruntime && pip install 'janus-edge[ort-gpu]' (onnxruntime-gpu; on a Jetson the wheel "
       "comes from NVIDIA's Jetson index: docs/tensorrt-jetson.md)")


def check_device(device: str | None) -> str:
    d = "cpu" if device is None else device
    if d not in DEVICES:
        raise InputError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    return d


def required_providers(device: str) -> list[str]:
    """The execution providers `device` needs in this onnxruntime (TensorRT EP hands what it cannot build to CUDA)."""
    return {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider"],
            "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider"]}[check_device(device)]


def check_providers(device: str, available: list[str]) -> None:
    """BackendUnavailable (one line) when onnxruntime lacks a provider `device` needs."""
    missing = [p for p in required_providers(device) if p not in available]
    if missing:
        raise BackendUnavailable(f"device '{device}' needs onnxruntime's {' and '.join(missing)}, and this "
                                 f"onnxruntime has {', '.join(available) or 'none'}: {HOW}")


def trt_ep_options(cache_dir: str, quantized: bool, stream: int | None = None) -> dict:
    """TensorRT EP options: engines and timing cache in `cache_dir` (built once per bundle and GPU, later loads
    read them), fp16 kernels allowed, INT8 for the bundle's Q/DQ graphs (explicit quantization: the scales are the
    graph's, no calibration table)."""
    opts = {"trt_engine_cache_enable": True, "trt_engine_cache_path": cache_dir, "trt_timing_cache_enable": True,
            "trt_timing_cache_path": cache_dir, "trt_fp16_enable": True, "trt_int8_enable": bool(quantized)}
    if stream is not None:
        opts["user_compute_stream"] = str(stream)
    return opts


def cuda_ep_options(stream: int | None = None) -> dict:
    opts = {"device_id": 0, "arena_extend_strategy": "kSameAsRequested"}
    if stream is not None:
        opts["user_compute_stream"] = str(stream)
    return opts


def default_cache_dir(bundle_path: str) -> str:
    """$JANUS_EDGE_ORT_TRT_CACHE, else ~/.cache/janus-edge/ort-trt/<bundle name>-<manifest hash>."""
    env = os.environ.get("JANUS_EDGE_ORT_TRT_CACHE")
    if env:
        return env
    from janus_edge import contract as C

    h = hashlib.sha256(open(os.path.join(bundle_path, C.MANIFEST), "rb").read()).hexdigest()[:12]
    name = os.path.basename(os.path.abspath(bundle_path)) or "bundle"
    return os.path.join(os.path.expanduser("~"), ".cache", "janus-edge", "ort-trt", f"{name}-{h}")


class OrtGpuGraph(Graph):
    def __init__(self, session, spec: GraphSpec, backend: "OrtGpuBackend"):
        self.session, self.spec, self.be = session, spec, backend
        self._outputs = [o.name for o in spec.outputs]
        self.calls = 0

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls += 1
        self.be.synchronize()  # earlier work on the stream (appends, writes) before ORT reads host-fed copies
        return dict(zip(self._outputs, self.session.run(self._outputs, feeds)))

    def bind(self, inputs: dict, outputs: dict) -> Callable[[], None]:
        io = self.session.io_binding()
        for specs, bufs, bind in ((self.spec.inputs, inputs, io.bind_input),
                                  (self.spec.outputs, outputs, io.bind_output)):
            for t in specs:
                b = bufs[t.name]
                if not isinstance(b, DeviceBuffer):
                    raise TypeError(f"{self.spec.name}.{t.name}: device '{self.be.device_name}' binds device "
                                    f"buffers, got {type(b).__name__}")
                bind(t.name, "cuda", 0, b.dtype, list(b.shape), b.ptr)

        def run() -> None:
            self.calls += 1
            self.session.run_with_iobinding(io)

        run.keepalive = (inputs, outputs)
        return run


class OrtGpuBackend(TrtBackend):
    """ORT sessions on the CUDA or TensorRT execution provider over the trt backend's device buffers."""

    name = "ort"
    attach = None  # no engines.json: the bundle's ONNX graphs themselves
    run_image_steps = None  # the generic image loop (decode.py)

    def __init__(self, device: str = "cuda", threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendUnavailable(f"onnxruntime is not installed: {HOW}") from None
        check_providers(device, ort.get_available_providers())
        super().__init__(threads=threads, need_trt=False, what=f"device '{device}'")  # cuda-python and a GPU
        self.ort, self.device_name, self.threads = ort, device, threads
        self.use_cuda_graph = False
        self.cache_dir: str | None = None

    def options(self):
        so = self.ort.SessionOptions()
        so.graph_optimization_level = self.ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        if self.threads:
            so.intra_op_num_threads = self.threads
        return so

    def providers(self, quantized: bool, bundle_dir: str) -> list:
        cuda = ("CUDAExecutionProvider", cuda_ep_options(self.stream))
        if self.device_name == "cuda":
            return [cuda, "CPUExecutionProvider"]
        if self.cache_dir is None:
            self.cache_dir = default_cache_dir(bundle_dir)
        os.makedirs(self.cache_dir, exist_ok=True)
        return [("TensorrtExecutionProvider", trt_ep_options(self.cache_dir, quantized, self.stream)), cuda,
                "CPUExecutionProvider"]

    def open(self, path: str, spec: GraphSpec, session_config: dict | None = None,
             precision: str | None = None) -> Graph:
        so = self.options()
        for k, v in (session_config or {}).items():
            so.add_session_config_entry(k, str(v))
        quantized = bool(precision) and any(q in precision for q in ("int", "fp8"))
        bundle_dir = os.path.dirname(os.path.abspath(path))
        sess = self.ort.InferenceSession(path, so, providers=self.providers(quantized, bundle_dir))
        got = sess.get_providers()
        want = required_providers(self.device_name)[0]
        if want not in got:  # ORT fell back to the CPU (a missing cuDNN / CUDA library): refuse
            raise BackendUnavailable(f"device '{self.device_name}': onnxruntime could not start {want} for "
                                     f"{spec.name} (it offered {', '.join(got)}; see its log for the missing "
                                     f"library)")
        return OrtGpuGraph(sess, spec, self)
