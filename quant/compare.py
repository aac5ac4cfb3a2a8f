"""Per-graph error of a quantized bundle against its fp bundle: the same inputs through both graphs in ONNX Runtime,
output cosine and max abs error. Inputs are synthetic (small symbolic sizes, seeded): this is the per-graph part of
the report; quant/report.py adds the end-to-end accuracy on real runs."""
from __future__ import annotations

import os

import numpy as np

from janus_edge import contract as C

SIZES = {"rows": 2, "n": 1, "seq": 3, "past": 16}


def feeds(spec: C.GraphSpec, dims: C.ModelDims, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for t in spec.inputs:
        shape = tuple(SIZES[d] if isinstance(d, str) else d for d in t.dims)
        if t.name == "position_ids":
            out[t.name] = np.tile(np.arange(SIZES["past"], SIZES["past"] + shape[1]), (shape[0], 1)).astype(np.int64)
        elif t.name == "codes":
            out[t.name] = rng.integers(0, dims.image_vocab_size, shape).astype(np.int64)
        elif t.name == "cfg_weight":
            out[t.name] = np.full(shape, 5.0, t.dtype)
        else:
            out[t.name] = rng.standard_normal(shape).astype(t.dtype)
    return out


def _session(path: str):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def _cast(f: dict, spec: C.GraphSpec) -> dict:
    return {t.name: f[t.name].astype(t.dtype) for t in spec.inputs}


def compare_graph(src: str, dst: str, old: C.Manifest, new: C.Manifest, graph: str) -> dict:
    a_spec, b_spec = old.graphs[graph].spec(graph), new.graphs[graph].spec(graph)
    f = feeds(a_spec, old.dims)
    outs = [o.name for o in a_spec.outputs]
    a = _session(os.path.join(src, old.graphs[graph].file)).run(outs, _cast(f, a_spec))
    b = _session(os.path.join(dst, new.graphs[graph].file)).run(outs, _cast(f, b_spec))
    row = {"graph": graph, "precision": new.graphs[graph].precision,
           "weight_bytes_before": old.graphs[graph].weight_bytes, "weight_bytes_after": new.graphs[graph].weight_bytes,
           "inputs": "synthetic N(0,1), " + ", ".join(f"{k}={v}" for k, v in SIZES.items()), "outputs": {}}
    for name, x, y in zip(outs, a, b):
        if not np.issubdtype(np.asarray(x).dtype, np.floating):
            row["outputs"][name] = {"equal": float(np.mean(np.asarray(x) == np.asarray(y)))}
            continue
        x, y = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
        cos = float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y) + 1e-30))
        row["outputs"][name] = {"cosine": round(cos, 6), "max_abs_err": float(np.abs(x - y).max())}
    return row


def compare_graphs(src, dst, old, new, graphs) -> list[dict]:
    return [compare_graph(src, dst, old, new, g) for g in graphs]


def summarize(row: dict) -> tuple[float, float]:
    fl = [o for o in row["outputs"].values() if "cosine" in o]
    return min(o["cosine"] for o in fl), max(o["max_abs_err"] for o in fl)


def markdown(data: dict) -> str:
    lines = [f"# Quantization report ({data['mode']})", "", data.get("note", ""), "",
             "| graph | precision | weight MB before | after | min output cosine | max abs err |",
             "|---|---|---|---|---|---|"]
    for r in data["graphs"]:
        cos, err = summarize(r)
        lines.append(f"| {r['graph']} | {r['precision']} | {r['weight_bytes_before'] / 1e6:.1f} | "
                     f"{r['weight_bytes_after'] / 1e6:.1f} | {cos:.5f} | {err:.4g} |")
    return "\n".join(lines) + "\n"
