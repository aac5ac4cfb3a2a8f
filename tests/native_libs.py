"""The native libraries in tests: loaded, or skipped with the reason, or failed under JANUS_EDGE_REQUIRE_NATIVE=1 (CI
builds them, so a missing one must fail there, never skip)."""
from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import pytest

from janus_edge.errors import BackendUnavailable
from janus_edge.runtime.native import require_native

T = TypeVar("T")


def load_or_skip(loader: Callable[[], T], what: str) -> T:
    try:
        return loader()
    except BackendUnavailable as e:
        if require_native():
            pytest.fail(f"JANUS_EDGE_REQUIRE_NATIVE=1 but {e}")
        pytest.skip(f"{what} not built: {e}")
