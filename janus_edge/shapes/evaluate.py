"""ShapeEval through a pipeline: generated pictures and chat answers of any shapes bundle, scored by the detector.

Library functions (numpy + the runtime's Pipeline-like object only) shared by benchmarks/shapes_eval.py, the
quantization report's image rows (quant/report.py) and the tests.
"""
from __future__ import annotations

import numpy as np

from . import scenes as S
from .shapeeval import answer_correct, image_correct

CHAT_SEED = 12345  # drawing seed of the chat scenes (training draws with seeds 0..10)
# The shapes model's guidance weight: its unconditional row saw 10% of the generation rows and is weak, so at Janus's
# CFG 5 the extrapolation u + 5 (c - u) spoils its pictures (docs/shapes.md measures 1, 2 and 5).
SHAPES_CFG = 2.0


def _rate(rows: list[dict], key: str = "all") -> float:
    return float(np.mean([r[key] for r in rows])) if rows else float("nan")


def generation_rows(pipe, triples: list, *, n: int = 1, cfg: float = 5.0, temperature: float = 1.0,
                    seed0: int = 0, keep: bool = False) -> list[dict]:
    """One row per picture: caption, held_out, color/shape/position/all correct (+ tokens and image if `keep`)."""
    held = set(S.HELD_OUT)
    rows = []
    for i, t in enumerate(triples):
        scene = S.Scene(*t)
        res = pipe.generate_image(scene.caption, n=n, cfg_weight=cfg, temperature=temperature, seed=seed0 + i)
        for j, img in enumerate(res.images):
            row = {"caption": scene.caption, "held_out": t in held, **image_correct(img, scene)}
            if keep:
                row["tokens"], row["image"] = np.asarray(res.tokens[j]), np.asarray(img)
            rows.append(row)
    return rows


def img_pil(a: np.ndarray):
    from PIL import Image

    return Image.fromarray(a)


def chat_rows(pipe, triples: list, seed: int = CHAT_SEED) -> list[dict]:
    """One row per (drawn scene, question): the answer and whether it is exactly right."""
    held = set(S.HELD_OUT)
    scenes = [S.Scene(*t) for t in triples]
    images = S.scene_images(scenes, seed)
    rows = []
    for scene, img in zip(scenes, images):
        for attr, q in S.QUESTIONS.items():
            ans = pipe.chat(q, images=[img_pil(img)], max_new_tokens=8, temperature=0.0)
            rows.append({"caption": scene.caption, "question": q, "expected": scene.answer(attr), "answer": ans,
                         "held_out": scene.triple in held, "all": answer_correct(ans, scene.answer(attr))})
    return rows


def summary(rows: list[dict]) -> dict:
    """Rates over the seen triples (all, color, shape, position) and `held_out` (all) over the held-out ones."""
    seen = [r for r in rows if not r["held_out"]]
    held = [r for r in rows if r["held_out"]]
    out = {"n": len(rows), "all": _rate(seen), "held_out": _rate(held)}
    for k in ("color", "shape", "position"):
        if rows and k in rows[0]:
            out[k] = _rate(seen, k)
    return out


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 pictures (inf when identical); quant/evaluate.py's image rows use it too."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def agreement(rows: list[dict], ref_rows: list[dict]) -> dict:
    """Greedy image-token agreement and PSNR of the decoded pictures of `rows` against `ref_rows` (same captions,
    both made with keep=True)."""
    tok = [float((a["tokens"] == b["tokens"]).mean()) for a, b in zip(rows, ref_rows)]
    ps = [min(psnr(a["image"], b["image"]), 99.0) for a, b in zip(rows, ref_rows)]  # identical pictures: 99 dB
    return {"greedy_token_agreement": float(np.mean(tok)), "psnr_db_mean": float(np.mean(ps)),
            "psnr_db_min": float(np.min(ps)), "identical_pictures": int(sum(p >= 99.0 for p in ps))}


def is_shapes_bundle(pipe) -> bool:
    """A bundle of the shapes model (or one shaped like it): pictures of S.SIZE pixels in 64 tokens, and a tokenizer in which
    every word of the grammar is one token. The quantization report then measures pictures with ShapeEval."""
    d = pipe.dims
    if d.image_size != S.SIZE or d.num_image_tokens != 64:
        return False
    words = [*S.COLORS, *S.SHAPES, "top", "left", "right", "bottom", "center"]
    try:
        return all(len(pipe.bundle.tokenizer.encode(" " + w, add_special_tokens=False).ids) == 1 for w in words)
    except Exception:  # a tokenizer without this interface: not the shapes model's
        return False


def shapes_rows(fp_pipe, q_pipe, triples: list, chat_triples: list, cfg: float = SHAPES_CFG) -> dict:
    """The quantization report's shapes rows: ShapeEval of greedy pictures (CFG `cfg`) and exact chat answers of both
    bundles, and the quantized pictures' token agreement / PSNR against the fp ones."""
    out = {}
    rows = {}
    for name, p in (("fp", fp_pipe), ("quantized", q_pipe)):
        rows[name] = generation_rows(p, triples, n=1, cfg=cfg, temperature=0.0, keep=True)
        out[name] = {"greedy": summary(rows[name]), "chat": summary(chat_rows(p, chat_triples))}
    out["vs_fp"] = agreement(rows["quantized"], rows["fp"])
    out["captions"], out["chat_scenes"], out["cfg"] = len(triples), len(chat_triples), cfg
    return out
