"""Shared fixtures. Heavy imports (torch, transformers) happen inside the fixtures, so runtime-only tests stay light."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> str:
    """A tiny random HF-format Janus checkpoint (seed 0), written once per test session."""
    from janus_edge.export.init_random import init_random

    return init_random("tiny", str(tmp_path_factory.mktemp("ckpt") / "tiny"), seed=0)


@pytest.fixture(scope="session")
def tiny_model(tiny_ckpt):
    """transformers' JanusForConditionalGeneration of `tiny_ckpt` (eval mode, eager attention, float32)."""
    from janus_edge.export.checkpoint import load_checkpoint

    return load_checkpoint(tiny_ckpt).model
