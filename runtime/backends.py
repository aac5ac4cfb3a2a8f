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


def get_backend(name: str, threads: int | None = None) -> Backend:
    """An instance of the backend `name`; one line (BackendUnavailable) for an unknown name or, for `trt`, when
    TensorRT/CUDA/a GPU are missing."""
    if name not in BACKENDS:
        raise BackendUnavailable(f"unknown backend {name!r}; choose {' or '.join(map(repr, BACKENDS))}")
    module, cls = BACKENDS[name]
    return getattr(importlib.import_module(module), cls)(threads=threads)
