"""The `shapes` checkpoint: the small Janus trained in this repo (export/shapes_train.py) that draws and reads simple
scenes (janus_edge/shapes/scenes.py). Its trained weights are package data (shapes_weights/model.safetensors, fp16);
`init_shapes` writes the full HF-format checkpoint (config, fp32 weights, tokenizer, processor) from them.

The processor has no default system prompt (`use_default_system_prompt=False`): the model was trained on the
bare chat template, so the runtime builds exactly the prompts it was trained on (see shapes_train.prompt ids).
"""
from __future__ import annotations

import os
import sys
import time

import torch

from janus_edge.errors import CheckpointError
from janus_edge.export.staging import staged_dir

PRESET_NAME = "shapes"
WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "shapes_weights")
WEIGHTS_FILE = os.path.join(WEIGHTS_DIR, "model.safetensors")


def _log(msg: str) -> None:
    print(f"[init shapes] {msg}", file=sys.stderr, flush=True)


def new_model(seed: int = 0):
    """The shapes preset's JanusForConditionalGeneration with transformers' (seeded) random init, fp32."""
    from transformers import JanusForConditionalGeneration

    from janus_edge.export.presets import make_config

    torch.manual_seed(seed)
    return JanusForConditionalGeneration(make_config(PRESET_NAME)).to(torch.float32)


def make_processor():
    from janus_edge.export.init_random import make_processor as preset_processor

    processor = preset_processor(PRESET_NAME)
    processor.use_default_system_prompt = False
    return processor


def save_checkpoint(model, out_dir: str) -> None:
    """Write `model` (fp32) with the shapes config, generation config, tokenizer and processor into `out_dir`."""
    from janus_edge.export.init_random import make_generation_config

    model.config.architectures = ["JanusForConditionalGeneration"]
    model.generation_config = make_generation_config(PRESET_NAME)
    model.save_pretrained(out_dir, safe_serialization=True)
    processor = make_processor()
    processor.save_pretrained(out_dir)
    processor.image_processor.to_json_file(os.path.join(out_dir, "preprocessor_config.json"))


def load_trained(path: str = WEIGHTS_FILE):
    """The shapes model with the committed (fp16) weights, in fp32, eval mode."""
    from safetensors.torch import load_file

    if not os.path.isfile(path):
        raise CheckpointError(f"the shapes weights are missing: {path} (train them with `janus-edge train-shapes`)")
    model = new_model()
    state = {k: v.to(torch.float32) for k, v in load_file(path).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in set(getattr(model, "all_tied_weights_keys", {}) or {})]
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not fit the shapes preset (missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]})")
    return model.eval()


def save_weights_fp16(model, path: str) -> None:
    """The package-data form of a trained model: every floating tensor in fp16, one safetensors file."""
    from safetensors.torch import save_file

    state = {k: (v.detach().to(torch.float16) if v.is_floating_point() else v.detach()).contiguous()
             for k, v in model.state_dict().items()}
    save_file(state, path, metadata={"format": "pt", "preset": PRESET_NAME})


def init_shapes(out: str, force: bool = False, weights: str = WEIGHTS_FILE) -> str:
    """Write the trained shapes checkpoint (HF format, fp32) to `out` (staged beside it, then renamed)."""
    out = os.path.abspath(out)
    with staged_dir(out, force, CheckpointError) as tmp:
        t0 = time.time()
        model = load_trained(weights)
        _log(f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters from {weights}")
        save_checkpoint(model, tmp)
    _log(f"written to {out} in {time.time() - t0:.1f} s")
    return out


__all__ = ["init_shapes", "load_trained", "save_checkpoint", "save_weights_fp16", "new_model", "WEIGHTS_FILE"]
