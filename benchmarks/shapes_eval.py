"""ShapeEval of a shapes bundle (any precision): generated pictures and chat answers, scored by the detector.

    python -m janus_edge.benchmarks.shapes_eval BUNDLE [BUNDLE ...] [--out benchmarks/results/shapes_eval]
        [--seeds 3] [--cfg 5] [--temperature 1]

Per bundle:
- generation, all 108 captions (the 12 held-out triples reported apart): sampled (CFG `--cfg`, temperature
  `--temperature`, `--seeds` images a prompt, one request of n images seeded by the prompt's index) and greedy
  (one image); a picture counts when its detected colour, shape and position are all the caption's;
- chat: freshly drawn scenes (a seed training never used), one of each of the 108 triples, the three questions
  each, greedy; an answer counts when it is exactly the scene's word.
Writes OUT.json and OUT.md (one row per bundle); the library functions are what tests/test_shapes.py uses.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from janus_edge.shapes import scenes as S
from janus_edge.shapes.shapeeval import answer_correct, image_correct

CHAT_SEED = 12345  # drawing seed of the chat scenes (training draws with seeds 0..10)


def _rate(rows: list[dict], key: str = "all") -> float:
    return float(np.mean([r[key] for r in rows])) if rows else float("nan")


def generation_rows(pipe, triples: list, *, n: int = 1, cfg: float = 5.0, temperature: float = 1.0,
                    seed0: int = 0) -> list[dict]:
    """One row per picture: triple, held_out, color/shape/position/all correct."""
    held = set(S.HELD_OUT)
    rows = []
    for i, t in enumerate(triples):
        scene = S.Scene(*t)
        res = pipe.generate_image(scene.caption, n=n, cfg_weight=cfg, temperature=temperature, seed=seed0 + i)
        for img in res.images:
            rows.append({"caption": scene.caption, "held_out": t in held, **image_correct(img, scene)})
    return rows


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


def img_pil(a: np.ndarray):
    from PIL import Image

    return Image.fromarray(a)


def summary(rows: list[dict]) -> dict:
    seen = [r for r in rows if not r["held_out"]]
    held = [r for r in rows if r["held_out"]]
    out = {"n": len(rows), "all": _rate(seen), "held_out": _rate(held)}
    for k in ("color", "shape", "position"):
        if rows and k in rows[0]:
            out[k] = _rate(seen, k)
    return out


def _modes(manifest) -> list[str]:
    """The quantization modes of a bundle's graphs (int8 / fp8 name theirs first in `scheme`), or ["none"]."""
    q = [g.quantization for g in manifest.graphs.values() if g.quantization]
    return sorted({str(x.get("mode") or x.get("scheme")).split()[0] for x in q}) or ["none"]


def evaluate(bundle: str, seeds: int = 3, cfg: float = 5.0, temperature: float = 1.0, threads: int | None = None,
             progress: bool = True) -> dict:
    from janus_edge import Pipeline

    pipe = Pipeline.from_bundle(bundle, threads=threads)
    triples = S.all_triples()
    t0 = time.perf_counter()
    sampled = generation_rows(pipe, triples, n=seeds, cfg=cfg, temperature=temperature)
    t1 = time.perf_counter()
    greedy = generation_rows(pipe, triples, n=1, cfg=cfg, temperature=0.0)
    t2 = time.perf_counter()
    chat = chat_rows(pipe, triples)
    t3 = time.perf_counter()
    if progress:
        print(f"[shapes-eval] {bundle}: sampled {t1 - t0:.0f}s, greedy {t2 - t1:.0f}s, chat {t3 - t2:.0f}s",
              file=sys.stderr, flush=True)
    misses = [r for r in greedy if not r["all"]] + [r for r in chat if not r["all"]]
    return {"bundle": os.path.abspath(bundle), "precision": pipe.bundle.dtype,
            "quantization": _modes(pipe.bundle.manifest),
            "sampled": {**summary(sampled), "cfg": cfg, "temperature": temperature, "images_per_prompt": seeds},
            "greedy": {**summary(greedy), "cfg": cfg},
            "chat": summary(chat),
            "seconds": {"sampled": t1 - t0, "greedy": t2 - t1, "chat": t3 - t2,
                        "per_sampled_image": (t1 - t0) / max(len(sampled), 1)},
            "misses": misses[:40]}


def markdown(results: list[dict]) -> str:
    pct = lambda v: "-" if v != v else f"{100 * v:.1f}%"  # noqa: E731
    lines = ["| bundle | quant | sampled (CFG, T=1) | held-out | greedy | held-out | chat | held-out |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {os.path.basename(r['bundle'])} | {','.join(r['quantization'])} | {pct(r['sampled']['all'])}"
                     f" | {pct(r['sampled']['held_out'])} | {pct(r['greedy']['all'])} | {pct(r['greedy']['held_out'])}"
                     f" | {pct(r['chat']['all'])} | {pct(r['chat']['held_out'])} |")
    lines.append("")
    lines.append("Seen = the 96 training triples; held-out = the 12 triples training never saw. Generation: a picture "
                 "counts when ShapeEval reads the caption's colour, shape and position; chat: exact answer words.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m janus_edge.benchmarks.shapes_eval", description=__doc__.split("\n")[0])
    p.add_argument("bundle", nargs="+")
    p.add_argument("--out", default="benchmarks/results/shapes_eval", help="writes OUT.json and OUT.md")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--cfg", type=float, default=5.0)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    for b in a.bundle:
        if not os.path.isfile(os.path.join(b, "manifest.json")):
            print(f"error: not a bundle: {b}", file=sys.stderr)
            return 2
    import platform

    results = [evaluate(b, a.seeds, a.cfg, a.temperature, a.threads) for b in a.bundle]
    doc = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "results": results}
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out + ".json", "w") as fh:
        json.dump(doc, fh, indent=2)
    with open(a.out + ".md", "w") as fh:
        fh.write(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
