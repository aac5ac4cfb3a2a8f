"""quant_report.json / quant_report.md of a quantized bundle (called by quant/api.py's quantize_bundle).

Per graph: precision, scheme summary (smoothing, kept-float MatMuls, the measured sensitivity table), weight bytes
before / after, output cosine and max abs error against the fp bundle on held-out real inputs. End to end (through
`lm` + `lm_head` / `gen_head` / `gen_embed` / `vq_decoder` of both bundles): teacher-forced perplexity and top-1
agreement on each held-out text domain apart (prose, technical documentation, dialogue) with the mode's goals checked
per domain, greedy chat agreement, image-token greedy agreement, CFG-logit cosine and
PSNR of the VQ-decoded images. See evaluate.py for how each figure is measured.
"""
from __future__ import annotations

import gc
import json
import os
import time

from janus_edge import contract as C

from . import evaluate as E

SCHEMA = "janus-edge-quant-report/1"


def build_report(src: str, qdir: str, pol: dict | None = None, calib=None, text_tokens: int | None = None,
                 image_prompts: int = 4, chat_questions: int = 4, chat_tokens: int = 32, e2e: bool = True,
                 threads: int | None = None, scope: str | None = None, progress: bool = False) -> dict:
    """Measure `qdir` against its fp bundle `src`; returns the report dict. scope: "full" (per graph, text per
    domain, images, chat), "text" (per graph + text per domain: the default, prefill-only, so it costs about as
    much as the calibration), "graphs" (per graph only); None: "full" if e2e else "graphs" (older callers)."""
    scope = scope or ("full" if e2e else "graphs")
    t0 = time.time()
    old, new = C.load_manifest(src), C.load_manifest(qdir)
    pol = pol or {g: e.precision for g, e in new.graphs.items() if e.quantization}
    quantized = [g for g, m in pol.items() if m]
    fp, q = E.open_bundle(src, threads, config={}), E.open_bundle(qdir, threads)
    feeds = E.capture_feeds(src, quantized)
    gc.collect()  # the capture's own pipeline (a third opened bundle) goes before the graphs are compared
    per_graph = E.graph_accuracy(fp, q, feeds, progress)
    graphs = {}
    for g in C.GRAPHS:
        eo, en = old.graphs[g], new.graphs[g]
        row = {"precision": en.precision, "weight_bytes_before": eo.weight_bytes, "weight_bytes_after": en.weight_bytes}
        if en.quantization:
            qz = en.quantization
            row["scheme"] = {k: qz[k] for k in ("scheme", "calibrator", "smoothing", "kept_float", "matmuls_quantized",
                                                "matmuls_float", "matmuls_weight_only", "kept_as",
                                                "weight_only_on_ort_cpu", "sensitivity", "method", "block_size",
                                                "format", "runs_on", "ort_session_config") if k in qz}
        row.update(per_graph.get(g, {}))
        graphs[g] = row
    data = {"schema": SCHEMA, "bundle": os.path.basename(os.path.abspath(qdir)),
            "source": os.path.basename(os.path.abspath(src)), "policy": pol, "graphs": graphs,
            "weight_bytes": {"before": sum(e.weight_bytes for e in old.graphs.values()),
                             "after": sum(e.weight_bytes for e in new.graphs.values())},
            "calibration": getattr(calib, "meta", None) if calib is not None else None,
            "data": {"heldout_text": "quant/data/heldout_{en,tech,dialogue}.txt (prose, technical documentation, "
                                     "dialogue; written by the janus-edge team, disjoint from the calibration text)",
                     "chat_images": "procedural (quant.calib.make_images, seed 1000; calibration uses seed 0)",
                     "image_prompts": list(E.EVAL_PROMPTS[:image_prompts])}}
    if scope in ("text", "full"):
        data["text_domains"] = E.domain_accuracy(fp, q, text_tokens, progress)
        data["text"] = data["text_domains"]["prose"]  # the figure older readers look for
        data["goals"] = E.check_goals(pol.get("lm"), data["text_domains"])
    if scope == "full":
        shapes = _is_shapes(fp)
        prompts = _shapes_captions(image_prompts) if shapes else list(E.EVAL_PROMPTS[:image_prompts])
        data["data"]["image_prompts"] = prompts
        data["image"] = E.image_accuracy(fp, q, prompts, progress=progress) if image_prompts else None
        if shapes:  # the shapes model: pictures and answers scored by ShapeEval, fp and quantized side by side
            data["shapes"] = _shapes_rows(fp, q)
        data["chat"] = (E.chat_accuracy(fp, q, E.EVAL_QUESTIONS[:chat_questions], chat_tokens, progress=progress)
                        if chat_questions else None)
    data["scope"] = scope
    data["seconds"] = round(time.time() - t0, 1)
    return data


def _is_shapes(fp) -> bool:
    from janus_edge.runtime.pipeline import Pipeline
    from janus_edge.shapes.evaluate import is_shapes_bundle

    return is_shapes_bundle(Pipeline(fp))


