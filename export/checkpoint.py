"""Load a Janus checkpoint from local disk, HF format or the original deepseek-ai format; never downloads.

`load_checkpoint(path)` returns the transformers `JanusForConditionalGeneration` (eval mode, eager attention for
the language and vision models, as ONNX export needs) plus what a bundle needs besides the weights: special-token
ids, image preprocessing, the system-prompt setting and where the tokenizer files are.
Weights are read with safetensors or `torch.load(weights_only=True)`: no pickled code is ever run.
"""
from __future__ import annotations

import glob
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import torch

from janus_edge.errors import CheckpointError, InputError
from janus_edge.export.tokenizer_build import SPECIAL_TEXT

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_REQUIRED_TOKENS = ("bos", "eos", "pad", "image", "boi", "eoi")


# the tokenizer files a checkpoint carries and a bundle copies
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")

@dataclass
class LoadedCheckpoint:
    """A loaded checkpoint: the reference model and the facts a bundle manifest records."""

    model: Any  # transformers JanusForConditionalGeneration, eval mode
    config: Any  # transformers JanusConfig
    format: str  # "hf" or "original"
    path: str
    tokenizer_dir: str  # holds tokenizer.json (+ tokenizer_config.json)
    special_tokens: dict  # bos, eos, pad, image, boi, eoi, user, assistant -> id (user/assistant may be None)
    image_preprocess: dict  # size, image_mean, image_std, resample, background_color, rescale_factor, min_size
    use_default_system_prompt: bool
    num_image_tokens: int
    chat_template: str | None = None
    warnings: list = field(default_factory=list)
    weights: Any = None  # open_checkpoint: a stream.WeightSource; `model` is then on the meta device


def _read_json(path: str, what: str = "") -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: broken JSON{what} ({e.msg} at line {e.lineno})") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def _opt_json(path: str) -> dict:
    return _read_json(path) if os.path.isfile(path) else {}


def detect_format(path: str) -> str:
    """'hf' (model_type janus) or 'original' (MultiModalityCausalLM / multi_modality); raises CheckpointError."""
    if not os.path.isdir(path):
        raise CheckpointError(f"checkpoint dir {path} does not exist" if not os.path.exists(path)
                              else f"checkpoint path {path} is not a directory")
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise CheckpointError(f"{path} has no config.json (not a Janus checkpoint)")
    cfg = _read_json(cfg_path)
    archs = cfg.get("architectures") or []
    if cfg.get("model_type") == "janus" or "JanusForConditionalGeneration" in archs:
        return "hf"
    if cfg.get("model_type") == "multi_modality" or "MultiModalityCausalLM" in archs:
        return "original"
    raise CheckpointError(f"{cfg_path}: unknown model type {cfg.get('model_type')!r} "
                          f"(expected 'janus' or the original 'multi_modality')")


def _token_text(value) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def read_special_tokens(tok_dir: str) -> dict:
    """Special-token ids from tokenizer.json; BOS/EOS/pad texts from tokenizer_config/special_tokens_map if given."""
    from tokenizers import Tokenizer

    tok_path = os.path.join(tok_dir, "tokenizer.json")
    if not os.path.isfile(tok_path):
        raise CheckpointError(f"{tok_dir} has no tokenizer.json")
    try:
        tok = Tokenizer.from_file(tok_path)
    except Exception as e:  # tokenizers raises plain Exception subclasses
        raise CheckpointError(f"{tok_path}: cannot parse tokenizer ({str(e).splitlines()[0]})") from None
    texts = dict(SPECIAL_TEXT)
    for meta in (_opt_json(os.path.join(tok_dir, "special_tokens_map.json")),
                 _opt_json(os.path.join(tok_dir, "tokenizer_config.json"))):
        for name in ("bos", "eos", "pad"):
            texts[name] = _token_text(meta.get(f"{name}_token")) or texts[name]
    ids = {name: tok.token_to_id(text) for name, text in texts.items()}
    missing = [f"{n} {texts[n]!r}" for n in _REQUIRED_TOKENS if ids[n] is None]
    if missing:
        raise CheckpointError(f"{tok_path}: special tokens missing: {', '.join(missing)}")
    return ids


def read_image_preprocess(path: str, default_size: int) -> dict:
    """Image preprocessing from processor_config.json (transformers 5), preprocessor_config.json (HF 4 / original)."""
    pc = _opt_json(os.path.join(path, "processor_config.json"))
    ip = pc.get("image_processor") if isinstance(pc.get("image_processor"), dict) else None
    ip = ip or _opt_json(os.path.join(path, "preprocessor_config.json"))
    size = ip.get("size", ip.get("image_size", default_size))
    if isinstance(size, dict):
        size = size.get("height", size.get("shortest_edge", default_size))
    mean = [float(x) for x in ip.get("image_mean", [0.5, 0.5, 0.5])]
    std = [float(x) for x in ip.get("image_std", [0.5, 0.5, 0.5])]
    if ip.get("resample", 3) != 3:
        raise CheckpointError(f"{path}: image resample {ip.get('resample')} is not bicubic (3)")
    return {"size": int(size), "image_mean": mean, "image_std": std, "resample": "bicubic",
            "background_color": [int(x * 255) for x in mean],
            "rescale_factor": float(ip.get("rescale_factor", 1 / 255)), "min_size": int(ip.get("min_size", 14)),
            "do_normalize": bool(ip.get("do_normalize", True))}


