"""ORT backend memory settings: graphs run once per request (vision, VQ) open without the CPU arena, so their large
activations go back to the system after each call; the per-step graphs keep it."""
from __future__ import annotations


def test_one_shot_graphs_open_without_arena(tiny_bundle):
    from janus_edge.runtime.bundle import Bundle
    from janus_edge.runtime.ort_backend import OrtBackend

    b = Bundle(tiny_bundle, OrtBackend(threads=1))
    arena = {g: b.graph(g).session.get_session_options().enable_cpu_mem_arena
             for g in ("vq_decoder", "vision", "vq_encoder", "lm", "gen_head", "gen_embed")}
    assert arena == {"vq_decoder": False, "vision": False, "vq_encoder": False, "lm": True, "gen_head": True,
                     "gen_embed": True}
