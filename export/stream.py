"""Weights read from the checkpoint files one tensor at a time, and modules materialised only while needed.

A `WeightSource` knows every tensor's name (transformers' names) and shape without reading data, and returns one
tensor, cast to the asked dtype, on demand: from HF safetensors (plain file reads, `stream_io`), HF or original
`.bin` files (`torch.load(mmap=True)`), or the original deepseek-ai layout (renamed / split per tensor).
`materialized(model, module, source, dtype)` gives a submodule of a meta-device model real weights for the length
of a `with` block; `offload_layers` does the same per decoder layer around each forward call.
"""
from __future__ import annotations

import ctypes
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from janus_edge.errors import CheckpointError

from .stream_io import SafetensorsFile


@dataclass
class WeightSource:
    """name -> shape, and name -> a loader of that one tensor."""

    shapes: dict = field(default_factory=dict)
    loaders: dict = field(default_factory=dict)

    def add(self, name: str, shape: tuple, loader: Callable[[], torch.Tensor]) -> None:
        self.shapes[name], self.loaders[name] = tuple(shape), loader

    def get(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        try:
            t = self.loaders[name]()
        except CheckpointError:
            raise
        except Exception as e:
            raise CheckpointError(f"cannot read tensor {name} ({str(e).splitlines()[0][:200]})") from None
        if tuple(t.shape) != self.shapes[name]:
            raise CheckpointError(f"tensor {name} has shape {tuple(t.shape)}, the header said {self.shapes[name]}")
        return t if dtype is None or t.dtype == dtype or not t.is_floating_point() else t.to(dtype)


def _file_tensors(path: str) -> Iterator[tuple[str, tuple, Callable[[], torch.Tensor]]]:
    """(name, shape, loader) of every tensor in one weight file, reading no data (bin files are memory-mapped)."""
    if path.endswith(".safetensors"):
        f = SafetensorsFile(path)
        for name in f.entries:
            yield name, f.shape(name), (lambda f=f, n=name: f.read(n))
        return
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # unpickling refusals, truncated files, ...
        raise CheckpointError(f"{path}: cannot read weights ({str(e).splitlines()[0][:200]})") from None
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path}: not a state dict of tensors")
    for name, t in sd.items():
        yield name, tuple(t.shape), (lambda t=t: t)


def hf_source(files: list[str]) -> WeightSource:
    src = WeightSource()
    for f in files:
        for name, shape, loader in _file_tensors(f):
            src.add(name, shape, loader)
    return src


def original_source(files: list[str]) -> tuple[WeightSource, list[str]]:
    """The original layout seen under transformers' names (qkv split, pos_embed squeezed, per tensor); returns
    (source, unknown original names)."""
    from .original_format import original_to_hf_state_dict

    src, unknown = WeightSource(), []
    for f in files:
        for name, shape, loader in _file_tensors(f):
            mapped, unk = original_to_hf_state_dict({name: torch.empty(shape, device="meta")})
            unknown += unk
            for hf, meta in mapped.items():
                src.add(hf, tuple(meta.shape),
                        lambda n=name, ld=loader, hf=hf: original_to_hf_state_dict({n: ld()})[0][hf])
    return src, unknown


def return_freed_memory() -> None:
    """Make glibc give large freed blocks back to the OS. By default it raises its mmap threshold (up to 32 MB)
    after each large free, so later tensors come from the heap, where fragmentation keeps freed pieces resident:
    the streaming init of Pro-7B peaked at 7.4 GB RSS for pieces of under 2.5 GB (Pro-1B's vision layers alone
    grew it by 0.4 GB). A fixed 1 MB threshold makes every larger tensor its own mapping, unmapped on free."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # not glibc
        pass


# ---- materialising parts of a meta-device model ---------------------------------------------------------------


def _owner_of(model: nn.Module) -> dict:
    """id(module) -> (its name in the model, the nearest PreTrainedModel above or at it)."""
    from transformers import PreTrainedModel

    out = {}

    def walk(m, name, owner):
        owner = m if isinstance(m, PreTrainedModel) else owner
        out.setdefault(id(m), (name, owner))
        for child_name, child in m.named_children():
            walk(child, f"{name}.{child_name}" if name else child_name, owner)

    walk(model, "", model)
    return out


def load_module(model: nn.Module, module: nn.Module, source: WeightSource | None, dtype: torch.dtype,
                params: bool = True, owners: dict | None = None) -> None:
    """Give `module` (part of the meta-device `model`) real tensors: parameters and stored buffers from `source`
    (floating ones cast to `dtype`), buffers the checkpoint does not store (rotary inv_freq, position ids) made
    as transformers makes them on load (its `_init_weights`). With params=False only those buffers are made."""
    owners = owners or _owner_of(model)
    with torch.no_grad():
        for sub in module.modules():
            if id(sub) not in owners:  # a graph wrapper around the model's modules: holds no tensors itself
                continue
            name, owner = owners[id(sub)]
            prefix = f"{name}." if name else ""
            fresh = [a for a, b in sub._buffers.items() if b is not None and b.is_meta
                     and a in sub._non_persistent_buffers_set]
            for a in fresh:
                sub._buffers[a] = torch.empty_like(sub._buffers[a], device="cpu")
            if fresh:
                saved = dict(sub._parameters)
                sub._parameters.update({a: None for a in saved})  # _init_weights must touch only the buffers
                try:
                    owner._init_weights(sub)
                finally:
                    sub._parameters.update(saved)
            if not params:
                continue
            for a, p in sub._parameters.items():
                if p is not None and p.is_meta:
                    t = source.get(prefix + a, dtype if p.is_floating_point() else None)
                    sub._parameters[a] = nn.Parameter(t, requires_grad=False)
            for a, b in sub._buffers.items():
                if b is not None and b.is_meta:
                    sub._buffers[a] = source.get(prefix + a, b.dtype)


def release(module: nn.Module) -> None:
    """Back to the meta device: the module's tensors are freed."""
    module.to_empty(device="meta")


@contextmanager
def materialized(model, module, source, dtype, owners=None):
    load_module(model, module, source, dtype, owners=owners)
    try:
        yield module
    finally:
        release(module)


@contextmanager
def offload_layers(model: nn.Module, layers, source: WeightSource, dtype: torch.dtype):
    """Each of `layers` holds real weights only during its own forward call (read again on every call)."""
    owners = _owner_of(model)
    hooks = []
    for layer in layers:
        hooks.append(layer.register_forward_pre_hook(
            lambda m, args: load_module(model, m, source, dtype, owners=owners)))
        hooks.append(layer.register_forward_hook(lambda m, args, out: release(m)))
    try:
        yield
    finally:
        for h in hooks:
            h.remove()
        for layer in layers:
            release(layer)


__all__ = ["return_freed_memory", "WeightSource", "hf_source", "original_source", "load_module", "release", "materialized",
           "offload_layers"]
