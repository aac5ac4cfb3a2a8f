"""`janus-edge --help` of every subcommand: every option says what it does and its default; `--version` prints the
package version and the bundle format version this janus-edge reads."""
from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from janus_edge import __version__
from janus_edge import contract as C
from janus_edge.cli import main
from janus_edge.cli_args import HelpFormatter, build_parser


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    p = build_parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    seen, out = set(), {}
    for name, s in sub.choices.items():  # aliases share a parser: each once
        if id(s) not in seen:
            seen.add(id(s))
            out[name] = s
    return out


SUBPARSERS = _subparsers()


def test_the_commands_are_all_there():
    assert {"init-random", "export", "verify", "quantize", "lint-trt", "build", "memory", "generate", "chat",
            "triton-repo", "serve", "bench"} <= set(SUBPARSERS)


@pytest.mark.parametrize("name", list(SUBPARSERS))
def test_every_option_says_what_it_does_and_its_default(name):
    s = SUBPARSERS[name]
    text = s.format_help()  # renders every %(default)s (a stray % in a help text raises here)
    fmt = HelpFormatter(s.prog)
    bad = []
    for a in s._actions:
        if isinstance(a, argparse._HelpAction):
            continue
        what = "/".join(a.option_strings) or a.dest
        if not (a.help or "").strip():
            bad.append(f"{what}: no help")
            continue
        flag = isinstance(a, (argparse._StoreTrueAction, argparse._StoreFalseAction))
        if a.option_strings and not a.required and not flag and "default" not in fmt._get_help_string(a).lower():
            bad.append(f"{what}: help does not say its default")
        shown = a.default is not None and a.default is not False and a.default not in ([], argparse.SUPPRESS)
        if a.option_strings and shown \
                and f"default: {a.default}" not in " ".join(text.split()) and "default" not in a.help:
            bad.append(f"{what}: default {a.default!r} not shown")
    assert not bad, f"janus-edge {name}: " + "; ".join(bad)


def test_generate_help_shows_the_sampling_defaults(capsys):
    with pytest.raises(SystemExit) as ei:
        main(["generate", "--help"])
    assert ei.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for piece in ("--n N images to generate from the prompt (one batch) (default: 1)",
                  "guidance weight (1 = no guidance) (default: 5.0)", "(0 = greedy) (default: 1.0)",
                  "--top-k TOP_K keep the k most likely image tokens (default: all)", "(default: off)",
                  "(default: a fresh random seed)"):
        assert piece in out, piece


def test_version(capsys):
    with pytest.raises(SystemExit) as ei:
        main(["--version"])
    assert ei.value.code == 0
    out = capsys.readouterr().out.strip()
    assert out == f"janus-edge {__version__} (reads bundle format {C.FORMAT_NAME} version {C.FORMAT_VERSION})"


def test_version_from_the_console_entry():
    r = subprocess.run([sys.executable, "-m", "janus_edge.cli", "--version"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and __version__ in r.stdout and f"version {C.FORMAT_VERSION}" in r.stdout, r


def test_help_imports_nothing_heavy():
    code = ("import sys; from janus_edge.cli_args import build_parser; build_parser().format_help(); "
            "print(sorted(m for m in ('torch', 'transformers', 'onnx', 'onnxruntime') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r
