"""Module layering: no import cycles inside quant/ or runtime/ (module- or function-level imports alike), and the
backend interface (runtime/backend.py) imports none of its implementations (runtime/backends.py is the registry)."""
from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = {"quant": "janus_edge.quant", "runtime": "janus_edge.runtime"}


def _imports(folder: str, package: str) -> dict[str, set[str]]:
    """module -> the modules of the same package it imports, anywhere in its source."""
    mods = {f[:-3] for f in os.listdir(os.path.join(REPO, folder)) if f.endswith(".py") and f != "__init__.py"}
    graph = {}
    for m in mods:
        tree = ast.parse(open(os.path.join(REPO, folder, m + ".py"), encoding="utf-8").read())
        deps = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level == 1 or base.startswith(package + "."):
                    base = base.removeprefix(package + ".")
                    names = [base] if base else [a.name for a in node.names]
                    deps |= {n.split(".")[0] for n in names} & mods
            elif isinstance(node, ast.Import):
                deps |= {a.name.removeprefix(package + ".") for a in node.names if a.name.startswith(package)} & mods
        graph[m] = deps - {m}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def visit(m, path):
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                return path[path.index(d):] + [m, d] if d in path else [m, d]
            if d not in state and (c := visit(d, path + [m])):
                return c
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (c := visit(m, [])):
            return c
    return None


@pytest.mark.parametrize("folder", sorted(PACKAGES))
def test_no_import_cycles(folder):
    graph = _imports(folder, PACKAGES[folder])
    assert graph, folder
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_backend_interface_imports_none_of_its_backends():
    code = ("import sys, janus_edge.runtime.backend as b; "
            "loaded = [m for m in ('janus_edge.runtime.ort_backend', 'janus_edge.runtime.trt_backend', "
            "'janus_edge.runtime.backends', 'onnxruntime') if m in sys.modules]; "
            "assert not loaded and not hasattr(b, 'get_backend'), loaded")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


def test_registry_names_every_backend_and_refuses_others():
    from janus_edge.errors import BackendUnavailable
    from janus_edge.runtime.backends import BACKENDS, get_backend

    assert set(BACKENDS) == {"ort", "trt"}
    assert type(get_backend("ort", threads=1)).__name__ == "OrtBackend"
    with pytest.raises(BackendUnavailable, match="unknown backend 'x'; choose 'ort' or 'trt'"):
        get_backend("x")
