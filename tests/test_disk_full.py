"""A full disk: `export`, `quantize` and `init-random` refuse at once when what they will write cannot fit, and a disk
that fills while they write gives one `error:` line (the output, the file, the space needed and free), exit 2, and
leaves nothing (no output, no temp dir).

The free space is faked by patching `shutil.disk_usage` (what staging.check_space reads) and the full disk by a write
that raises ENOSPC: both work unprivileged. (By hand, on a 1 MB and a 4 MB tmpfs, the same lines came out.)
"""
from __future__ import annotations

import collections
import errno
import os
import shutil

import numpy as np
import pytest

from janus_edge.errors import CheckpointError, InputError
from janus_edge.export import staging

Usage = collections.namedtuple("Usage", "total used free")
FREE = 1_000_000  # 1 MB


@pytest.fixture
def small_disk(monkeypatch):
    """Every filesystem reports 1 MB free."""
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(10 * FREE, 9 * FREE, FREE))


def _nothing_left(parent) -> None:
    assert [f for f in os.listdir(parent) if ".tmp-" in f or f.startswith(".janus-edge-")] == []


def _refused(cli, one_error_line, args, out, *needles, progress=False) -> str:
    """Exit 2 with one `error:` line naming `out` and the needles (`progress`: after the progress lines of the work
    done before the disk filled), and nothing left beside `out`."""
    code, _, err = cli(*args)
    if progress:
        lines = err.strip().splitlines()
        assert [x for x in lines if x.startswith("error:")] == lines[-1:] and "Traceback" not in err, err
        line = lines[-1]
    else:
        line = one_error_line(err)
    assert code == 2, err
    for n in (str(out), *needles):
        assert n in line, line
    assert not os.path.lexists(out)
    _nothing_left(os.path.dirname(out))
    return line


def _never(*a, **k):
    raise AssertionError("the slow work started although the output cannot fit")


# ---- the preflight: refused before any slow work ------------------------------------------------------------

def test_export_refused_before_the_checkpoint_is_loaded(small_disk, monkeypatch, cli, one_error_line, tiny_ckpt,
                                                         tmp_path):
    from janus_edge.export import exporter

    monkeypatch.setattr(exporter, "open_checkpoint", _never)
    monkeypatch.setattr(exporter, "load_checkpoint", _never)
    _refused(cli, one_error_line, ["export", tiny_ckpt, "--out", tmp_path / "b"], tmp_path / "b",
             "not enough disk space", "needs ~", "1.0 MB free")


def test_quantize_refused_before_calibration(small_disk, monkeypatch, cli, one_error_line, tiny_bundle, tmp_path):
    from janus_edge.quant import api

    monkeypatch.setattr(api, "calibrate", _never)
    monkeypatch.setattr(api, "quantize_graph", _never)
    _refused(cli, one_error_line, ["quantize", tiny_bundle, "--mode", "int8", "--out", tmp_path / "q"],
             tmp_path / "q", "not enough disk space for the quantized bundle", "needs ~", "1.0 MB free")


def test_init_random_refused_before_weights_are_written(small_disk, cli, one_error_line, tmp_path):
    _refused(cli, one_error_line, ["init-random", "--preset", "tiny", "--out", tmp_path / "c"], tmp_path / "c",
             "not enough disk space for the checkpoint", "needs ~")


def test_the_estimates_cover_what_is_written(tiny_ckpt, tiny_bundle):
    """The export estimate is at least the bundle's real size and not wildly above it (2% + 16 MB)."""
    from janus_edge.export.exporter import estimate_bytes

    size = sum(os.path.getsize(os.path.join(tiny_bundle, f)) for f in os.listdir(tiny_bundle))
    est = estimate_bytes(tiny_ckpt, "float32")
    assert size <= est <= size * 1.05 + 16e6, (size, est)
    assert estimate_bytes(tiny_ckpt, "float16") < est  # dtype-aware: fp16 writes half the weights' bytes


