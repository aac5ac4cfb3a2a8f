"""An export stopped mid-way (Ctrl-C, SIGTERM, SIGKILL, a crash) leaves nothing at --out.

Real `janus-edge export` processes of the tiny checkpoint are signalled once their staging dir beside --out holds a
written graph. SIGINT / SIGTERM clean up on the way out; SIGKILL cannot, so its temp dir (named with the pid) stays
until the next staged write to the same --out removes it.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from janus_edge.errors import InputError
from janus_edge.export.staging import staged_dir, temp_prefix


def _siblings(out) -> list[str]:
    return sorted(f for f in os.listdir(os.path.dirname(out)) if f.startswith(temp_prefix(out)))


def _sigint_default() -> None:
    """In the child: Ctrl-C's default action. A shell's background job (`cmd &`, as `nohup .ci/run &` runs the suite)
    starts with SIGINT ignored, the child inherits that and rightly ignores Ctrl-C (seen: this test failing there)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def default_signals():
    """Python's own SIGINT / SIGTERM handling for the test, whatever the suite was started with (see above)."""
    saved = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    signal.signal(signal.SIGINT, saved[0])
    signal.signal(signal.SIGTERM, saved[1])


def _export_and_signal(ckpt: str, out: str, sig: int) -> tuple[int, str, str]:
    """Start a real export, wait until its temp dir beside `out` holds a graph file, send `sig`; -> (exit code,
    stderr, the temp dir's name seen while it ran)."""
    proc = subprocess.Popen([sys.executable, "-m", "janus_edge.cli", "export", ckpt, "--out", out],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=_sigint_default)
    seen, deadline = None, time.time() + 240
    try:
        while proc.poll() is None and time.time() < deadline:
            for name in _siblings(out):
                d = os.path.join(os.path.dirname(out), name)
                if os.path.isdir(d) and any(f.endswith(".onnx") for f in os.listdir(d)):
                    seen = name
            if seen:
                break
            time.sleep(0.02)
        assert seen and proc.poll() is None, "the export ended before it could be interrupted"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, err, seen


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 128 + signal.SIGTERM)])
def test_interrupted_export_leaves_nothing(sig, code, tiny_ckpt, tmp_path):
    out = str(tmp_path / "bundle")
    rc, err, seen = _export_and_signal(tiny_ckpt, out, sig)
    assert rc == code, err
    assert seen.startswith(temp_prefix(out))
    assert not os.path.lexists(out)
    assert os.listdir(tmp_path) == [], os.listdir(tmp_path)  # no temp dir left beside it either
    if sig == signal.SIGINT:
        assert err.strip().splitlines()[-1] == "error: interrupted"


def test_killed_export_leaves_nothing_at_out_and_the_next_write_cleans_up(tiny_ckpt, tmp_path):
    out = str(tmp_path / "bundle")
    rc, _, seen = _export_and_signal(tiny_ckpt, out, signal.SIGKILL)
    assert rc == -signal.SIGKILL
    assert not os.path.lexists(out)
    assert _siblings(out) == [seen]  # the killed process could not remove it: its name says whose it was
    # Temp dirs that are not stale: one of a live writer (a running process's pid), one without a pid (not ours).
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        keep = [f"{temp_prefix(out)}{live.pid}-abcd1234", f"{temp_prefix(out)}abcd1234"]
        for k in keep:
            os.mkdir(os.path.join(tmp_path, k))
        with staged_dir(out, False, InputError) as tmp:  # what the next export (or init-random) to `out` runs
            with open(os.path.join(tmp, "f"), "w") as fh:
                fh.write("x")
        assert os.path.isfile(os.path.join(out, "f"))
        assert _siblings(out) == sorted(keep)
    finally:
        live.kill()
        live.wait()


def test_crash_mid_export_leaves_nothing(tiny_ckpt, tmp_path):
    """An exception after the first graph was written (here: an unknown graph name second in the list)."""
    from janus_edge.export.exporter import ExportOptions, export_bundle

    out = str(tmp_path / "bundle")
    with pytest.raises(Exception):
        export_bundle(tiny_ckpt, out, options=ExportOptions(graphs=("vision", "no-such-graph"), progress=False))
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("sig,exc", [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, SystemExit)])
def test_signal_swallowed_by_a_library_still_publishes_nothing(sig, exc, tmp_path, default_signals):
    """Code that catches everything (as a library can, around a C call) eats the exception a signal raises; the
    write must still end without publishing."""
    out = str(tmp_path / "bundle")
    with pytest.raises(exc):
        with staged_dir(out, False, InputError) as tmp:
            with open(os.path.join(tmp, "f"), "w") as fh:
                fh.write("x")
            try:
                os.kill(os.getpid(), sig)
                time.sleep(1)  # the handler runs here
            except BaseException:  # noqa: BLE001 - the library that swallows it
                pass
    assert os.listdir(tmp_path) == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
