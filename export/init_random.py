"""Write a complete HF-format Janus checkpoint with random (seeded) weights, loadable by transformers offline."""
from __future__ import annotations

import json
import os
import sys
import time
import zlib

import torch
from transformers import GenerationConfig, JanusForConditionalGeneration, JanusProcessor

from janus_edge.errors import CheckpointError
from janus_edge.export.presets import PRESETS, make_config
from janus_edge.export.staging import staged_dir
from janus_edge.export.stream_io import SafetensorsWriter, nbytes
from janus_edge.export.tokenizer_build import BOI, BOS, EOS, IMAGE, TOKENIZER_SPECS, build_hf_tokenizer

# Renders a conversation as the published deepseek-community checkpoints do (same output as the template of
# transformers' convert_janus_weights_to_hf.py): a user turn is "<|User|>: " + its parts + "\n\n"; an image
# part is <image_placeholder>, set off from neighbouring parts by "\n"; consecutive text parts are joined by
# a space; other turns end with the EOS text; the generation prompt is "<|Assistant|>:".
# A plain-string content is accepted as one text part.
CHAT_TEMPLATE = "".join([
    "{%- for message in messages -%}",
    "{%- set role = message['role'] | lower -%}",
    "{%- set parts = message['content'] if message['content'] is not string"
    " else [{'type': 'text', 'text': message['content']}] -%}",
    "{%- if role == 'user' -%}{{ '<|User|>: ' }}",
    "{%- elif role == 'assistant' -%}{{ '<|Assistant|>:' }}",
    "{%- set empty_last = loop.last and not add_generation_prompt and parts | length > 0",
    " and parts[0]['type'] == 'text' and parts[0]['text'] == '' -%}",
    "{%- if not empty_last -%}{{ ' ' }}{%- endif -%}",
    "{%- else -%}{{ message['role'] | capitalize }}{{ ': ' }}",
    "{%- endif -%}",
    "{%- for part in parts -%}",
    "{%- if part['type'] == 'image' -%}",
    "{%- if not loop.first -%}{{ '\\n' }}{%- endif -%}{{ '<image_placeholder>' }}",
    "{%- if not loop.last -%}{{ '\\n' }}{%- endif -%}",
    "{%- elif part['type'] == 'text' -%}",
    "{%- set text = part['text'] -%}",
    "{%- if loop.first -%}{%- set text = text.lstrip() -%}{%- endif -%}",
    "{%- if loop.last -%}{%- set text = text.rstrip() -%}{%- endif -%}",
    "{%- if not loop.first and parts[loop.index0 - 1]['type'] == 'text' -%}{{ ' ' }}{%- endif -%}",
    "{{ text }}",
    "{%- endif -%}",
    "{%- endfor -%}",
    "{%- if not loop.last or add_generation_prompt -%}",
    "{%- if role == 'user' -%}{{ '\\n\\n' }}{%- else -%}{{ '" + EOS + "' }}{%- endif -%}",
    "{%- endif -%}",
    "{%- endfor -%}",
    "{%- if add_generation_prompt -%}{{ '<|Assistant|>:' }}{%- endif -%}",
])

JANUS_PRO_MEAN = [0.5, 0.5, 0.5]  # Janus-Pro normalises with mean = std = 0.5 (background 127)
JANUS_PRO_STD = [0.5, 0.5, 0.5]


def _log(msg: str) -> None:
    print(f"[init-random] {msg}", file=sys.stderr, flush=True)


def image_processor_class():
    """transformers' JanusImageProcessor needs torchvision; its PIL twin does the same without it."""
    try:
        import torchvision  # noqa: F401

        from transformers import JanusImageProcessor as cls
    except ImportError:
        from transformers.models.janus.image_processing_pil_janus import JanusImageProcessorPil as cls
    return cls


def make_processor(preset: str) -> JanusProcessor:
    """Tokenizer + image processor + chat template of a preset, as the published checkpoints carry them."""
    config = make_config(preset)
    size = config.vision_config.image_size
    image_processor = image_processor_class()(
        size={"height": size, "width": size}, image_mean=JANUS_PRO_MEAN, image_std=JANUS_PRO_STD,
        min_size=14, rescale_factor=1 / 255, do_normalize=True, do_rescale=True, do_resize=True, do_pad=True)
    return JanusProcessor(image_processor=image_processor, tokenizer=build_hf_tokenizer(preset),
                          chat_template=CHAT_TEMPLATE, use_default_system_prompt=True,
                          num_image_tokens=config.vision_config.num_image_tokens)


