"""A request larger than the memory there is is refused up front (one line, exit 2 in the CLI; InputError in the API
and serving), with the KV cache + activations arithmetic of `janus-edge memory`, instead of allocating until the
kernel's OOM killer ends the process. A request that fits still runs."""
from __future__ import annotations

import os

import numpy as np
import pytest

from janus_edge import Pipeline
from janus_edge.errors import InputError
from janus_edge.runtime import memory

MB = 2**20


@pytest.fixture(scope="module")
def pipe(tiny_bundle):
    return Pipeline.from_bundle(tiny_bundle)


@pytest.fixture
def available(monkeypatch):
    """available(bytes): the memory probe reports that much."""
    monkeypatch.delenv("JANUS_EDGE_MEMORY_CHECK", raising=False)
    return lambda b: monkeypatch.setattr(memory, "available_bytes", lambda: b)


def test_the_probe_reads_memavailable():
    b = memory.available_bytes()
    assert isinstance(b, int) and 0 < b
    if os.path.isfile("/proc/meminfo"):
        with open("/proc/meminfo") as fh:
            kb = next(int(x.split()[1]) for x in fh if x.startswith("MemAvailable:"))
        assert abs(b - kb * 1024) < 2**30  # the same figure, give or take what moved between the two reads


def test_generate_n_100000_is_refused_with_the_real_probe(cli, one_error_line, tiny_bundle, tmp_path):
    """The issue's case: before, it allocated until the OOM killer ended it (exit 137, no message)."""
    code, _, err = cli("generate", tiny_bundle, "--prompt", "a fox", "--out", tmp_path / "x.png", "--n", 100000)
    line = one_error_line(err)
    assert code == 2 and "a request for 100000 image(s) (200000 rows" in line and "available" in line, line
    assert os.listdir(tmp_path) == []


def test_generate_cli_refuses_what_does_not_fit_and_runs_what_does(available, cli, one_error_line, tiny_bundle,
                                                                   tmp_path):
    available(64 * MB)  # tiny: one image needs ~25 MB (its VQ decode), four ~100 MB
    code, _, err = cli("generate", tiny_bundle, "--prompt", "a fox", "--out", tmp_path / "x.png", "--n", 4)
    line = one_error_line(err)
    assert code == 2 and "needs ~" in line and "64.0 MiB (67108864 bytes) of memory is available" in line, line
    assert os.listdir(tmp_path) == []
    code, _, err = cli("generate", tiny_bundle, "--prompt", "a fox", "--out", tmp_path / "x.png", "--n", 1)
    assert code == 0 and os.path.isfile(tmp_path / "x.png"), err


def test_the_needed_bytes_are_the_memory_commands(pipe, available):
    """The figure in the message is KV cache + activations as `janus-edge memory` computes them."""
    from janus_edge.runtime.trt_memory import activation_bytes, kv_bytes

    d, ids = pipe.dims, pipe.prompt_ids("a fox")
    length = len(ids) + d.num_image_tokens
    need = kv_bytes(d, 6, length, "float32") + activation_bytes(d, 6, len(ids), length, "float32", 3)
    available(need - 1)
    with pytest.raises(InputError, match=f"needs ~.*\\({need} bytes\\)"):
        pipe.generate_image("a fox", n=3, seed=0)
    available(need)
    assert pipe.generate_image("a fox", n=3, seed=0, decode=False).tokens.shape == (3, d.num_image_tokens)


def test_api_generate_and_chat(pipe, available, sample_image):
    available(1024)
    with pytest.raises(InputError, match="a request for 1 image"):
        pipe.generate_image("a fox", n=1)
    with pytest.raises(InputError, match="a chat of .* prompt \\+ 8 new tokens needs"):
        pipe.chat("What is it?", images=[sample_image], max_new_tokens=8)
    available(64 * MB)
    assert isinstance(pipe.chat("What is it?", images=[sample_image], max_new_tokens=8), str)


def test_the_check_can_be_turned_off(pipe, available, monkeypatch):
    available(1024)
    monkeypatch.setenv("JANUS_EDGE_MEMORY_CHECK", "0")
    assert pipe.generate_image("a fox", n=1, seed=0, decode=False).tokens.shape[0] == 1


# ---- serving: the pool at start, each request at admission ----------------------------------------------------

def test_serving_pool_larger_than_memory_is_refused_at_start(available, tiny_bundle):
    from janus_edge.serving.engine import Engine, EngineOptions

    available(1 * MB)
    with pytest.raises(InputError, match="a decode pool of 64 rows x .* cache slots needs"):
        Engine(EngineOptions(tiny_bundle, rows=64))


def test_scheduler_admission(pipe, available, monkeypatch):
    from janus_edge.runtime.scheduler import Scheduler

    available(64 * MB)
    s = Scheduler(pipe.bundle, rows=4, max_len=256)
    ids = pipe.prompt_ids("a fox")

    def no_embed(*a, **k):
        raise AssertionError("the request's rows were embedded before its size was checked")

    with monkeypatch.context() as m:  # n = 100000: refused before 200000 rows of embeddings are made
        m.setattr(pipe.bundle, "embed_text", no_embed)
        with pytest.raises(InputError, match="needs 200000 rows; this server's pool has 4"):
            s.submit_image(ids, n=100000)
    available(1024)  # memory taken by something else since the pool was allocated: the prefill does not fit
    with pytest.raises(InputError, match="the prefill of a prompt of .* needs ~"):
        s.submit_image(ids, n=1)
    available(64 * MB)
    h = s.submit_image(ids, n=1, seed=0)
    s.run_until_idle()
    assert np.asarray(h.result()).shape == (1, pipe.dims.num_image_tokens)
