"""safetensors read and written one tensor at a time, through plain file I/O (no mmap), so that a 7B checkpoint
never sits in memory: the reader seeks to one tensor and reads just its bytes; the writer puts the header first
(every name, dtype and shape is known before any data exists) and then appends each tensor as it is produced.
The format: 8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}}, the data."""
from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable

import torch

from janus_edge.errors import CheckpointError

ST_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
             "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
             "BOOL": torch.bool}
ST_NAMES = {v: k for k, v in ST_DTYPES.items()}


def nbytes(shape, dtype: torch.dtype) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n * torch.empty((), dtype=dtype).element_size()


class SafetensorsFile:
    """Header of one .safetensors file; `read(name)` returns that tensor (a fresh CPU tensor of its own)."""

    def __init__(self, path: str):
        self.path = path
        try:
            with open(path, "rb") as fh:
                raw = fh.read(8)
                size = struct.unpack("<Q", raw)[0] if len(raw) == 8 else -1
                if not 0 < size < (1 << 30):
                    raise ValueError("bad header length")
                header = json.loads(fh.read(size))
            self.base = 8 + size
            self.meta = header.pop("__metadata__", {}) or {}
            self.entries = {k: (ST_DTYPES[v["dtype"]], tuple(v["shape"]), tuple(v["data_offsets"]))
                            for k, v in header.items()}
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
        end = max((off[1] for _, _, off in self.entries.values()), default=0)
        if os.path.getsize(path) < self.base + end:
            raise CheckpointError(f"{path}: truncated ({os.path.getsize(path)} bytes, header needs {self.base + end})")

    def shape(self, name: str) -> tuple:
        return self.entries[name][1]

    def read(self, name: str) -> torch.Tensor:
        dtype, shape, (b, e) = self.entries[name]
        buf = torch.empty(e - b, dtype=torch.uint8)
        with open(self.path, "rb") as fh:
            fh.seek(self.base + b)
            if fh.readinto(memoryview(buf.numpy())) != e - b:
                raise CheckpointError(f"{self.path}: short read of {name}")
        return buf.view(dtype).reshape(shape)


class SafetensorsWriter:
    """`with SafetensorsWriter(path, [(name, dtype, shape), ...]) as w: w.write(name, tensor)` in the same order."""

    def __init__(self, path: str, layout: Iterable[tuple[str, torch.dtype, tuple]], metadata: dict | None = None):
        self.path, self.layout = path, list(layout)
        header, off = {"__metadata__": metadata or {"format": "pt"}}, 0
        for name, dtype, shape in self.layout:
            size = nbytes(shape, dtype)
            header[name] = {"dtype": ST_NAMES[dtype], "shape": list(shape), "data_offsets": [off, off + size]}
            off += size
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self.total, self.next = off, 0
        self.fh = open(path, "wb")
        self.fh.write(struct.pack("<Q", len(raw)) + raw)

    def write(self, name: str, t: torch.Tensor) -> None:
        want, dtype, shape = self.layout[self.next]
        if (name, t.dtype, tuple(t.shape)) != (want, dtype, tuple(shape)):
            raise RuntimeError(f"{self.path}: got {name} {t.dtype} {tuple(t.shape)}, expected {want} {dtype} {shape}")
        self.fh.write(memoryview(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy()))
        self.next += 1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()
        if exc[0] is None and self.next != len(self.layout):
            raise RuntimeError(f"{self.path}: {len(self.layout) - self.next} tensors were not written")


__all__ = ["SafetensorsFile", "SafetensorsWriter", "ST_DTYPES", "nbytes"]
