"""Write a complete HF-format Janus checkpoint with random (seeded) weights, loadable by transformers offline."""
from __future__ import annotations

import os
import sys
import time

import torch
from transformers import GenerationConfig, JanusForConditionalGeneration, JanusProcessor

from janus_edge.errors import CheckpointError
from janus_edge.export.presets import PRESETS, make_config
from janus_edge.export.staging import staged_dir
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
    torch.manual_seed(seed)
    model = JanusForConditionalGeneration(make_config(preset)).to(torch.float32).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not torch.isfinite(p).all():
                raise RuntimeError(f"random init produced non-finite values in {name}")
    return model


def init_random(preset: str, out: str, seed: int = 0, force: bool = False) -> str:
    """Write a random-weight HF-format checkpoint of `preset` to `out`; returns `out`.

    Files: config.json, generation_config.json, model*.safetensors, tokenizer.json + tokenizer_config.json,
    processor/preprocessor config with the chat template. Written to a temp dir beside `out`, then moved.
    """
    if preset not in PRESETS:
        raise CheckpointError(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
    out = os.path.abspath(out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with staged_dir(out, force, CheckpointError) as tmp:
        t0 = time.time()
        _log(f"building {preset} with random weights (seed {seed})")
        model = _build_model(preset, seed)
        n = sum(p.numel() for p in model.parameters())
        _log(f"{n / 1e6:.1f}M parameters built in {time.time() - t0:.1f} s; writing safetensors to {out}")
        model.generation_config = make_generation_config(preset)
        model.save_pretrained(tmp, safe_serialization=True, max_shard_size="2GB")
        del model
        processor = make_processor(preset)
        processor.save_pretrained(tmp)
        # transformers 5 keeps the image processor inside processor_config.json; older readers look here.
        processor.image_processor.to_json_file(os.path.join(tmp, "preprocessor_config.json"))
    _log(f"done in {time.time() - t0:.1f} s")
    return out


__all__ = ["init_random", "make_processor", "make_generation_config", "CHAT_TEMPLATE", "BOS", "BOI", "IMAGE"]
