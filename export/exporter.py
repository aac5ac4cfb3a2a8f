"""Checkpoint -> bundle: the seven ONNX graphs, the text-embedding table, the tokenizer and manifest.json.

Written to a temp dir beside `out`, then renamed: a failed export leaves nothing at `out`.
Graphs are traced with torch's TorchScript ONNX exporter (`dynamo=False`): it exports the whole Pro-1B LM in
seconds, where `dynamo=True` failed on the cache arguments' dynamic shapes and is far slower on big graphs.
"""
from __future__ import annotations

import contextlib
import copy
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from janus_edge import contract as C
from janus_edge.errors import InputError

from .checkpoint import TOKENIZER_FILES, LoadedCheckpoint, load_checkpoint, open_checkpoint
from .graphs import build_module
from .stream_export import STREAMED, gather_external, trace_with_weight_inputs, weights_to_initializers
from .staging import check_space, check_target, staged_dir


EXAMPLE_SIZES = {"rows": 2, "n": 2, "seq": 3, "past": 5}  # >1 each, so the tracer keeps them symbolic
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16}
OPSET = 17


@dataclass
class ExportOptions:
    dtype: str = "float32"
    force: bool = False
    graphs: tuple[str, ...] = C.GRAPHS
    external_data_threshold: int = 1 << 30  # graphs with more weight bytes than this keep them in NAME.onnx.data
    progress: bool = True
    streaming: bool = True  # read weights per graph / per tensor (stream_export.py); False: the whole model in memory
    # fp16 bundles: graphs traced in fp32 and converted to fp16 afterwards (export/fp16.py; torch's fp16 conv2d on
    # the CPU takes minutes per layer)
    fp16_via_fp32: tuple[str, ...] = ("vq_encoder", "vq_decoder")


def model_dims(ck: LoadedCheckpoint) -> C.ModelDims:
    tc, vc, qc = ck.config.text_config, ck.config.vision_config, ck.config.vq_config
    return C.ModelDims(
        hidden_size=tc.hidden_size, num_layers=tc.num_hidden_layers, num_heads=tc.num_attention_heads,
        num_kv_heads=tc.num_key_value_heads, head_dim=getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads,
        vocab_size=tc.vocab_size, image_vocab_size=qc.num_embeddings, num_image_tokens=vc.num_image_tokens,
        image_size=vc.image_size, max_position_embeddings=tc.max_position_embeddings)


def example_inputs(spec: C.GraphSpec, dims: C.ModelDims, tdtype: torch.dtype) -> tuple:
    g = torch.Generator().manual_seed(0)
    out = []
    for t in spec.inputs:
        shape = [EXAMPLE_SIZES[x] if isinstance(x, str) else x for x in t.dims]
        if t.name == "position_ids":
            out.append(torch.arange(shape[1]).repeat(shape[0], 1) + EXAMPLE_SIZES["past"])
        elif t.name == "codes":
            out.append(torch.randint(0, dims.image_vocab_size, shape, generator=g))
        elif t.name == "cfg_weight":
            out.append(torch.full(shape, 5.0, dtype=tdtype))
        else:
            out.append(torch.randn(shape, generator=g).to(tdtype))
    return tuple(out)


def dynamic_axes(spec: C.GraphSpec) -> dict:
    return {t.name: {i: d for i, d in enumerate(t.dims) if isinstance(d, str)} for t in (*spec.inputs, *spec.outputs)}


def _log(opts: ExportOptions, msg: str) -> None:
    if opts.progress:
        print(msg, file=sys.stderr, flush=True)


