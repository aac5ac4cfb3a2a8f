"""ONNX graphs of any size, one initializer at a time: read a weight (inline or external data) as numpy, write
new weights straight into the output's external-data file, copy untouched external weights over at save.

A 7B fp16 `lm` graph (13 GB) never sits in memory whole: the graph proto is loaded without its external data,
each weight is read from the source `.data` file when a mode function asks for it (a plain read into a buffer that
is freed with the array, not a memory map: pages of a map stay in the process's RSS until it is closed, so a
mapped 13 GB source counted 13 GB), every large new initializer is appended to the destination `.data` file as it
is made (`Store.put`), and the untouched ones are copied over in chunks at save. Only the protobuf of the graph
structure (+ small inline tensors) and the one tensor being worked on are held (tests/test_quant_7b_memory.py).
"""
from __future__ import annotations

import contextvars
import os
from dataclasses import dataclass, field

import numpy as np

_ACTIVE: contextvars.ContextVar["Store | None"] = contextvars.ContextVar("janus_edge_quant_store", default=None)
INLINE_LIMIT = 4096  # bytes: smaller tensors stay inside the .onnx file


def load(path: str):
    """The graph proto without its external data (the data stays on disk, read per tensor)."""
    import onnx

    return onnx.load(path, load_external_data=False)


def _ext_info(t) -> dict:
    return {e.key: e.value for e in t.external_data}


def is_external(t) -> bool:
    from onnx import TensorProto

    return t.data_location == TensorProto.EXTERNAL


def np_dtype(data_type: int):
    from onnx import helper

    return np.dtype(helper.tensor_dtype_to_np_dtype(data_type))


def tensor_nbytes(t) -> int:
    """Bytes of an initializer from its dims and type (4-bit types pack two per byte)."""
    from onnx import TensorProto

    n = int(np.prod(t.dims)) if len(t.dims) else 1
    if t.data_type in (TensorProto.INT4, TensorProto.UINT4):
        return (n + 1) // 2
    return n * np_dtype(t.data_type).itemsize


@dataclass
class Store:
    """Source dir of the graph being read, destination `.onnx` path being written (its `.data` beside it)."""

    src_dir: str
    dst_path: str
    written: int = 0
    _fh: object = None
    _files: dict = field(default_factory=dict)  # source data files, open for reading
    _ours: set = field(default_factory=set)  # names of tensors already written to the destination data file

    @property
    def data_name(self) -> str:
        return os.path.basename(self.dst_path) + ".data"

    def __enter__(self) -> "Store":
        self._token = _ACTIVE.set(self)
        return self

    def __exit__(self, *exc) -> None:
        _ACTIVE.reset(self._token)
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        for fh in self._files.values():
            fh.close()
        self._files.clear()

    # ---- reading ---------------------------------------------------------------------------------------------
    COPY_CHUNK = 64 << 20  # bytes per read when streaming an untouched tensor to the destination

    def _src(self, location: str):
        if location not in self._files:
            self._files[location] = open(os.path.join(self.src_dir, location), "rb", buffering=0)
        return self._files[location]

    def _read(self, location: str, off: int, length: int) -> bytearray:
        fh, buf = self._src(location), bytearray(length)
        view, got = memoryview(buf), 0
        while got < length:
            n = os.preadv(fh.fileno(), [view[got:got + self.COPY_CHUNK]], off + got)
            if n <= 0:
                raise OSError(f"{location}: external data ends before offset {off + length}")
            got += n
        return buf

    def _extent(self, t) -> tuple[str, int, int]:
        info = _ext_info(t)
        return info["location"], int(info.get("offset", 0)), int(info.get("length", tensor_nbytes(t)))

    def raw_bytes(self, t) -> memoryview | bytes:
        if not is_external(t):
            return t.raw_data
        info = _ext_info(t)
        if t.name in self._ours:  # already written by us: read it back from the destination data file
            self._fh.flush()
            with open(os.path.join(os.path.dirname(self.dst_path), self.data_name), "rb") as fh:
                fh.seek(int(info["offset"]))
                return fh.read(int(info["length"]))
        return memoryview(self._read(*self._extent(t)))

    def array(self, t) -> np.ndarray:
        """A float/int initializer as numpy (external: read into its own buffer, freed with the array)."""
        from onnx import numpy_helper

        if not is_external(t) and not t.raw_data:
            return numpy_helper.to_array(t)
        a = np.frombuffer(self.raw_bytes(t), dtype=np_dtype(t.data_type))
        return a.reshape(tuple(t.dims))

    # ---- writing ---------------------------------------------------------------------------------------------
    def _append(self, data) -> tuple[int, int]:
        if self._fh is None:
            self._fh = open(os.path.join(os.path.dirname(self.dst_path), self.data_name), "wb")
        pad = (-self.written) % 64  # aligned offsets (mmap-friendly)
        if pad:
            self._fh.write(b"\0" * pad)
            self.written += pad
        off = self.written
        self._fh.write(data)
        self.written += len(data)
        return off, len(data)

    def _copy_from_source(self, t) -> tuple[int, int]:
        loc, off, length = self._extent(t)
        start, _ = self._append(b"")
        for o in range(0, length, self.COPY_CHUNK):
            n = min(self.COPY_CHUNK, length - o)
            self._fh.write(self._read(loc, off + o, n))
            self.written += n
        return start, length

    def _point(self, t, off: int, length: int) -> None:
        from onnx import TensorProto

        t.ClearField("raw_data")
        t.data_location = TensorProto.EXTERNAL
        del t.external_data[:]
        for k, v in (("location", self.data_name), ("offset", str(off)), ("length", str(length))):
            e = t.external_data.add()
            e.key, e.value = k, v
        self._ours.add(t.name)

    def put(self, t):
        """Move a tensor's raw_data to the destination data file (when large); returns the tensor."""
        if is_external(t) or len(t.raw_data) <= INLINE_LIMIT:
            return t
        self._point(t, *self._append(t.raw_data))
        return t

    def save(self, model) -> list[str]:
        """Copy the still-external source tensors into the destination data file, externalise large inline ones,
        write the graph; returns the sidecar file names (empty when everything fit inline)."""
        import onnx

        for t in model.graph.initializer:
            if is_external(t) and t.name not in self._ours:  # still in the source file: stream it over in chunks
                self._point(t, *self._copy_from_source(t))
            else:
                self.put(t)
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        onnx.save(model, self.dst_path)
        return [self.data_name] if self.written else []


def active() -> Store:
    s = _ACTIVE.get()
    if s is None:
        raise RuntimeError("no quant.graphio.Store is active (mode functions run inside quantize_bundle)")
    return s


def array(t) -> np.ndarray:
    """Read an initializer through the active store (or directly, for inline tensors outside one)."""
    s = _ACTIVE.get()
    if s is None:
        from onnx import numpy_helper

        return numpy_helper.to_array(t)
    return s.array(t)


def put(t):
    s = _ACTIVE.get()
    return t if s is None else s.put(t)


def initializers(model) -> dict:
    return {t.name: t for t in model.graph.initializer}
