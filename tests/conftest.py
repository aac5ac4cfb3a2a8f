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


@pytest.fixture(scope="session")
def tiny_bundle(tiny_ckpt, tmp_path_factory) -> str:
    """The fp32 bundle of `tiny_ckpt`."""
    from janus_edge.export.exporter import ExportOptions, export_bundle

    return export_bundle(tiny_ckpt, str(tmp_path_factory.mktemp("bundle") / "fp32"), options=ExportOptions(progress=False))


@pytest.fixture(scope="session")
def tiny_bundle_fp16(tiny_ckpt, tmp_path_factory) -> str:
    """The fp16 bundle of `tiny_ckpt`."""
    from janus_edge.export.exporter import ExportOptions, export_bundle

    return export_bundle(tiny_ckpt, str(tmp_path_factory.mktemp("bundle") / "fp16"),
                         options=ExportOptions(dtype="float16", progress=False))


@pytest.fixture(scope="session")
def sample_image():
    """A non-square RGB image with structure (gradients + shapes), not a flat colour."""
    import numpy as np
    from PIL import Image, ImageDraw

    h, w = 90, 160
    y, x = np.mgrid[0:h, 0:w]
    img = Image.fromarray(np.stack([x * 255 // w, y * 255 // h, (x + y) % 256], -1).astype(np.uint8))
    d = ImageDraw.Draw(img)
    d.ellipse((20, 10, 70, 60), fill=(220, 30, 30))
    d.rectangle((100, 40, 150, 85), fill=(20, 200, 60))
    return img


@pytest.fixture
def cli(capsys):
    """Run the CLI in-process: returns (exit code, stdout, stderr)."""
    from janus_edge.cli import main

    def run(*args):
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture
def one_error_line():
    """Assert that stderr holds exactly one line, `error: ...`; returns it."""

    def check(err: str) -> str:
        lines = [line for line in err.strip().splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), err
        return lines[0]

    return check
