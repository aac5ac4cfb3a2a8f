"""`janus-edge doctor` runs here for real (CI: no GPU): one line per fact, a verdict, exit 0 for the CPU path."""
from __future__ import annotations

import json

from janus_edge.runtime import doctor


def test_doctor_runs_here_and_says_the_cpu_path_works(cli):
    code, out, err = cli("doctor")
    lines = out.strip().splitlines()
    assert code == 0 and err == ""
    assert lines[-1].startswith("verdict: ready")
    names = [ln[3:].split("  ")[0].strip() for ln in lines[:-1]]
    for want in ("python", "os / arch", "onnxruntime", "tensorrt", "native host library", "backend ort --device cpu",
                 "backend ort --device cuda", "backend trt"):
        assert want in names, names
    assert all(ln[:3] in ("ok ", "!! ", "-- ") for ln in lines[:-1])
    code, out, _ = cli("doctor", "--json")
    r = json.loads(out)
    assert code == 0 and r["exit"] == 0 and any(f["name"] == "backend ort --device cpu" and f["ok"]
                                                for f in r["facts"])


def test_jetson_board_and_l4t_release():
    model = "NVIDIA Jetson AGX Orin Developer Kit\x00"
    rel = "# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64, DATE: Fri Sep 13 2024"
    assert doctor.parse_jetson(model, rel) == "NVIDIA Jetson AGX Orin Developer Kit (L4T R36.4.0)"
    assert doctor.parse_jetson(model, None) == "NVIDIA Jetson AGX Orin Developer Kit"
    assert doctor.parse_jetson("Raspberry Pi 5", rel) is None and doctor.parse_jetson(None, None) is None


def test_precisions_follow_compute_capability():
    assert doctor.precisions((8, 7), True) == ["fp32", "fp16", "int8", "int4"]  # Orin: no FP8
    assert doctor.precisions((8, 9), True)[-1] == "fp8" and doctor.precisions((11, 0), True)[-1] == "fp8"
    assert doctor.precisions((9, 0), False) == [] and doctor.precisions(None, True) == []


def test_verdict_exit_codes():
    base = {"cpu": True, "gpu": None, "cc": None, "trt": False, "providers": ["CPUExecutionProvider"]}
    assert doctor.verdict(base)[1] == 0
    assert doctor.verdict({**base, "cpu": False}) == ("verdict: nothing can run here: install onnxruntime", 1)
    line, code = doctor.verdict({**base, "gpu": "Orin", "cc": (8, 7), "trt": True})
    assert code == 0 and "GPU (trt) on Orin" in line
