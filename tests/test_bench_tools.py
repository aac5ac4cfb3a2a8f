"""benchmarks/sensitivity.py and benchmarks/quant_accuracy.py on the tiny model, small: each writes its rows with the
knobs that made them, measures afresh by default, and re-uses an earlier result only when what made it is the same
(sensitivity: --resume with the same settings and row knobs; quant_accuracy: the variant's knobs + the code version)."""
from __future__ import annotations

import json
import os

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnx")

SMALL_CALIB = {"n_prompts": 1, "image_steps": 2, "n_chats": 1, "chat_tokens": 2, "text_file": None}
MARK = 999.0  # an impossible perplexity delta written into a result: re-used if it survives a run


@pytest.fixture(scope="module")
def tiny_calib(tiny_bundle, tmp_path_factory) -> str:
    from janus_edge.quant import calib as CB

    path = str(tmp_path_factory.mktemp("calib") / "calib.npz")
    CB.collect(tiny_bundle, CB.CalibConfig(cache=path, progress=False, **SMALL_CALIB))
    return path


def _sensitivity(tiny_bundle, tiny_ckpt, calib, out, *extra) -> dict:
    from janus_edge.benchmarks import sensitivity

    assert sensitivity.main([tiny_bundle, tiny_ckpt, calib, "--tokens", "12", "--out", str(out), *extra]) == 0
    return json.loads(open(str(out) + ".json").read())


def _rows(state: dict):
    return [(sec, name, r) for sec, rows in state.items() if isinstance(rows, dict)
            for name, r in rows.items() if isinstance(r, dict) and "ppl_delta_pct" in r]


def _poison(out, section: str, name: str) -> None:
    p = str(out) + ".json"
    s = json.loads(open(p).read())
    s[section][name]["ppl_delta_pct"] = MARK
    open(p, "w").write(json.dumps(s))


def test_sensitivity_measures_afresh_and_records_knobs(tiny_bundle, tiny_ckpt, tiny_calib, tmp_path):
    out = tmp_path / "sens"
    s = _sensitivity(tiny_bundle, tiny_ckpt, tiny_calib, out)
    rows = _rows(s)
    assert len(rows) >= 30 and s["tokens"] == 11
    assert all(r["knobs"]["mode"] in ("int8", "int4") for _, _, r in rows)
    assert s["int8_kind_alone"]["down"]["knobs"]["only_a8"] == "down"
    assert s["int4"]["all INT4 rtn"]["knobs"]["method"] == "rtn"
    assert s["settings"]["tokens"] == 12 and s["command"].endswith("--out " + str(out))
    md = open(str(out) + ".md").read()
    assert "| down |" in md
    # a default re-run measures again: the marked row is replaced by a real measurement
    _poison(out, "int8_kind_alone", "down")
    s2 = _sensitivity(tiny_bundle, tiny_ckpt, tiny_calib, out)
    assert s2["int8_kind_alone"]["down"]["ppl_delta_pct"] != MARK
    def measured(r):  # the row's numbers, without its wall time (which varies from run to run)
        return {k: v for k, v in r.items() if k != "seconds"}

    # deterministic: the same numbers again
    assert measured(s2["int8_kind_alone"]["down"]) == measured(s["int8_kind_alone"]["down"])


def test_sensitivity_resume_reuses_only_matching_rows(tiny_bundle, tiny_ckpt, tiny_calib, tmp_path):
    out = tmp_path / "sens"
    _sensitivity(tiny_bundle, tiny_ckpt, tiny_calib, out)
    _poison(out, "int8_kind_alone", "q")
    p = str(out) + ".json"
    s = json.loads(open(p).read())
    s["int8_kind_alone"]["k"]["knobs"]["only_a8"] = "v"  # a row made with other knobs
    s["int8_kind_alone"]["k"]["ppl_delta_pct"] = MARK
    open(p, "w").write(json.dumps(s))
    s2 = _sensitivity(tiny_bundle, tiny_ckpt, tiny_calib, out, "--resume")
    assert s2["int8_kind_alone"]["q"]["ppl_delta_pct"] == MARK  # same settings and knobs: re-used
    assert s2["int8_kind_alone"]["k"]["ppl_delta_pct"] != MARK  # other knobs: measured
    _poison(out, "int8_kind_alone", "q")
    from janus_edge.benchmarks import sensitivity

    sensitivity.main([tiny_bundle, tiny_ckpt, tiny_calib, "--tokens", "10", "--out", str(out), "--resume"])
    s3 = json.loads(open(p).read())
    assert s3["int8_kind_alone"]["q"]["ppl_delta_pct"] != MARK and s3["tokens"] == 9  # other settings: afresh


def _accuracy(tiny_bundle, work, out) -> dict:
    from janus_edge.benchmarks import quant_accuracy as QA

    assert QA.main([tiny_bundle, "--work", str(work), "--out", str(out), "--variants", "int8", "--tokens", "24",
                    "--calib", json.dumps(SMALL_CALIB)]) == 0
    return json.loads(open(str(out) + ".json").read())


def test_quant_accuracy_reuses_results_only_for_the_same_knobs_and_code(tiny_bundle, tmp_path, monkeypatch):
    from janus_edge.benchmarks import quant_accuracy as QA

    work, out = tmp_path / "work", tmp_path / "qa"
    s = _accuracy(tiny_bundle, work, out)
    v = s["variants"]["int8"]
    assert v["knobs"] == QA.VARIANTS["int8"][1] and v["heldout"]["tokens"] == 23 and v["key"]
    assert 0.5 < v["heldout"]["top1_agreement"] <= 1 and abs(v["heldout"]["ppl_delta_pct"]) < 50  # int8 works
    manifest = os.path.join(work, "int8", "manifest.json")
    built = os.path.getmtime(manifest)

    def poison():
        st = json.loads(open(work / "state.json").read())
        st["variants"]["int8"]["heldout"]["ppl_delta_pct"] = MARK
        open(work / "state.json", "w").write(json.dumps(st))

    poison()  # same knobs, same code: re-used (the run is resumable)
    assert _accuracy(tiny_bundle, work, out)["variants"]["int8"]["heldout"]["ppl_delta_pct"] == MARK
    # other knobs under the same name: quantized and measured again
    monkeypatch.setitem(QA.VARIANTS, "int8", ("int8", {**QA.VARIANTS["int8"][1], "smooth": 0.5}))
    s2 = _accuracy(tiny_bundle, work, out)
    assert s2["variants"]["int8"]["heldout"]["ppl_delta_pct"] != MARK
    assert s2["variants"]["int8"]["knobs"]["smooth"] == 0.5 and os.path.getmtime(manifest) > built
    # other code (a change in quant/, runtime/ or export/): again
    poison()
    monkeypatch.setattr(QA.C, "code_version", lambda *a: "another-version")
    assert _accuracy(tiny_bundle, work, out)["variants"]["int8"]["heldout"]["ppl_delta_pct"] != MARK
