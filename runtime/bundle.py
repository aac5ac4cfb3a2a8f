"""A bundle on disk: its manifest (checked), tokenizer, text-embedding table and lazily opened graphs."""
from __future__ import annotations

import inspect
import os

import numpy as np

from janus_edge import contract as C
from janus_edge.errors import BundleError

from . import memory
from .backend import Backend, Graph


class Bundle:
    def __init__(self, path: str, backend: Backend):
        try:
            self.manifest = C.load_manifest(path)
        except C.ContractError as e:
            raise BundleError(str(e)) from None
        self.path, self.backend = path, backend
        memory.configure_heap()  # big buffers mapped, so that what a request frees leaves the process (memory.py)
        attach = getattr(backend, "attach", None)  # trt: engines.json checked against this TensorRT and GPU
        if attach is not None:
            attach(path, self.manifest)
        self.dims = self.manifest.dims
        self.dtype = self.manifest.dtype
        self.specs = {name: e.spec(name) for name, e in self.manifest.graphs.items()}
        self._graphs: dict[str, Graph] = {}
        self._table = None
        self._tokenizer = None
        self.tokens = self.manifest.special_tokens

    def _check(self, files: list[str]) -> None:
        try:
            C.check_files(self.path, self.manifest, files)
        except C.ContractError as e:
            raise BundleError(str(e)) from None

    def graph(self, name: str) -> Graph:
        """Open a graph on first use (its files' sha256 checked then): t2i never loads `vision`."""
        if name not in self._graphs:
            self._check(C.graph_files(self.manifest, name))
            try:
                C.check_external_data(self.path, self.manifest, name)
            except C.ContractError as e:
                raise BundleError(str(e)) from None
            path = os.path.join(self.path, self.manifest.graphs[name].file)
            try:
                cfg = (self.manifest.graphs[name].quantization or {}).get("ort_session_config")
                takes = inspect.signature(self.backend.open).parameters
                extra = {"session_config": cfg} if cfg and "session_config" in takes else {}
                if "precision" in takes:  # ort: fp16 graphs' memory options
                    extra["precision"] = self.manifest.graphs[name].precision
                self._graphs[name] = self.backend.open(path, self.specs[name], **extra)
            except Exception as e:  # a graph that passed its sha256 but cannot be opened
                raise BundleError(f"cannot open graph {name} ({path}): {str(e).splitlines()[0][:300]}") from None
        return self._graphs[name]

    def release(self, name: str) -> None:
        """Close an opened graph's session (a later `graph(name)` opens it again); a graph not open is a no-op.
        Lets a caller that walks graphs one at a time (the quant report on Pro-7B) hold one session at a time."""
        if self._graphs.pop(name, None) is not None:
            import gc

            gc.collect()

    @property
    def loaded_graphs(self) -> list[str]:
        return list(self._graphs)

    @property
    def text_table(self) -> np.ndarray:
        if self._table is None:
            te = self.manifest.text_embedding
            if te.get("kind") != "table":
                raise BundleError(f"unsupported text embedding kind {te.get('kind')!r}")
            self._check([te["file"]])
            path = os.path.join(self.path, te["file"])
            try:
                table = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as e:  # a file that passed its sha256 but is no .npy (or a cut one)
                raise BundleError(f"cannot read the text-embedding table {path}: "
                                  f"{str(e).splitlines()[0][:200]}") from None
            want = (self.dims.vocab_size, self.dims.hidden_size), te.get("dtype", self.dtype)
            if (table.shape, str(table.dtype)) != want:
                raise BundleError(f"text-embedding table {path} is {table.dtype} {table.shape}, the manifest says "
                                  f"{want[1]} {want[0]}")
            self._table = table
        return self._table

    def embed_text(self, ids: np.ndarray) -> np.ndarray:
        """ids [rows, S] -> embeddings [rows, S, H] in the bundle dtype."""
        return np.ascontiguousarray(self.text_table[ids])

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from tokenizers import Tokenizer

            f = self.manifest.tokenizer["file"]
            self._check([f])
            try:
                self._tokenizer = Tokenizer.from_file(os.path.join(self.path, f))
            except Exception as e:  # tokenizers raises plain Exception on a malformed file
                raise BundleError(f"cannot read the tokenizer {os.path.join(self.path, f)}: "
                                  f"{str(e).splitlines()[0][:200]}") from None
        return self._tokenizer
