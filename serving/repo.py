"""`janus-edge triton-repo BUNDLE --out REPO`: a Triton model repository serving one bundle.

    REPO/chat/config.pbtxt   decoupled Python model: owns the process's one Engine (Pipeline + Scheduler); chat
    REPO/chat/1/model.py     streams; it also takes t2i and stats requests (KIND)
    REPO/t2i/config.pbtxt    Python model: text -> PNG + tokens (HTTP and gRPC), forwarded to `chat` through BLS;
    REPO/t2i/1/model.py      rows // 2 instances (Triton gives an instance one request at a time, even with an async
                             execute), so that many t2i requests wait on the one scheduler at once
The bundle's path and the pool's capacity are parameters of `chat`'s config; the tensor dims come from the
bundle's manifest (image tokens per image).
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

from janus_edge import contract as C
from janus_edge.errors import BundleError, InputError

from . import protocol as P
from .engine import default_max_len

HERE = os.path.dirname(os.path.abspath(__file__))


@dataclass
class RepoOptions:
    rows: int = 8
    max_len: int | None = None
    max_queue: int = 16
    backend: str = "ort"
    threads: int | None = None
    steps: int | None = None  # benchmarks only: a prefix of each image's tokens, no PNG
    t2i_instances: int | None = None  # t2i stubs (one request each while it waits); default rows // 2: the
    # single-image guided requests that fill the pool (each stub takes ~1 s to stop at shutdown)
    force: bool = False


def _tensor(t: P.Tensor) -> str:
    opt = " optional: true" if t.optional else ""
    dims = ", ".join(str(d) for d in t.dims)
    return f'  {{ name: "{t.name}" data_type: {t.dtype} dims: [ {dims} ]{opt} }}'


def _io(kind: str, ts) -> str:
    body = ",\n".join(_tensor(t) if kind == "input" else _tensor(P.Tensor(t.name, t.dtype, t.dims, False))
                      for t in ts)
    return f"{kind} [\n{body}\n]\n"


def config_pbtxt(name: str, inputs, outputs, decoupled: bool, params: dict | None = None, instances: int = 1) -> str:
    s = f'name: "{name}"\nbackend: "python"\nmax_batch_size: 0\n'
    if decoupled:
        s += "model_transaction_policy { decoupled: true }\n"
    s += _io("input", inputs) + _io("output", outputs)
    s += f"instance_group [ {{ kind: KIND_CPU count: {instances} }} ]\n"
    for k, v in (params or {}).items():
        if v is not None:
            s += f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}\n'
    return s


def check_options(o: RepoOptions, dims) -> int:
    if o.rows < 1 or o.max_queue < 0:
        raise InputError(f"--rows must be >= 1 and --max-queue >= 0, got {o.rows}, {o.max_queue}")
    max_len = o.max_len or default_max_len(dims)
    if not (2 <= max_len <= dims.max_position_embeddings):
        raise InputError(f"--max-len must be in [2, {dims.max_position_embeddings}] (the model context), got {max_len}")
    tokens = o.steps or dims.num_image_tokens
    if max_len <= tokens:
        raise InputError(f"--max-len {max_len} leaves no room for a prompt before {tokens} image tokens")
    if o.steps is not None and not 1 <= o.steps <= dims.num_image_tokens:
        raise InputError(f"--steps must be in [1, {dims.num_image_tokens}], got {o.steps}")
    if o.backend not in ("ort", "trt"):
        raise InputError(f"--backend must be ort or trt, got {o.backend!r}")
    return max_len


def write_repo(bundle: str, out: str, opts: RepoOptions | None = None) -> str:
    from janus_edge.export.staging import staged_dir  # stdlib only: no torch

    opts = opts or RepoOptions()
    try:
        m = C.load_manifest(bundle)
    except C.ContractError as e:
        raise BundleError(str(e)) from None
    dims = m.dims
    max_len = check_options(opts, dims)
    T = opts.steps or dims.num_image_tokens  # tokens per image in TOKENS
    params = {"bundle": os.path.abspath(bundle), "backend": opts.backend, "threads": opts.threads,
              "rows": opts.rows, "max_len": max_len, "max_queue": opts.max_queue, "steps": opts.steps}
    with staged_dir(out, opts.force, InputError) as tmp:
        t2i_instances = opts.t2i_instances or max(1, opts.rows // 2)
        for name, src, ins, outs, dec, prm, k in (
                ("chat", "triton_chat.py", P.CHAT_IN, P.chat_out(T), True, params, 1),
                ("t2i", "triton_t2i.py", P.T2I_IN, P.t2i_out(T), False, None, t2i_instances)):
            os.makedirs(os.path.join(tmp, name, "1"))
            shutil.copyfile(os.path.join(HERE, src), os.path.join(tmp, name, "1", "model.py"))
            with open(os.path.join(tmp, name, "config.pbtxt"), "w") as fh:
                fh.write(config_pbtxt(name, ins, outs, dec, prm, k))
    return os.path.abspath(out)