def make_generation_config(preset: str) -> GenerationConfig:
    """bos/eos/pad ids, CFG weight 5 and the BOI id where transformers' Janus image generate reads it."""
    ids = TOKENIZER_SPECS[preset].ids
    gen = GenerationConfig(bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"],
                           guidance_scale=5.0, temperature=1.0, generation_kwargs={"boi_token_id": ids["boi"]})
    gen.boi_token_id = ids["boi"]  # where the published generation_config.json keeps it
    return gen


def _build_model(preset: str, seed: int) -> JanusForConditionalGeneration:
    """The whole model in memory with transformers' own init (small presets; `init_random` streams instead)."""
    torch.manual_seed(seed)
    model = JanusForConditionalGeneration(make_config(preset)).to(torch.float32).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not torch.isfinite(p).all():
                raise RuntimeError(f"random init produced non-finite values in {name}")
    return model


BLOCK_BYTES = 256 << 20  # fp32 bytes of a subtree initialised as one piece (a decoder layer of Pro-7B: 0.8 GB)
DEFAULT_DTYPE = {"tiny": "float32", "shapes": "float32", "pro-1b": "float32", "pro-7b": "bfloat16"}  # pro-7b as published (bf16)
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _meta_model(config) -> JanusForConditionalGeneration:
    from transformers.initialization import no_init_weights

    with torch.device("meta"), no_init_weights():
        return JanusForConditionalGeneration(config).eval()


def _own(module, keys: set, prefix: str) -> list[tuple[str, str]]:
    """(attribute, full key) of the tensors a module holds itself that the checkpoint stores."""
    out = []
    for attr, t in (*module._parameters.items(), *module._buffers.items()):
        key = f"{prefix}{attr}"
        if t is not None and key in keys:
            out.append((attr, key))
    return out


def _pieces(model, keys: set):
    """Split the model into pieces initialised one at a time, in state_dict order: a subtree whose tensors fit in
    BLOCK_BYTES (fp32) is one piece; a larger module contributes its own tensors, then its children's pieces.
    Yields (name, module, recurse) with `owner`, the nearest PreTrainedModel whose `_init_weights` applies."""
    from transformers import PreTrainedModel

    def walk(module, name, owner):
        owner = module if isinstance(module, PreTrainedModel) else owner
        size = sum(t.numel() * 4 for t in (*module.parameters(), *module.buffers()))
        if size <= BLOCK_BYTES:
            yield name, module, True, owner
            return
        yield name, module, False, owner
        for child_name, child in module.named_children():
            yield from walk(child, f"{name}.{child_name}" if name else child_name, owner)

    yield from walk(model, "", model)


