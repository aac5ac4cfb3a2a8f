"""Serving through NVIDIA Triton Inference Server: model repository writer, launcher, client helpers.

The continuous-batching scheduler itself lives in the runtime (janus_edge.runtime.scheduler); nothing here is
imported by the runtime. Triton's Python modules are imported only inside the served models.
"""
