"""ShapeEval of a shapes bundle (any precision): generated pictures and chat answers, scored by the detector.

    python -m janus_edge.benchmarks.shapes_eval BUNDLE [BUNDLE ...] [--out benchmarks/results/shapes_eval]
        [--seeds 3] [--cfg 5] [--temperature 1]

Per bundle:
- generation, all 108 captions (the 12 held-out triples reported apart): sampled (CFG `--cfg`, temperature
  `--temperature`, `--seeds` images a prompt, one request of n images seeded by the prompt's index) and greedy
  (one image); a picture counts when its detected colour, shape and position are all the caption's;
- chat: freshly drawn scenes (a seed training never used), one of each of the 108 triples, the three questions
  each, greedy; an answer counts when it is exactly the scene's word;
- against the first bundle given (the fp32 one): the share of greedy image tokens equal to its, and the PSNR of the
  decoded pictures.
Writes OUT.json and OUT.md (one row per bundle); the scoring lives in janus_edge/shapes/evaluate.py.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from janus_edge.shapes import scenes as S
from janus_edge.shapes.evaluate import (CHAT_SEED, agreement, chat_rows, generation_rows, img_pil,  # noqa: F401
                                         summary)

def _modes(manifest) -> list[str]:
    """The quantization modes of a bundle's graphs (int8 / fp8 name theirs first in `scheme`), or ["none"]."""
    q = [g.quantization for g in manifest.graphs.values() if g.quantization]
    return sorted({str(x.get("mode") or x.get("scheme")).split()[0] for x in q}) or ["none"]


def evaluate(bundle: str, seeds: int = 3, cfg: float = 5.0, temperature: float = 1.0, threads: int | None = None,
             progress: bool = True, reference: list[dict] | None = None) -> dict:
    """ShapeEval of one bundle; `reference`: the greedy rows (`_greedy_rows`) of another bundle, against which this
    one's greedy image tokens and pictures are compared (token agreement, PSNR)."""
    from janus_edge import Pipeline

    pipe = Pipeline.from_bundle(bundle, threads=threads)
    triples = S.all_triples()
    t0 = time.perf_counter()
    sampled = generation_rows(pipe, triples, n=seeds, cfg=cfg, temperature=temperature)
    t1 = time.perf_counter()
    greedy = generation_rows(pipe, triples, n=1, cfg=cfg, temperature=0.0, keep=True)
    t2 = time.perf_counter()
    chat = chat_rows(pipe, triples)
    t3 = time.perf_counter()
    if progress:
        print(f"[shapes-eval] {bundle}: sampled {t1 - t0:.0f}s, greedy {t2 - t1:.0f}s, chat {t3 - t2:.0f}s",
              file=sys.stderr, flush=True)
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("tokens", "image")} for r in rows]  # noqa: E731
    misses = strip([r for r in greedy if not r["all"]]) + [r for r in chat if not r["all"]]
    return {"bundle": os.path.abspath(bundle), "precision": pipe.bundle.dtype,
            "quantization": _modes(pipe.bundle.manifest),
            "sampled": {**summary(sampled), "cfg": cfg, "temperature": temperature, "images_per_prompt": seeds},
            "greedy": {**summary(greedy), "cfg": cfg},
            "chat": summary(chat),
            "seconds": {"sampled": t1 - t0, "greedy": t2 - t1, "chat": t3 - t2,
                        "per_sampled_image": (t1 - t0) / max(len(sampled), 1)},
            "vs_reference": agreement(greedy, reference) if reference else None,
            "misses": misses[:40], "_greedy_rows": greedy}


def _vs(v: dict | None) -> str:
    if not v:
        return "- | -"
    return (f"{100 * v['greedy_token_agreement']:.1f}% | {v['psnr_db_mean']:.1f} / {v['psnr_db_min']:.1f} dB "
            f"({v['identical_pictures']} identical)")


def markdown(results: list[dict]) -> str:
    pct = lambda v: "-" if v != v else f"{100 * v:.1f}%"  # noqa: E731
    cfg = results[0]["sampled"]["cfg"] if results else "?"
    lines = [f"| bundle | quant | sampled (CFG {cfg:g}, T=1) | held-out | greedy (CFG {cfg:g}) | held-out | chat | held-out "
             "| greedy tokens = first bundle's | PSNR vs first (mean / min) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {os.path.basename(r['bundle'])} | {','.join(r['quantization'])} | {pct(r['sampled']['all'])}"
                     f" | {pct(r['sampled']['held_out'])} | {pct(r['greedy']['all'])} | {pct(r['greedy']['held_out'])}"
                     f" | {pct(r['chat']['all'])} | {pct(r['chat']['held_out'])} | {_vs(r.get('vs_reference'))} |")
    lines.append("")
    lines.append("Seen = the 96 training triples; held-out = the 12 triples training never saw. Generation: a picture "
                 "counts when ShapeEval reads the caption's colour, shape and position; chat: exact answer words. "
                 "Token agreement and PSNR: each bundle's greedy pictures against the first bundle's (99 dB = "
                 "identical).")
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

    results = []
    for b in a.bundle:  # the first bundle is the reference of the others' token agreement and PSNR
        results.append(evaluate(b, a.seeds, a.cfg, a.temperature, a.threads,
                                reference=results[0]["_greedy_rows"] if results else None))
    for r in results:
        r.pop("_greedy_rows")
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