def export_graph(name: str, ck: LoadedCheckpoint, spec: C.GraphSpec, dims: C.ModelDims, path: str,
                 opts: ExportOptions) -> tuple[list[str], int]:
    """Export one graph to `path`; returns (the sidecar external-data file names beside it, its weight bytes).
    A streaming checkpoint (`ck.weights`) gives the graph its weights only while it is exported: the LM-side
    graphs tensor by tensor straight into the file (stream_export.py), the others as one materialised module."""
    from .stream import load_module, materialized, release

    module = build_module(name, ck.model)
    tdtype = TORCH_DTYPES[opts.dtype]
    args = example_inputs(spec, dims, tdtype)
    param_bytes = sum(p.numel() * tdtype.itemsize if p.is_floating_point() else p.numel() * p.element_size()
                      for p in module.parameters())
    external = param_bytes > opts.external_data_threshold
    raw_dir = os.path.join(os.path.dirname(path), f".raw-{name}")
    os.makedirs(raw_dir, exist_ok=True)
    raw = os.path.join(raw_dir, os.path.basename(path))
    kwargs = dict(input_names=[t.name for t in spec.inputs], output_names=[t.name for t in spec.outputs],
                  dynamic_axes=dynamic_axes(spec), opset_version=OPSET, do_constant_folding=True)
    try:
        if ck.weights is not None and name in STREAMED:
            full = {id(p): n for n, p in ck.model.named_parameters()}
            keys = {n: full[id(p)] for n, p in module.named_parameters()}
            load_module(ck.model, module, None, tdtype, params=False)  # rotary inv_freq and such
            try:
                trace_with_weight_inputs(module, args, raw, kwargs)
            finally:
                release(module)
            weights_to_initializers(raw, path, keys, ck.weights, external)
            return ([f"{os.path.basename(path)}.data"] if external else []), stamp_io(path, spec)
        via32 = opts.dtype == "float16" and name in opts.fp16_via_fp32 and not external
        if via32:
            args = example_inputs(spec, dims, torch.float32)
        with contextlib.ExitStack() as stack:
            if ck.weights is not None:
                stack.enter_context(materialized(ck.model, module, ck.weights, torch.float32 if via32 else tdtype))
            elif via32:
                module = copy.deepcopy(module).float()
            _trace(module, args, raw if external or via32 else path, kwargs)
        if via32:
            from .fp16 import convert_file

            convert_file(raw, path)
        if not external:
            return [], stamp_io(path, spec)
        # The tracer writes one file per large tensor (graphs over 2 GB); gather them into a single NAME.onnx.data.
        gather_external(raw, path)
        return [f"{os.path.basename(path)}.data"], stamp_io(path, spec)
    finally:
        shutil.rmtree(raw_dir, ignore_errors=True)


def _trace(module, args, path: str, kwargs: dict) -> None:
    with torch.no_grad(), warnings.catch_warnings():
        # the tracer's TracerWarnings / deprecation notes are about its own internals, not the user's model
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, path, dynamo=False, **kwargs)


def stamp_io(path: str, spec: C.GraphSpec) -> int:
    """Write the contract's dims (fixed ints, symbolic names) onto the graph's inputs and outputs (the tracer
    leaves generated names on dims it could not infer, and TensorRT profiles are keyed on these); returns the bytes
    of the graph's initializers, from their dims and types, read in the same pass."""
    import onnx
    from onnx import helper

    model = onnx.load(path, load_external_data=False)
    for values, tensors in ((model.graph.input, spec.inputs), (model.graph.output, spec.outputs)):
        for v, t in zip(values, tensors):
            assert v.name == t.name, (v.name, t.name)
            shape = v.type.tensor_type.shape
            del shape.dim[:]
            for d in t.dims:
                dim = shape.dim.add()
                if isinstance(d, int):
                    dim.dim_value = d
                else:
                    dim.dim_param = d
    onnx.save(model, path)
    return sum(int(np.prod(t.dims)) * np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
               for t in model.graph.initializer)


def export_bundle(checkpoint: str, out: str, dtype: str = "float32", force: bool = False,
                  options: ExportOptions | None = None) -> str:
    """Export `checkpoint` (HF or original Janus format) to a bundle at `out`. Returns `out`."""
    opts = options or ExportOptions(dtype=dtype, force=force)
    if opts.dtype not in TORCH_DTYPES:
        raise InputError(f"unsupported --dtype {opts.dtype!r}; choose one of {', '.join(TORCH_DTYPES)}")
    check_target(out, opts.force, InputError)  # before the (slow) checkpoint load
    need = estimate_bytes(checkpoint, opts.dtype)
    check_space(out, need, "the bundle", InputError)
    t0 = time.time()
    if opts.streaming:
        from .stream import return_freed_memory

        return_freed_memory()
    ck = (open_checkpoint if opts.streaming else load_checkpoint)(checkpoint, dtype=opts.dtype)
    _log(opts, f"loaded {ck.format} checkpoint {checkpoint} in {time.time() - t0:.1f}s")
    with staged_dir(out, opts.force, InputError, need=need, what="the bundle") as tmp:
        write_bundle(ck, tmp, opts).save(tmp)
    _log(opts, f"bundle written to {out} in {time.time() - t0:.1f}s")
    if opts.progress:  # TensorRT parseability, as a warning (the bundle stays valid for ONNX Runtime)
        from .lint_trt import warn_after

        warn_after(out, "export")
    return out