def _piece_seed(seed: int, name: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (1 << 62)


def _init_piece(module, recurse: bool, owner, seed: int) -> None:
    """Materialise one piece on the CPU and initialise it as transformers does (children first, then parents, each
    with the `_init_weights` of its nearest PreTrainedModel), from its own seed."""
    from transformers import PreTrainedModel

    module.to_empty(device="cpu", recurse=recurse)
    torch.manual_seed(seed)

    def apply(m, own_owner):
        own_owner = m if isinstance(m, PreTrainedModel) else own_owner
        if recurse:
            for child in m.children():
                apply(child, own_owner)
        own_owner._init_weights(m)

    with torch.no_grad():
        apply(module, owner)


def random_tensors(config, dtype: torch.dtype, seed: int):
    """(key, tensor) of a random checkpoint in state_dict order, one piece of the model in memory at a time.
    The first item is the layout: a list of (key, dtype, shape), known before any tensor is made."""
    model = _meta_model(config)
    tied = set(getattr(model, "all_tied_weights_keys", {}) or {})
    sd = {k: v for k, v in model.state_dict().items() if k not in tied}
    cast = {k: dtype if v.is_floating_point() else v.dtype for k, v in sd.items()}
    yield [(k, cast[k], tuple(v.shape)) for k, v in sd.items()]
    keys = set(sd)
    for name, module, recurse, owner in _pieces(model, keys):
        prefix = f"{name}." if name else ""
        if recurse:
            items = [(f"{prefix}{k}", k) for k in module.state_dict() if f"{prefix}{k}" in keys]
        else:
            items = [(key, attr) for attr, key in _own(module, keys, prefix)]
        if not items:
            continue
        _init_piece(module, recurse, owner, _piece_seed(seed, name))
        local = module.state_dict() if recurse else {a: t for a, t in
                                                      (*module._parameters.items(), *module._buffers.items())}
        for key, attr in items:
            t = local[attr].detach()
            if t.is_floating_point() and not torch.isfinite(t).all():
                raise RuntimeError(f"random init produced non-finite values in {key}")
            yield key, t.to(cast[key])
        del local
        module.to_empty(device="meta", recurse=recurse)


def _shards(layout: list, max_bytes: int) -> list[list]:
    shards, size = [[]], 0
    for item in layout:
        b = nbytes(item[2], item[1])
        if shards[-1] and size + b > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(item)
        size += b
    return shards


def write_random_weights(config, out_dir: str, dtype: torch.dtype, seed: int, max_shard_bytes: int = 2 * 10**9) -> int:
    """Write model*.safetensors (+ the index when sharded) tensor by tensor; returns the number of parameters."""
    from .stream import return_freed_memory

    return_freed_memory()
    stream = random_tensors(config, dtype, seed)
    shards = _shards(next(stream), max_shard_bytes)
    names = (["model.safetensors"] if len(shards) == 1 else
             [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)])
    weight_map, total, count = {}, 0, 0
    for fname, layout in zip(names, shards):
        with SafetensorsWriter(os.path.join(out_dir, fname), layout) as w:
            for key, _, shape in layout:
                k, t = next(stream)
                w.write(k, t)
                weight_map[k], total, count = fname, total + nbytes(shape, t.dtype), count + t.numel()
        _log(f"wrote {fname} ({os.path.getsize(os.path.join(out_dir, fname)) / 1e9:.2f} GB)")
    if len(shards) > 1:
        with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as fh:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, fh, indent=2)
    return count


def init_random(preset: str, out: str, seed: int = 0, force: bool = False, dtype: str | None = None) -> str:
    """Write a random-weight HF-format checkpoint of `preset` to `out`; returns `out`.

    Files: config.json, generation_config.json, model*.safetensors, tokenizer.json + tokenizer_config.json,
    processor/preprocessor config with the chat template. Written to a temp dir beside `out`, then moved.
    Weights are made and written one piece at a time (a decoder layer, an embedding): the model is never held
    whole, so Pro-7B (bf16 by default, as published) is written in a few GB of memory. `dtype`: float32, bfloat16
    or float16; default per preset (DEFAULT_DTYPE).
    """
    if preset not in PRESETS:
        raise CheckpointError(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
    dtype = dtype or DEFAULT_DTYPE[preset]
    if dtype not in _DTYPES:
        raise CheckpointError(f"unknown dtype {dtype!r} (choose from {', '.join(_DTYPES)})")
    out = os.path.abspath(out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    config = make_config(preset)
    layout = next(random_tensors(config, _DTYPES[dtype], seed))  # a meta-device model: shapes only
    need = sum(nbytes(shape, dt) for _, dt, shape in layout) + 16 * 10**6  # + config, tokenizer, processor files
    with staged_dir(out, force, CheckpointError, need=need, what="the checkpoint") as tmp:
        t0 = time.time()
        _log(f"writing {preset} with random weights (seed {seed}, {dtype}) to {out}")
        n = write_random_weights(config, tmp, _DTYPES[dtype], seed)
        _log(f"{n / 1e6:.1f}M parameters written in {time.time() - t0:.1f} s")
        config.architectures = ["JanusForConditionalGeneration"]
        config.dtype = dtype
        config.save_pretrained(tmp)
        make_generation_config(preset).save_pretrained(tmp)
        processor = make_processor(preset)
        processor.save_pretrained(tmp)
        # transformers 5 keeps the image processor inside processor_config.json; older readers look here.
        processor.image_processor.to_json_file(os.path.join(tmp, "preprocessor_config.json"))
    _log(f"done in {time.time() - t0:.1f} s")
    return out


__all__ = ["init_random", "make_processor", "make_generation_config", "CHAT_TEMPLATE", "BOS", "BOI", "IMAGE"]