def _shapes_captions(n: int) -> list[str]:
    from janus_edge.shapes import scenes as S

    triples = S.all_triples()
    return [S.Scene(*t).caption for t in triples[:: max(1, len(triples) // max(n, 1))][:n]]


def _shapes_rows(fp, q, captions: int = 36, chat_scenes: int = 36) -> dict:
    """ShapeEval (greedy pictures at the shapes model's CFG) and exact chat answers of both bundles on the shapes grammar, and the
    quantized pictures against the fp ones (janus_edge/shapes/evaluate.py)."""
    from janus_edge.runtime.pipeline import Pipeline
    from janus_edge.shapes import scenes as S
    from janus_edge.shapes.evaluate import shapes_rows

    t = S.all_triples()
    return shapes_rows(Pipeline(fp), Pipeline(q), t[:: len(t) // captions][:captions],
                       t[1:: len(t) // chat_scenes][:chat_scenes])


def write_report(src, tmp, old, new, pol, calib, opts, name: str | None = None) -> None:
    """The quantize_bundle hook: the staged bundle gets a provisional manifest (quantize_bundle rewrites it with the
    final file hashes afterwards) so that the runtime can open it, then the report is measured and written."""
    new.files = {f: C.sha256_file(os.path.join(tmp, f)) for f in sorted(os.listdir(tmp))
                 if os.path.isfile(os.path.join(tmp, f)) and f != C.MANIFEST}
    new.save(tmp)
    from .api import report_scope

    knobs = dict((getattr(opts, "extra", None) or {}).get("report", {}))  # test-size knobs (text_tokens, ...)
    knobs.pop("e2e", None)
    knobs["scope"] = report_scope(opts)
    data = build_report(src, tmp, pol, calib, progress=getattr(opts, "progress", False), **knobs)
    if name:  # the bundle's final name, not its staging dir's
        data["bundle"] = name
    save(data, tmp)


def save(data: dict, out_dir: str, stem: str = "quant_report") -> tuple[str, str]:
    j, m = os.path.join(out_dir, stem + ".json"), os.path.join(out_dir, stem + ".md")
    with open(j, "w") as fh:
        json.dump(data, fh, indent=1, default=float)
        fh.write("\n")
    with open(m, "w") as fh:
        fh.write(markdown(data))
    return j, m


def _mb(b) -> str:
    return f"{b / 1e6:.1f} MB" if b else "-"


def domains_markdown(domains: dict | None, goals: dict | None) -> list[str]:
    """The per-domain text table, each domain's goal check apart."""
    if not domains:
        return []
    L = ["## Held-out text by domain (teacher-forced through lm + lm_head, against the fp bundle)", "",
         "| domain | tokens | perplexity fp -> quantized | delta | top-1 agreement | goals |", "|---|---|---|---|---|---|"]
    for name, r in domains.items():
        ok = (goals or {}).get("per_domain", {}).get(name)
        mark = "-" if ok is None else ("met" if all(ok.values()) else
                                       "missed: " + ", ".join(k for k, v in ok.items() if not v))
        L.append(f"| {name} | {r['tokens']} | {r['ppl_fp']:.3f} -> {r['ppl_q']:.3f} | {r['ppl_delta_pct']:+.2f}% | "
                 f"{100 * r['top1_agreement']:.2f}% | {mark} |")
    if goals:
        g = goals["goals"]
        L.append(f"\nGoals for {goals['mode']} (every domain): " + ", ".join(
            f"perplexity <= +{v}%" if k == "ppl_delta_pct" else f"top-1 >= {100 * v:.0f}%" for k, v in g.items())
                 + f": **{'met' if goals['met'] else 'not met'}** on every domain.")
    return L + [""]


def shapes_markdown(sh: dict | None) -> list[str]:
    """The shapes model's picture and chat rows (ShapeEval), fp and quantized."""
    if not sh:
        return []
    pct = lambda v: f"{100 * v:.1f}%"  # noqa: E731
    L = [f"## Pictures and answers (the shapes model, ShapeEval: {sh['captions']} captions greedy at CFG {sh['cfg']:g}, "
         f"{sh['chat_scenes']} drawn scenes x 3 questions)", "",
         "| | fp | quantized |", "|---|---|---|"]
    fp, q = sh["fp"], sh["quantized"]
    for k, label in (("all", "pictures fully right (seen triples)"), ("color", "colour right"),
                     ("shape", "shape right"), ("position", "position right"),
                     ("held_out", "pictures fully right (held-out triples)")):
        L.append(f"| {label} | {pct(fp['greedy'][k])} | {pct(q['greedy'][k])} |")
    L.append(f"| chat answers exact (seen / held-out) | {pct(fp['chat']['all'])} / {pct(fp['chat']['held_out'])} | "
             f"{pct(q['chat']['all'])} / {pct(q['chat']['held_out'])} |")
    v = sh["vs_fp"]
    L += ["", f"Quantized pictures against fp: greedy image tokens equal {pct(v['greedy_token_agreement'])}; PSNR "
              f"{v['psnr_db_mean']:.1f} dB mean, {v['psnr_db_min']:.1f} dB worst; {v['identical_pictures']} of "
              f"{sh['captions']} identical.", ""]
    return L


def markdown(d: dict) -> str:
    L = [f"# Quantization report: {d.get('bundle')} (from {d.get('source')})", ""]
    pol = d.get("policy") or {}
    L.append("Policy: " + ", ".join(f"{g}={m}" for g, m in pol.items() if m) + "; the rest float.")
    wb = d.get("weight_bytes", {})
    L.append(f"Weight bytes: {_mb(wb.get('before'))} -> {_mb(wb.get('after'))}.")
    L.append("")
    L += domains_markdown(d.get("text_domains"), d.get("goals"))
    t = d.get("text")
    if t:
        L += ["## End to end (trained-LM figures when the source is the trained-LM bundle)", "",
              "| measure | value |", "|---|---|",
              f"| teacher-forced perplexity, fp -> quantized ({t['tokens']} held-out prose tokens) | {t['ppl_fp']:.3f} -> "
              f"{t['ppl_q']:.3f} ({t['ppl_delta_pct']:+.2f}%) |",
              f"| next-token top-1 agreement with fp (prose) | {100 * t['top1_agreement']:.2f}% |",
              f"| top-1 accuracy fp / quantized (prose) | {100 * t['top1_acc_fp']:.2f}% / {100 * t['top1_acc_q']:.2f}% |"]
        im = d.get("image")
        if im:
            L += [f"| image tokens, greedy free-running agreement ({im['prompts']} prompts x {im['tokens_per_image']}) "
                  f"| {100 * im['greedy_token_agreement']:.2f}% |",
                  f"| image tokens, teacher-forced top-1 agreement | {100 * im['teacher_forced_top1_agreement']:.2f}% |",
                  f"| CFG-logit cosine (mean / worst prompt) | {im['cfg_logit_cosine']:.5f} / "
                  f"{im['cfg_logit_cosine_min_prompt']:.5f} |",
                  f"| PSNR of VQ-decoded images vs fp (mean / min) | {im['psnr_db_vs_fp']:.2f} / {im['psnr_db_min']:.2f} dB |"]
        ch = d.get("chat")
        if ch:
            L += [f"| greedy chat ({ch['questions']} questions with an image, {ch['max_new_tokens']} tokens): "
                  f"token agreement / common prefix / exact | {100 * ch['token_agreement']:.1f}% / "
                  f"{100 * ch['common_prefix_fraction']:.1f}% / {100 * ch['exact_match']:.0f}% |"]
        L.append("")
    L += shapes_markdown(d.get("shapes"))
    L += ["## Per graph (held-out real inputs: a t2i prompt with its CFG decode steps, a chat with an image)", "",
          "| graph | precision | weights before | after | output cosine (min / mean) | max abs error (ref max) |",
          "|---|---|---|---|---|---|"]
    for g, r in d.get("graphs", {}).items():
        cos = f"{r['cosine_min']:.5f} / {r['cosine_mean']:.5f}" if "cosine_min" in r else "-"
        err = f"{r['max_abs_error']:.4g} ({r['max_abs_ref']:.4g})" if "max_abs_error" in r else "-"
        L.append(f"| {g} | {r['precision']} | {_mb(r['weight_bytes_before'])} | {_mb(r['weight_bytes_after'])} | "
                 f"{cos} | {err} |")
    L.append("")
    for g, r in d.get("graphs", {}).items():
        s = r.get("scheme")
        if not s:
            continue
        L += [f"### {g}: {s.get('scheme', '')}", ""]
        if "smoothing" in s:
            sm = s["smoothing"]
            al = [a for a in sm.get("alphas", {}).values()]
            on = [a for a in al if a is not None]
            L.append(f"- SmoothQuant ({sm.get('mode')}): on {len(on)}/{len(al)} activation tensors"
                     + (f", alpha {min(on)}..{max(on)}" if on else "") + f"; 1/s folded: {sm.get('folded')}")
        for k in ("calibrator", "matmuls_quantized", "matmuls_weight_only", "matmuls_float", "method", "block_size",
                  "format", "runs_on", "weight_only_on_ort_cpu", "ort_session_config"):
            if k in s:
                L.append(f"- {k}: {s[k]}")
        if s.get("kept_float"):
            L.append(f"- kept ({s.get('kept_as', 'float')}): {', '.join(s['kept_float'])}")
        if s.get("sensitivity"):
            L += ["", "| most sensitive MatMuls (relative squared output error on calibration rows) | error |",
                  "|---|---|"]
            L += [f"| {x['node']} | {x['rel_sq_error']:.3g} |" for x in s["sensitivity"][:8]]
        L.append("")
    cal = d.get("calibration")
    if cal:
        L += ["## Calibration", "", "```", json.dumps(cal, indent=1, default=str), "```", ""]
    L.append(f"Data: {json.dumps(d.get('data', {}), default=str)}")
    L.append(f"Report measured in {d.get('seconds')} s.")
    return "\n".join(L) + "\n"