def test_quantize_estimate_shrinks_with_the_mode(tiny_bundle):
    from janus_edge import contract as C
    from janus_edge.quant import api
    from janus_edge.quant.policy import default_policy

    m = C.load_manifest(tiny_bundle)
    src = sum(os.path.getsize(os.path.join(tiny_bundle, f)) for f in m.files)
    none = {g: None for g in m.graphs}
    assert src <= api.estimate_bytes(tiny_bundle, m, none, 128) <= src * 1.05 + 16e6  # a copy: its size
    int8 = api.estimate_bytes(tiny_bundle, m, default_policy("int8"), 128)
    int4 = api.estimate_bytes(tiny_bundle, m, default_policy("int4"), 128)
    assert int4 < int8 < api.estimate_bytes(tiny_bundle, m, none, 128)


def test_enough_space_passes(monkeypatch, tmp_path):
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(10**12, 0, 10**12))
    staging.check_space(str(tmp_path / "x"), 10**9, "the bundle", InputError)


# ---- a disk that fills while writing -------------------------------------------------------------------------

def _full_write(path, *a, **k):
    """Writes a few bytes, then fails as a full disk does (an OSError without a file name, like a plain write)."""
    with open(path if isinstance(path, str) else path.name, "wb") as fh:
        fh.write(b"\0" * 100)
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_export_disk_fills_mid_write(monkeypatch, cli, one_error_line, tiny_ckpt, tmp_path):
    from janus_edge.export import exporter

    monkeypatch.setattr(exporter.np, "save", _full_write)  # the text table, after the seven graphs were written
    line = _refused(cli, one_error_line, ["export", tiny_ckpt, "--out", tmp_path / "b"], tmp_path / "b",
                    "disk full writing the bundle", "text_embed.npy", "needs ~", "free", progress=True)
    assert "nothing was kept" in line


def test_quantize_disk_fills_mid_write(monkeypatch, cli, one_error_line, tiny_bundle, tmp_path):
    from janus_edge.quant import api

    real = shutil.copyfile

    def copy(src, dst, *a, **k):  # the float graphs are copied: the second one meets a full disk
        if os.path.basename(dst) == "vq_encoder.onnx":
            _full_write(dst)
        return real(src, dst, *a, **k)

    monkeypatch.setattr(api.shutil, "copyfile", copy)
    _refused(cli, one_error_line, ["quantize", tiny_bundle, "--mode", "int8", "--out", tmp_path / "q", "--report",
                                   "none"], tmp_path / "q", "disk full writing the quantized bundle",
             "(file vq_encoder.onnx)", "needs ~", progress=True)


@pytest.mark.parametrize("exc", [OSError(errno.ENOSPC, "No space left on device", "/elsewhere/src.onnx"),
                                 RuntimeError("PytorchStreamWriter failed writing file: No space left on device")],
                         ids=["oserror-naming-the-source", "a-library-wrapping-it"])
def test_staged_dir_turns_a_full_disk_into_one_error(exc, tmp_path):
    out = tmp_path / "c"
    with pytest.raises(CheckpointError) as ei:
        with staging.staged_dir(str(out), False, CheckpointError, what="the checkpoint") as tmp:
            np.save(os.path.join(tmp, "w.npy"), np.zeros(1000))
            raise exc
    msg = str(ei.value)
    assert "disk full writing the checkpoint" in msg and "(file w.npy)" in msg and "were written when it filled" in msg
    assert not out.exists()
    _nothing_left(tmp_path)


def test_staged_dir_passes_other_errors_through(tmp_path):
    with pytest.raises(OSError) as ei:
        with staging.staged_dir(str(tmp_path / "c"), False, CheckpointError):
            raise OSError(errno.EACCES, "Permission denied")
    assert ei.value.errno == errno.EACCES
    _nothing_left(tmp_path)
