"""Peak memory of an image request (runtime/memory.py, Pipeline.generate_image): the request's KV cache and token
loop buffers are released before the VQ decode (then the heap is trimmed), and with the runtime's heap setting a freed
big buffer leaves the process instead of staying resident (glibc's dynamic mmap threshold turned off)."""
from __future__ import annotations

import subprocess
import sys
import weakref

import pytest

from janus_edge.runtime import memory
from janus_edge.runtime.pipeline import Pipeline

HEAP_PROBE = r"""
import sys
import numpy as np
from janus_edge.runtime import memory
if sys.argv[1] == "1":
    assert memory.configure_heap()
def rss():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096
for _ in range(3):  # each freed mapping raises glibc's dynamic threshold to its size: later ones come from the heap
    a = np.ones(1 << 20)
    del a
a = np.ones(1 << 20)  # 8 MiB, touched
pins = [np.ones(64) for _ in range(1000)]
r0 = rss()
del a
print((r0 - rss()) / 2**20)
"""


def test_loop_buffers_are_freed_and_the_heap_trimmed_before_the_vq_decode(tiny_bundle, monkeypatch):
    pipe = Pipeline.from_bundle(tiny_bundle, threads=1)
    be = pipe.bundle.backend
    refs, events = [], []
    alloc = be.alloc

    def recording_alloc(shape, dtype, zero=True):
        a = alloc(shape, dtype, zero)
        refs.append(weakref.ref(a))
        return a

    monkeypatch.setattr(be, "alloc", recording_alloc)
    monkeypatch.setattr(memory, "trim_heap", lambda: events.append("trim"))
    vq = pipe.bundle.graph("vq_decoder")
    run = vq.run

    def vq_run(feeds):
        alive = [r() for r in refs if r() is not None]
        events.append(("vq", len(refs), [a.shape for a in alive]))
        return run(feeds)

    monkeypatch.setattr(vq, "run", vq_run)
    res = pipe.generate_image("a red cube", seed=0)
    assert len(res.images) == 1
    n_kv = 2 * pipe.dims.num_layers
    assert events[0] == "trim" and events[1][0] == "vq", events
    assert events[1][1] >= n_kv, events  # the KV cache blocks (and the step buffers) were allocated ...
    assert events[1][2] == [], events[1][2]  # ... and none of them is alive when the VQ decoder runs


@pytest.mark.skipif(not sys.platform.startswith("linux") or memory._libc() is None, reason="glibc only")
def test_heap_setting_gives_freed_big_buffers_back():
    def freed_mib(configure: str) -> float:
        out = subprocess.run([sys.executable, "-c", HEAP_PROBE, configure], capture_output=True, text=True, check=True)
        return float(out.stdout.strip())

    assert freed_mib("1") >= 7.5  # mapped: unmapped at free
    assert freed_mib("0") < 1.0  # glibc's default: served from the heap, still resident after free (the old peak)


def test_heap_setting_can_be_left_alone(monkeypatch):
    monkeypatch.setattr(memory, "_done", False)
    monkeypatch.setenv("JANUS_EDGE_MALLOC", "default")
    assert memory.configure_heap() is False