def _chat_template(path: str) -> str | None:
    jinja = os.path.join(path, "chat_template.jinja")
    if os.path.isfile(jinja):
        with open(jinja, encoding="utf-8") as fh:
            return fh.read()
    for name in ("chat_template.json", "processor_config.json", "tokenizer_config.json"):
        value = _opt_json(os.path.join(path, name)).get("chat_template")
        if isinstance(value, str):
            return value
    return None


def _weight_files(path: str) -> list[str]:
    """Weight files in load order: an index json's shards, else single files; raises if there are none."""
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        ipath = os.path.join(path, index)
        if os.path.isfile(ipath):
            wm = _read_json(ipath).get("weight_map")
            if not isinstance(wm, dict):
                raise CheckpointError(f"{ipath}: no weight_map")
            files = sorted(set(wm.values()))
            absent = [f for f in files if not os.path.isfile(os.path.join(path, f))]
            if absent:
                raise CheckpointError(f"{path}: shards named in {index} are missing: {', '.join(absent[:3])}")
            return [os.path.join(path, f) for f in files]
    files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    files = files or [f for f in (os.path.join(path, "pytorch_model.bin"),) if os.path.isfile(f)]
    if not files:
        raise CheckpointError(f"{path} has no weight files (*.safetensors or pytorch_model.bin)")
    return files


def _load_tensors(files: list[str]) -> dict:
    from safetensors.torch import load_file

    sd = {}
    for f in files:
        try:
            if f.endswith(".safetensors"):
                sd.update(load_file(f))
            else:
                part = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
                if not isinstance(part, dict):
                    raise CheckpointError(f"{f}: not a state dict of tensors")
                sd.update(part)
        except CheckpointError:
            raise
        except Exception as e:  # unpickling refusals, truncated files, ...
            raise CheckpointError(f"{f}: cannot read weights ({str(e).splitlines()[0][:200]})") from None
    return sd


def _missing_error(path: str, missing: list) -> CheckpointError:
    names = sorted(set(missing))
    return CheckpointError(f"{path}: checkpoint is missing {len(names)} tensors (e.g. {', '.join(names[:5])})")


def _empty_model(config, dtype):
    from transformers import JanusForConditionalGeneration
    from transformers.initialization import no_init_weights

    with no_init_weights():
        return JanusForConditionalGeneration._from_config(config, dtype=dtype, attn_implementation="eager")


def _original_config(path: str, token_ids: dict):
    from janus_edge.export.original_format import original_to_hf_config

    try:
        return original_to_hf_config(_read_json(os.path.join(path, "config.json")), token_ids)
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path}/config.json: bad original config ({e})") from None


def _hf_config(path: str):
    from transformers import JanusConfig

    try:
        return JanusConfig.from_pretrained(path, local_files_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}/config.json: bad Janus config ({str(e).splitlines()[0][:200]})") from None


def _load_original(path: str, dtype, token_ids: dict):
    from janus_edge.export.original_format import hf_key_to_original, original_to_hf_state_dict

    config = _original_config(path, token_ids)
    sd, unknown = original_to_hf_state_dict(_load_tensors(_weight_files(path)))
    model = _empty_model(config, dtype)
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    if missing:
        raise _missing_error(path, [hf_key_to_original(k) for k in missing])
    _check_shapes(path, {k: tuple(v.shape) for k, v in expected.items()}, {k: tuple(sd[k].shape) for k in expected},
                  names=hf_key_to_original)
    model.load_state_dict({k: sd[k] for k in expected}, strict=True)
    warnings = [f"ignored {len(unknown)} unknown tensors (e.g. {', '.join(unknown[:3])})"] if unknown else []
    return model, config, warnings


def _expected_shapes(config) -> dict:
    """Tensor name -> shape the model wants (built on the meta device: no memory, no init)."""
    from transformers import JanusForConditionalGeneration
    from transformers.initialization import no_init_weights

    with torch.device("meta"), no_init_weights():
        model = JanusForConditionalGeneration(config)
    tied = set(getattr(model, "all_tied_weights_keys", {}) or {})
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if k not in tied}


def _check_safetensors(path: str, files: list[str], config) -> None:
    """Missing tensors and wrong shapes, named, before transformers loads (it would only say 'mismatch')."""
    from safetensors import safe_open

    if not all(f.endswith(".safetensors") for f in files):
        return
    have = {}
    for f in files:
        with safe_open(f, framework="pt") as fh:
            have.update({k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()})
    want = _expected_shapes(config)
    missing = [k for k in want if k not in have]
    if missing:
        raise _missing_error(path, missing)
    _check_shapes(path, want, have)


