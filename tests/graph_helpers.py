"""Helpers shared by test modules (imported as `graph_helpers`: pytest puts tests/ on sys.path): a bundle's lm graph and
random feeds for it, and a chain of fp16 MatMuls saved with external data (the memory tests of fp16 sessions)."""
from __future__ import annotations

import json
import os

import numpy as np


def lm_graph(bundle: str) -> tuple[str, dict]:
    """(path of the bundle's lm .onnx, its manifest entry)."""
    with open(os.path.join(bundle, "manifest.json")) as fh:
        e = json.load(fh)["graphs"]["lm"]
    return os.path.join(bundle, e["file"]), e


def lm_feeds(e: dict, rows: int, seq: int, past: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs of the lm entry `e` at (rows, seq, past), position ids counting on from `past`."""
    rng = np.random.default_rng(seed)
    out = {}
    for t in e["inputs"]:
        shape = [{"rows": rows, "seq": seq, "past": past}.get(d, d) for d in t["dims"]]
        out[t["name"]] = (np.tile(np.arange(past, past + seq), (rows, 1)) if t["name"] == "position_ids"
                          else rng.standard_normal(shape)).astype(t["dtype"])
    return out


def fp16_matmul_chain(path: str, n: int = 16, dim: int = 2048) -> tuple[str, int]:
    """n fp16 [dim, dim] MatMuls in a chain, saved at `path` with external data; -> (output name, weight bytes)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng, nodes, inits, x = np.random.default_rng(0), [], [], "x"
    for i in range(n):
        w = (rng.standard_normal((dim, dim), dtype=np.float32) * 0.02).astype(np.float16)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"h{i}"]))
        x = f"h{i}"
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["n", dim])],
                          [helper.make_tensor_value_info(x, TensorProto.FLOAT16, ["n", dim])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path, save_as_external_data=True,
              location=os.path.basename(path) + ".data", size_threshold=1024)
    return x, n * dim * dim * 2
