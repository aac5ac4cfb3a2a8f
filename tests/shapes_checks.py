"""The shapes model's picture and answer checks (imported as `shapes_checks`: pytest puts tests/ on sys.path), shared
by tests/test_shapes_model.py (fp32, planted faults, parity) and tests/test_shapes_quant.py (quantized bundles).

Thresholds sit well under what the committed model measures (docs/shapes.md, benchmarks/results/shapes_eval.md) and
well over what a broken model gets (a picture fully right by chance: 1/4 x 1/3 x 1/9 < 1%; an answer: 1/4 to 1/9).
"""
import numpy as np

from janus_edge.shapes import scenes as S
from janus_edge.shapes.evaluate import SHAPES_CFG, chat_rows, generation_rows, summary

GREEDY = S.train_triples()[::4]  # 24 seen captions, one greedy picture each
SAMPLED = S.train_triples()[1::8]  # 12 seen captions, 2 pictures each at the model's CFG, temperature 1
CHAT = S.all_triples()[::3]  # 36 freshly drawn scenes (a seed training never used) x 3 questions
# minimum rates of pictures fully right (colour, shape and position) and of exact chat answers
# (measured on all 108 captions at CFG 2: greedy 81%, sampled 72%, chat 95.5%: benchmarks/results/shapes_eval.md)
MIN_GREEDY = 0.6
MIN_SAMPLED = 0.5
MIN_CHAT = 0.85


def check_generation(pipe, min_greedy: float = MIN_GREEDY, min_sampled: float = MIN_SAMPLED) -> dict:
    greedy = summary(generation_rows(pipe, GREEDY, n=1, cfg=SHAPES_CFG, temperature=0.0))
    sampled = summary(generation_rows(pipe, SAMPLED, n=2, cfg=SHAPES_CFG, temperature=1.0))
    low = [f"{what} {got['all']:.2f} < {want}" for what, got, want in (("greedy", greedy, min_greedy),
                                                                     ("sampled", sampled, min_sampled))
           if not got["all"] >= want]
    assert not low, f"ShapeEval: {'; '.join(low)} (greedy {greedy}, sampled {sampled})"
    return {"greedy": greedy, "sampled": sampled}


def check_chat(pipe, min_chat: float = MIN_CHAT) -> float:
    rows = chat_rows(pipe, CHAT)
    acc = float(np.mean([r["all"] for r in rows]))
    wrong = [(r["caption"], r["question"], r["answer"]) for r in rows if not r["all"]][:5]
    assert acc >= min_chat, f"chat {acc:.2f} exact (min {min_chat}); e.g. {wrong}"
    return acc
