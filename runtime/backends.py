"""The backend registry: a name -> the class that implements runtime/backend.py's interface, imported when asked for.

The interface (runtime/backend.py) imports none of its implementations; this module sits above them, and the
pipeline and the benchmark runner get a backend from here. A new backend is one line in BACKENDS.
"""
from __future__ import annotations

import importlib

from janus_edge.errors import BackendUnavailable

from .backend import Backend

# name -> (module, class); imported on first use: the trt backend's module is light, but its engines need TensorRT
BACKENDS = {
    "ort": ("janus_edge.runtime.ort_backend", "OrtBackend"),  # ONNX Runtime on the CPU
    "trt": ("janus_edge.runtime.trt_backend", "TrtBackend"),  # engines from `janus-edge build` (TensorRT, a GPU)
}


def get_backend(name: str, threads: int | None = None, device: str | None = None) -> Backend:
    """An instance of the backend `name`; one line (BackendUnavailable) for an unknown name or, for `trt`, when
    TensorRT/CUDA/a GPU are missing. `device` (ort only): "cpu" (default), "cuda" or "tensorrt" (onnxruntime-gpu's
    execution providers, runtime/ort_gpu.py); a provider that is missing is BackendUnavailable, never a CPU run."""
    if name not in BACKENDS:
        raise BackendUnavailable(f"unknown backend {name!r}; choose {' or '.join(map(repr, BACKENDS))}")
    if name == "ort":
        from .ort_gpu import check_device

        if check_device(device) != "cpu":
            from .ort_gpu import OrtGpuBackend

            return OrtGpuBackend(device=device, threads=threads)
    elif device not in (None, "cuda"):  # trt runs on the GPU
        from janus_edge.errors import InputError

        raise InputError(f"backend {name!r} runs on the GPU: --device {device} is for backend 'ort'")
    module, cls = BACKENDS[name]
    return getattr(importlib.import_module(module), cls)(threads=threads)
