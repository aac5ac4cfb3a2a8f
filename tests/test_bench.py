"""`janus-edge bench` on the tiny preset: JSON keys and plausible values, baseline, plot, chat, table, bad input."""
from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest

from janus_edge.benchmarks import floor as F

BW_MB = "32"  # small bandwidth probe: fast tests (the real default is 1024 MiB)
STEPS = 6


@pytest.fixture(autouse=True)
def _small_probe(monkeypatch):
    monkeypatch.setenv("JANUS_EDGE_BENCH_BANDWIDTH_MB", BW_MB)


def _cli(*args) -> tuple[int, str, str]:
    """The CLI in-process for module-scoped fixtures (the `cli` fixture is per test)."""
    from janus_edge.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def t2i(tiny_bundle, tiny_bundle_fp16, tiny_ckpt, tmp_path_factory):
    """Both tiny bundles, 6 timed steps, 2 runs, 1 thread, the transformers baseline and a plot."""
    d = tmp_path_factory.mktemp("bench")
    mp = pytest.MonkeyPatch()
    mp.setenv("JANUS_EDGE_BENCH_BANDWIDTH_MB", BW_MB)
    try:
        code, out, err = _cli("bench", tiny_bundle, tiny_bundle_fp16, "--task", "t2i", "--json", d / "r.json",
                              "--steps", STEPS, "--runs", 2, "--threads", 1, "--baseline", "hf",
                              "--checkpoint", tiny_ckpt, "--plot", d / "r.png")
    finally:
        mp.undo()
    assert code == 0, err
    return json.loads((d / "r.json").read_text()), out, d


def _positive(r: dict, keys) -> None:
    for k in keys:
        assert isinstance(r[k], (int, float)) and r[k] > 0, (k, r.get(k))


def test_t2i_json_has_every_key_with_plausible_values(t2i, tiny_bundle, tiny_bundle_fp16):
    res, _, _ = t2i
    assert res["schema"] == "janus-edge-bench/1" and res["task"] == "t2i"
    assert [r["bundle"] for r in res["results"]] == [tiny_bundle, tiny_bundle_fp16]
    assert 0.5 <= res["bandwidth_gbps"] <= 2000 and "onnxruntime MatMul" in res["bandwidth_method"]
    bw = res["bandwidth"]  # two probes (before and after the bundles), the best run of all
    assert len(bw["probe_gbps"]) == 2 and len(bw["runs_gbps"]) == 14
    assert bw["bandwidth_gbps"] == pytest.approx(max(bw["runs_gbps"]), abs=0.01)
    for r in res["results"]:
        _positive(r, ["decode_step_ms_p50", "decode_step_ms_p90", "prefill_ms", "vq_decode_ms", "image_s",
                      "peak_rss_mb", "weight_bytes_per_step", "kv_bytes_per_step", "floor_ms", "floor_ratio",
                      "speedup", "bandwidth_gbps"])
        assert r["decode_step_ms_p90"] >= r["decode_step_ms_p50"]
        assert r["image_s_extrapolated"] is True and "extrapolated" in r["image_s_note"]
        assert r["steps_timed"] == 2 * STEPS and r["warmup_steps"] == 2 and r["rows"] == 2
        assert len(r["step_ms"]) == STEPS + 2  # run 0: warm-up steps included in the series
        assert r["kv_bytes_per_step_full_cache"] > r["kv_bytes_per_step"]
        assert r["bytes_per_step"] == r["weight_bytes_per_step"] + r["kv_bytes_per_step"]
    # top level = the first result, for convenience
    for k in ("decode_step_ms_p50", "decode_step_ms_p90", "prefill_ms", "vq_decode_ms", "image_s", "peak_rss_mb",
              "floor_ms", "floor_ratio", "speedup", "weight_bytes_per_step", "kv_bytes_per_step"):
        assert res[k] == res["results"][0][k], k
    assert res["results"][0]["dtype"] == "float32" and res["results"][1]["dtype"] == "float16"
    # the floor's weight term is exactly the manifest's weight_bytes of the three graphs a step runs
    from janus_edge.contract import load_manifest

    for r in res["results"]:
        m = load_manifest(r["bundle"])
        assert r["weight_bytes_per_step"] == sum(m.graphs[g].weight_bytes for g in F.T2I_GRAPHS)
    assert res["results"][1]["weight_bytes_per_step"] < res["results"][0]["weight_bytes_per_step"]  # fp16


def test_environment(t2i, tiny_bundle):
    env = t2i[0]["environment"]
    assert env["cpu"] and env["cores"] >= 1 and env["threads"] == 1 and env["backend"] == "ort"
    for lib in ("onnxruntime", "numpy", "torch", "transformers"):
        assert env["versions"][lib], lib
    assert env["precision"][tiny_bundle]["lm"] == "float32"


