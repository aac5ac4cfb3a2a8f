"""The held-out evaluation texts (quant/data/heldout_*.txt): several domains, none of them in the calibration data;
the goals are checked per domain (quant/evaluate.check_goals), and the report's measurements show progress."""
from __future__ import annotations

import re

import numpy as np

from janus_edge.quant import calib as CB
from janus_edge.quant import evaluate as E


def _sentences(text: str) -> set[str]:
    return {s.strip().lower() for s in re.split(r"[.!?\n]+", text) if len(s.split()) >= 5}


def test_heldout_domains_are_disjoint_from_calibration():
    calib = "\n".join(CB.read_text(p) for p in (CB.CALIB_TEXT_FILE, CB.CHAT_FILE, CB.PROMPTS_FILE)).lower()
    assert set(CB.HELDOUT_DOMAINS) == {"prose", "tech", "dialogue"}
    for name, path in CB.HELDOUT_DOMAINS.items():
        text = CB.read_text(path)
        assert len(text.split()) >= 300, name
        leaked = [s for s in _sentences(text) if s in calib]
        assert not leaked, (name, leaked[:2])
    texts = [CB.read_text(p) for p in CB.HELDOUT_DOMAINS.values()]
    assert len({t[:200] for t in texts}) == len(texts)  # three different texts, not one file three times


def test_goals_are_checked_per_domain_not_on_the_average():
    good = {"ppl_delta_pct": 1.0, "top1_agreement": 0.97}
    bad = {"ppl_delta_pct": 4.0, "top1_agreement": 0.92}  # the mean of good and bad meets both int8 goals
    g = E.check_goals("int8", {"prose": good, "tech": bad})
    assert g["per_domain"]["prose"] == {"ppl_delta_pct": True, "top1_agreement": True}
    assert g["per_domain"]["tech"] == {"ppl_delta_pct": False, "top1_agreement": False} and not g["met"]
    assert E.check_goals("int8", {"prose": good, "tech": good})["met"]
    assert E.check_goals("int4", {"d": {"ppl_delta_pct": 14.9, "top1_agreement": 0.8}})["met"]
    assert E.check_goals("fp8", {"d": {"ppl_delta_pct": -5.5, "top1_agreement": 0.5}})["met"] is False


def test_text_measurement_shows_a_progress_bar(tiny_bundle, capfd):
    fp = E.open_bundle(tiny_bundle)
    ids = E.text_ids(fp, CB.read_text(CB.HELDOUT_DOMAINS["tech"]), 200)
    r = E.text_accuracy(fp, fp, ids, chunk=64, progress=True, desc="text (tech)")
    err = capfd.readouterr().err
    assert "[report] text (tech)" in err and "4/4" in err and "<" in err  # count and time left (tqdm's "<ETA")
    assert r["top1_agreement"] == 1.0 and np.isclose(r["ppl_delta_pct"], 0.0)
    E.text_accuracy(fp, fp, ids, chunk=64, progress=False)
    assert "[report]" not in capfd.readouterr().err
