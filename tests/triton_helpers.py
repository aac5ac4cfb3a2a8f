"""The preamble of the test modules that run a real tritonserver (imported as `triton_helpers`: pytest puts tests/ on
sys.path): without tritonclient or a tritonserver they skip, and under JANUS_EDGE_REQUIRE_TRITON=1 they fail."""
from __future__ import annotations

import os

import pytest


def triton_mark():
    """The module's `pytestmark`: skip when tritonserver is absent (an error under JANUS_EDGE_REQUIRE_TRITON=1).
    Skips the calling module at once when tritonclient is not installed (the same error under the flag)."""
    required = os.environ.get("JANUS_EDGE_REQUIRE_TRITON") == "1"
    if not required:
        pytest.importorskip("tritonclient.grpc", reason="tritonclient[http,grpc] not installed (pip install -e .[serve])")
    from janus_edge.errors import BackendUnavailable
    from janus_edge.serving.launch import find_triton

    try:
        find_triton()
        missing = None
    except BackendUnavailable as e:
        missing = str(e)
    if missing is not None and required:
        raise RuntimeError(f"JANUS_EDGE_REQUIRE_TRITON=1 but {missing}")
    return pytest.mark.skipif(missing is not None, reason=f"tritonserver absent: {missing}")