def test_baseline_and_speedup(t2i):
    res = t2i[0]
    b = res["baseline"]
    _positive(b, ["decode_step_ms_p50", "decode_step_ms_p90", "prefill_ms", "floor_ms", "floor_ratio",
                  "weight_bytes_per_step", "peak_rss_mb"])
    assert b["decode_step_ms_p90"] >= b["decode_step_ms_p50"] and b["steps_timed"] == 2 * STEPS
    assert b["torch_threads"] == 1 and b["image_s_extrapolated"] is True
    for r in res["results"]:
        assert r["speedup"] == pytest.approx(b["decode_step_ms_p50"] / r["decode_step_ms_p50"], rel=1e-2)
    # the torch model's step weights equal the fp32 bundle's (same modules, fp32)
    assert b["weight_bytes_per_step"] == pytest.approx(res["results"][0]["weight_bytes_per_step"], rel=0.02)


def test_plot_and_summary(t2i):
    res, out, d = t2i
    png = (d / "r.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert "decode step p50" in out and "speedup vs transformers" in out and "(extrapolated)" in out
    assert "floor" in out and "GB/s" in out
    # which kernels ran (ORT's profiler over the warm-up call): the fp32 lm's weights go through (Fused)MatMul
    assert "kernels ran (ORT, after its fusions): gen_embed: " in out
    lm = res["results"][0]["kernels"]["lm"]
    assert set(lm) <= set(__import__("janus_edge.benchmarks.ours", fromlist=["x"]).KERNEL_OPS)
    assert lm.get("MatMul", 0) + lm.get("FusedMatMul", 0) >= 4 * 2  # >= the tiny model's 4 weight MatMuls per layer


def test_table(t2i, capsys):
    from janus_edge.benchmarks import table

    assert table.main([str(t2i[2] / "r.json")]) == 0
    md = capsys.readouterr().out
    assert md.count("\n| r |") == 3  # two bundles + the baseline
    assert "step p50 ms" in md and "transformers" in md and "(extrap.)" in md


def test_several_image_counts_in_one_run(cli, tiny_bundle, tiny_ckpt, tmp_path):
    """--images 1 2: each bundle timed at 1 then 2 images (4 CFG rows), the ratio of their steps recorded; the
    baseline runs at the first count and the speedup is given only against it."""
    from janus_edge.benchmarks import table

    p = tmp_path / "n.json"
    code, out, err = cli("bench", tiny_bundle, "--json", p, "--steps", 3, "--threads", 1, "--images", 1, 2,
                         "--baseline", "hf", "--checkpoint", tiny_ckpt)
    assert code == 0, err
    res = json.loads(p.read_text())
    one, two = res["results"]
    assert (one["n"], one["rows"], two["n"], two["rows"]) == (1, 2, 2, 4) and res["baseline"]["n"] == 1
    assert two["kv_bytes_per_step"] == pytest.approx(2 * one["kv_bytes_per_step"])
    assert two["images_step_ratio"] == pytest.approx(two["decode_step_ms_p50"] / one["decode_step_ms_p50"], rel=1e-2)
    assert two["images_step_ratio_vs_n"] == 1 and "images_step_ratio" not in one
    assert one["speedup"] > 0 and "speedup" not in two
    assert "2 images (4 rows): step" in out
    assert "2 images (" in table.tables([str(p)])


def test_whole_image_greedy_matches_transformers(tiny_bundle, tiny_ckpt):
    """No --steps: every step timed, image_s measured (not extrapolated); greedy tokens equal transformers'."""
    from janus_edge.benchmarks.runner import BenchConfig, run

    res = run(BenchConfig(bundles=[tiny_bundle], task="t2i", steps=None, threads=1, baseline="hf",
                          checkpoint=tiny_ckpt, temperature=0.0, bandwidth_mb=16, quiet=True))
    r, T = res["results"][0], 64
    assert r["image_s_extrapolated"] is False and r["steps_timed"] == T - 1 - 2
    assert r["image_s"] * 1e3 >= r["prefill_ms"] + r["vq_decode_ms"]
    assert res["baseline"]["greedy_tokens_equal_ours"] is True


def test_chat(cli, tiny_bundle, tiny_ckpt, tmp_path):
    p = tmp_path / "c.json"
    code, out, err = cli("bench", tiny_bundle, "--task", "chat", "--json", p, "--steps", 4, "--threads", 1,
                         "--baseline", "hf", "--checkpoint", tiny_ckpt)
    assert code == 0, err
    res = json.loads(p.read_text())
    r = res["results"][0]
    _positive(r, ["image_encode_ms", "ttft_ms", "tokens_per_s", "decode_step_ms_p50", "floor_ms", "floor_ratio",
                  "peak_rss_mb"])
    assert r["decode_step_ms_p90"] >= r["decode_step_ms_p50"] and r["prompt_len"] > 64
    assert set(r["weight_bytes_by_graph"]) == {"lm", "lm_head"}
    assert res["baseline"]["ttft_ms"] > 0 and res["speedup"] > 0
    assert "TTFT" in out and "tokens/s" in out


@pytest.mark.parametrize("args,match", [
    (["--baseline", "hf"], "--checkpoint"),
    (["--steps", "0"], "--steps"),
    (["--steps", "64"], "exceeds"),
    (["--runs", "0"], "--runs"),
    (["--threads", "0"], "--threads"),
    (["--checkpoint", "x"], "--baseline hf"),
    (["--baseline", "hf", "--checkpoint", "/nonexistent/ckpt"], "checkpoint not found"),
    (["--backend", "trt"], "trt"),
    (["--images", "0"], "--images"),
    (["--task", "chat", "--images", "2"], "--images"),
])
def test_bad_input_one_error_line(cli, tiny_bundle, tmp_path, args, match):
    code, out, err = cli("bench", tiny_bundle, "--json", tmp_path / "x.json", *args)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:") and match in lines[0], err
    assert not (tmp_path / "x.json").exists()


def test_missing_bundle_and_json_dir(cli, tiny_bundle, tmp_path):
    code, _, err = cli("bench", str(tmp_path / "nope"), "--json", tmp_path / "x.json")
    assert code == 2 and err.startswith("error:") and "not found" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli("bench", tiny_bundle, "--json", tmp_path / "no" / "x.json")
    assert code == 2 and err.startswith("error:") and len(err.strip().splitlines()) == 1


def test_floor_arithmetic():
    from janus_edge.contract import ModelDims

    pro1b = ModelDims(hidden_size=2048, num_layers=24, num_heads=16, num_kv_heads=16, head_dim=128,
                      vocab_size=102400, image_vocab_size=16384, num_image_tokens=576, image_size=384,
                      max_position_embeddings=16384)
    # JANUS_FACTS: K and V cost 16 KB per layer, row and position in fp32
    assert F.kv_bytes_per_position(pro1b, rows=1, itemsize=4) == 16384 * 24
    # steps 1..3 after a 10-token prompt read 11, 12, 13 positions: mean 12
    assert F.kv_valid_bytes(pro1b, 2, 2, 10, [1, 2, 3]) == 12 * 16384 * 24 * 2 // 2
    f = F.floor(weight_bytes=4_000_000_000, kv_bytes=1e9, kv_full_bytes=2e9, bandwidth_gbps=50.0, p50_ms=200.0)
    assert f["floor_ms"] == pytest.approx(100.0) and f["floor_ratio"] == pytest.approx(2.0)
    assert f["floor_ms_full_cache"] == pytest.approx(120.0) and f["achieved_gbps"] == pytest.approx(25.0)


def test_bandwidth_probe_small():
    from janus_edge.benchmarks.bandwidth import measure_bandwidth

    bw = measure_bandwidth(mb=16, threads=1, runs=2, iters=2)
    assert 0.5 <= bw["bandwidth_gbps"] <= 2000 and len(bw["runs_gbps"]) == 2
    assert bw["bandwidth_gbps"] == pytest.approx(max(bw["runs_gbps"]), abs=0.01)
    assert bw["numpy_sum_1thread_gbps"] > 0 and "best of 2" in bw["method"]


def test_step_stats():
    from janus_edge.benchmarks.common import step_stats

    s = step_stats(np.linspace(0.01, 0.1, 10))
    assert s["decode_step_ms_p50"] == pytest.approx(55.0) and s["decode_step_ms_p90"] >= s["decode_step_ms_p50"]
    assert s["steps_timed"] == 10


def test_profile_breakdown(tiny_bundle):
    from janus_edge.benchmarks.profile_lm import format_profile, profile

    from janus_edge.contract import load_manifest

    p = profile(tiny_bundle, steps=2, warmup=1, threads=1, spin="lm", images=2, bandwidth_gbps=10.0)
    assert p["steps_profiled"] == 2 and set(p["graph_ms_per_step"]) == {"gen_embed", "lm", "gen_head"}
    assert p["rows"] == 4 and all(v > 0 for v in p["graph_ms_per_step"].values())
    assert any(k.startswith("lm:MatMul") for k in p["ops"]) and p["profile_dir"] is None
    # the bytes the profiler says the step's nodes read cover every weight of the step's graphs (the floor's bytes)
    m = load_manifest(tiny_bundle)
    weights = sum(m.graphs[g].weight_bytes for g in ("gen_embed", "lm", "gen_head"))
    assert weights <= p["bytes_read_per_step"] <= 1.5 * weights + 4e6
    assert p["floor_ms_per_step"] == pytest.approx(p["bytes_read_per_step"] / 10e9 * 1e3, abs=1e-3)
    r = p["roles"]["attention over the KV cache (QK^T, PV)"]
    assert r["bytes"] > 0 and r["floor_ratio"] == pytest.approx(r["ms"] / r["floor_ms"], rel=0.02)
    assert "floor" in format_profile(p) and "lm_head" not in p["roles"]
