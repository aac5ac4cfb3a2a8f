"""scripts/gpu-check on this machine (no GPU): its plan lists every step, and it refuses cleanly without building."""
from __future__ import annotations

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "scripts", "gpu-check")
STEPS = ["build", "gpu tests", "memcheck", "racecheck", "kernel timing"]


def _run(*args, build_dir):
    return subprocess.run([sys.executable, SCRIPT, "--build-dir", str(build_dir), *args], capture_output=True,
                          text=True, timeout=120)


def test_plan_lists_every_step(tmp_path):
    r = _run("--plan", build_dir=tmp_path / "b")
    assert r.returncode == 0, r.stderr
    listed = [ln.split(None, 1)[1] for ln in r.stdout.splitlines()[1:]]
    assert [name for name in STEPS if any(x.startswith(name + " ") for x in listed)] == STEPS, r.stdout
    assert "JANUS_EDGE_REQUIRE_GPU=1" in r.stdout and "compute-sanitizer memcheck" in r.stdout
    r = _run("--plan", "--trt", build_dir=tmp_path / "b")
    assert "6. trt engines" in r.stdout and "7. trt tests" in r.stdout
    assert not (tmp_path / "b").exists()


def test_refuses_without_a_gpu_with_one_error_line_and_builds_nothing(tmp_path):
    from janus_edge.runtime import trt_env

    if trt_env.probe(need_trt=False).ok:
        import pytest

        pytest.skip("a GPU is present: gpu-check would run")
    r = _run(build_dir=tmp_path / "b")
    err = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(err) == 1 and err[0].startswith("error: gpu-check needs a usable NVIDIA GPU: ")
    assert "1. build" in r.stdout  # the plan comes first
    assert not (tmp_path / "b").exists()


def test_docs_memory_table_is_the_scripts_output():
    """docs/tensorrt-jetson.md's table is scripts/jetson-memory-table's output (generated, not typed)."""
    import pytest

    pytest.importorskip("torch", reason="the table counts parameters with torch's meta device (export extra)")
    r = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "jetson-memory-table")], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    doc = open(os.path.join(REPO, "docs", "tensorrt-jetson.md")).read()
    section = doc.split("<!-- memory-table:begin -->\n")[1].split("\n<!-- memory-table:end -->")[0]
    assert section == r.stdout.rstrip("\n")
    rows = [ln for ln in section.splitlines() if ln.startswith("| pro-")]
    assert len(rows) == 8 and all("no FP8 (sm 8.7)" in ln for ln in rows if "| fp8 |" in ln)