def estimate_bytes(checkpoint: str, dtype: str) -> int:
    """What an export of `checkpoint` in `dtype` writes, from its weight files alone (no load): every parameter once
    at the export dtype's size (safetensors headers; a .bin counts its file size), plus 2% and 16 MB for the graphs'
    protos, the tokenizer and the manifest. 0 when the checkpoint has no readable weight files (the load says why)."""
    from .checkpoint import _weight_files
    from .stream_io import SafetensorsFile

    try:
        files = _weight_files(checkpoint) if os.path.isdir(checkpoint) else []
        size = TORCH_DTYPES[dtype].itemsize
        total = sum(sum(int(np.prod(shape)) for _, shape, _ in SafetensorsFile(f).entries.values()) * size
                    if f.endswith(".safetensors") else os.path.getsize(f) for f in files)
    except Exception:  # noqa: BLE001 - a broken checkpoint: its load, next, says what is wrong with it
        return 0
    return int(total * 1.02) + 16 * 10**6


def text_table(ck: LoadedCheckpoint, dtype: torch.dtype) -> np.ndarray:
    """The text-embedding table in `dtype`, from the model or (streaming) read from the checkpoint alone."""
    if ck.weights is None:
        return ck.model.get_input_embeddings().weight.detach().to(dtype).numpy()
    key = {id(p): n for n, p in ck.model.named_parameters()}[id(ck.model.get_input_embeddings().weight)]
    return ck.weights.get(key, dtype).numpy()


def write_bundle(ck: LoadedCheckpoint, d: str, opts: ExportOptions) -> C.Manifest:
    dims = model_dims(ck)
    specs = C.graph_specs(dims, opts.dtype)
    graphs: dict[str, C.GraphEntry] = {}
    for i, name in enumerate(opts.graphs, 1):
        t = time.time()
        _log(opts, f"[{i}/{len(opts.graphs)}] exporting {name} ...")
        extra, weight_bytes = export_graph(name, ck, specs[name], dims, os.path.join(d, f"{name}.onnx"), opts)
        graphs[name] = C.GraphEntry(file=f"{name}.onnx", inputs=[s.to_json() for s in specs[name].inputs],
                                    outputs=[s.to_json() for s in specs[name].outputs], precision=opts.dtype,
                                    external_data=extra, weight_bytes=weight_bytes)
        _log(opts, f"[{i}/{len(opts.graphs)}] {name} done in {time.time() - t:.1f}s")
    table = text_table(ck, TORCH_DTYPES[opts.dtype])
    np.save(os.path.join(d, "text_embed.npy"), table)
    for f in TOKENIZER_FILES:
        src = os.path.join(ck.tokenizer_dir, f)
        if os.path.isfile(src):
            shutil.copyfile(src, os.path.join(d, f))
    if not os.path.isfile(os.path.join(d, "tokenizer.json")):
        raise InputError(f"checkpoint has no tokenizer.json in {ck.tokenizer_dir}")
    import transformers

    return C.Manifest(
        model={**dims.__dict__, "model_type": "janus", "source_format": ck.format},
        special_tokens=dict(ck.special_tokens),
        prompts=C.prompt_templates(ck.use_default_system_prompt),
        image_preprocess=dict(ck.image_preprocess),
        graphs=graphs,
        text_embedding={"kind": "table", "file": "text_embed.npy", "dtype": opts.dtype, "shape": list(table.shape)},
        tokenizer={"file": "tokenizer.json"},
        files={f: C.sha256_file(os.path.join(d, f)) for f in sorted(os.listdir(d))},
        dtype=opts.dtype,
        producer={"janus_edge": __import__("janus_edge").__version__, "torch": torch.__version__,
                  "transformers": transformers.__version__, "opset": OPSET},
    )