def _check_shapes(path: str, want: dict, have: dict, names=lambda k: k) -> None:
    bad = [f"{names(k)} {have[k]} (expected {shape})" for k, shape in want.items() if tuple(have[k]) != shape]
    if bad:
        raise CheckpointError(f"{path}: {len(bad)} tensors have unexpected shapes: {'; '.join(bad[:3])}")


def _load_hf(path: str, dtype):
    from transformers import JanusForConditionalGeneration

    files = _weight_files(path)
    config = _hf_config(path)
    _check_safetensors(path, files, config)
    try:
        model, info = JanusForConditionalGeneration.from_pretrained(
            path, config=config, dtype=dtype, attn_implementation="eager", local_files_only=True,
            output_loading_info=True)
    except (RuntimeError, ValueError, OSError) as e:
        first = str(e).strip().splitlines()
        raise CheckpointError(f"{path}: cannot load weights ({(first[0] if first else type(e).__name__)[:300]})") \
            from None
    if info.get("missing_keys"):
        raise _missing_error(path, list(info["missing_keys"]))
    if info.get("mismatched_keys"):
        bad = [str(m[0] if isinstance(m, (tuple, list)) else m) for m in info["mismatched_keys"]]
        raise CheckpointError(f"{path}: {len(bad)} tensors have unexpected shapes: {', '.join(sorted(bad)[:3])}")
    return model, model.config, []


def load_checkpoint(path: str, dtype: str = "float32") -> LoadedCheckpoint:
    """Load an HF-format or original-format Janus checkpoint dir (offline); raises CheckpointError on bad input."""
    return _checkpoint(path, dtype, lazy=False)


def open_checkpoint(path: str, dtype: str = "float32") -> LoadedCheckpoint:
    """As `load_checkpoint`, but reading no weights: the model is built on the meta device and `weights` (a
    `stream.WeightSource`) reads each tensor from the files when asked. Names and shapes are checked here."""
    return _checkpoint(path, dtype, lazy=True)


def _open_hf(path: str, dtype):
    from .stream import hf_source

    config = _hf_config(path)
    source = hf_source(_weight_files(path))
    _check_against(path, config, source.shapes)
    with torch.device("meta"):
        model = _empty_model(config, dtype)
    return model, config, [], source


def _open_original(path: str, dtype, token_ids: dict):
    from .original_format import hf_key_to_original
    from .stream import original_source

    config = _original_config(path, token_ids)
    source, unknown = original_source(_weight_files(path))
    _check_against(path, config, source.shapes, names=hf_key_to_original)
    with torch.device("meta"):
        model = _empty_model(config, dtype)
    warnings = [f"ignored {len(unknown)} unknown tensors (e.g. {', '.join(unknown[:3])})"] if unknown else []
    return model, config, warnings, source


def _check_against(path: str, config, have: dict, names=lambda k: k) -> None:
    want = _expected_shapes(config)
    missing = [k for k in want if k not in have]
    if missing:
        raise _missing_error(path, [names(k) for k in missing])
    _check_shapes(path, want, have, names=names)


def _checkpoint(path: str, dtype: str, lazy: bool) -> LoadedCheckpoint:
    if dtype not in DTYPES:
        raise InputError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    path = os.path.abspath(path)
    fmt = detect_format(path)
    token_ids = read_special_tokens(path)
    source = None
    if fmt == "hf":
        if lazy:
            model, config, warnings, source = _open_hf(path, DTYPES[dtype])
        else:
            model, config, warnings = _load_hf(path, DTYPES[dtype])
        proc = _opt_json(os.path.join(path, "processor_config.json"))
        use_sys = bool(proc.get("use_default_system_prompt", False))
        if config.image_token_id != token_ids["image"]:
            raise CheckpointError(f"{path}: config image_token_id {config.image_token_id} differs from the "
                                  f"tokenizer's <image_placeholder> id {token_ids['image']}")
    else:
        if lazy:
            model, config, warnings, source = _open_original(path, DTYPES[dtype], token_ids)
        else:
            model, config, warnings = _load_original(path, DTYPES[dtype], token_ids)
        proc, use_sys = _opt_json(os.path.join(path, "processor_config.json")), True
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    model.eval()
    return LoadedCheckpoint(
        model=model, config=config, format=fmt, path=path, tokenizer_dir=path, special_tokens=token_ids,
        image_preprocess=read_image_preprocess(path, config.vision_config.image_size),
        use_default_system_prompt=use_sys,
        num_image_tokens=int(proc.get("num_image_tokens", config.vision_config.num_image_tokens)),
        chat_template=_chat_template(path), warnings=warnings, weights=source)
