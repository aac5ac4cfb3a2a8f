"""janus-edge: a quantized edge-inference runtime for DeepSeek Janus / Janus-Pro.

Public API (heavy modules are imported lazily, so `import janus_edge` stays light):
    Pipeline            - run a bundle (runtime)
    export_bundle       - checkpoint -> ONNX bundle (needs the `export` extra)
    init_random         - random-weight checkpoint of a preset shape (needs the `export` extra)
"""
from __future__ import annotations

from janus_edge.errors import (BackendUnavailable, BundleError, CheckpointError, InputError, JanusEdgeError,
                               NumericalError)

__version__ = "0.1.0"

_LAZY = {
    "Pipeline": ("janus_edge.runtime.pipeline", "Pipeline"),
    "GenerationResult": ("janus_edge.runtime.pipeline", "GenerationResult"),
    "export_bundle": ("janus_edge.export.exporter", "export_bundle"),
    "verify_bundle": ("janus_edge.export.verify", "verify_bundle"),
    "init_random": ("janus_edge.export.init_random", "init_random"),
}

__all__ = ["BackendUnavailable", "BundleError", "CheckpointError", "InputError", "JanusEdgeError", "NumericalError",
           "__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'janus_edge' has no attribute {name!r}")
