"""The small interface every backend implements; the pipeline above it never knows which one runs.

A backend opens graphs and owns buffers. The pipeline allocates every buffer of a request once (`alloc`), binds
graphs to them (`Graph.bind`), and per step only moves data into/out of them (`write`, `read`, `kv_append`).
On ONNX Runtime (CPU) buffers are numpy arrays bound zero-copy; a TensorRT backend binds device memory by
name and may replace `kv_append` (and later sampling) with its native kernels, with the same math.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from janus_edge.contract import GraphSpec
from janus_edge.errors import BackendUnavailable

Buffer = Any  # numpy array on the CPU backends, a device allocation on GPU backends


class Graph(ABC):
    """One opened graph."""

    spec: GraphSpec

    @abstractmethod
    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run on host arrays, returning freshly allocated host outputs (one-off calls: prefill, vision, VQ)."""

    @abstractmethod
    def bind(self, inputs: dict[str, Buffer], outputs: dict[str, Buffer]) -> Callable[[], None]:
        """Bind backend buffers to every input and output; the returned callable runs the graph in place."""


class Backend(ABC):
    name: str

    @abstractmethod
    def open(self, path: str, spec: GraphSpec) -> Graph: ...

    @abstractmethod
    def alloc(self, shape: Sequence[int], dtype: str, zero: bool = True) -> Buffer: ...

    @abstractmethod
    def write(self, buf: Buffer, value: np.ndarray) -> None:
        """Copy a host array into a whole buffer."""

    @abstractmethod
    def read(self, buf: Buffer) -> np.ndarray:
        """A host view/copy of a buffer."""

    @abstractmethod
    def view(self, buf: Buffer, shape: Sequence[int]) -> Buffer:
        """The same memory under another shape (same element count)."""

    @abstractmethod
    def kv_append(self, cache: list[Buffer], new: list[Buffer], pos) -> None:
        """cache[j][:, :, pos:pos+S] = new[j] for every layer's K and V (new: [rows, kvh, S, D]).
        `pos` an int: the same first position for every row; a 1-D int array (serving, S == 1): row r of new goes
        to slot pos[r] of cache row r (cache may hold more rows than new)."""

    # Serving (runtime/scheduler.py) keeps a pool of cache rows; these move whole rows of a buffer (leading dim).
    def rows(self, buf: Buffer, start: int, stop: int) -> Buffer:
        """Rows [start, stop) of a buffer as a buffer over the same memory (contiguous: the leading dim)."""
        raise BackendUnavailable(f"backend {self.name!r} does not support serving (no row views)")

    def move_rows(self, buf: Buffer, src: int, dst: int, count: int) -> None:
        """buf[dst:dst+count] = buf[src:src+count] (the ranges may overlap)."""
        raise BackendUnavailable(f"backend {self.name!r} does not support serving (no row moves)")
