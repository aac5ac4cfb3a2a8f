"""Model shapes of the presets: `tiny` (for tests), `shapes` (trained here), `pro-1b`, `pro-7b` (the published shapes)."""
from __future__ import annotations

from dataclasses import dataclass

from transformers import JanusConfig, JanusVisionConfig, JanusVQVAEConfig, LlamaConfig

from janus_edge.export.tokenizer_build import TOKENIZER_SPECS, TokenizerSpec


@dataclass(frozen=True)
class Preset:
    """The numbers that differ between presets; everything else is the Janus-Pro architecture."""

    hidden: int
    layers: int
    heads: int
    intermediate: int
    max_positions: int
    vision: dict  # JanusVisionConfig overrides
    vq: dict  # JanusVQVAEConfig overrides
    kv_heads: int | None = None  # None: as many as heads (no GQA: every Janus-Pro shape)
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6


_TINY_VQ = dict(base_channels=32, channel_multiplier=[1, 1, 2, 2, 4], num_res_blocks=1, latent_channels=64,
                num_embeddings=512, embed_dim=8)

PRESETS = {
    "tiny": Preset(hidden=64, layers=2, heads=4, intermediate=128, max_positions=2048,
                   vision=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, image_size=128,
                               patch_size=16, num_image_tokens=64),
                   vq=_TINY_VQ),
    # shapes: the small Janus trained in this repo (export/shapes_train.py): 32 px images, 8x8 = 64 image tokens
    # of 4 x 4 pixels (VQ with 2 downsamplings), 512 codes; weights committed in export/shapes_weights/.
    "shapes": Preset(hidden=192, layers=4, heads=6, intermediate=512, max_positions=1024,
                     vision=dict(hidden_size=96, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                                 patch_size=4, num_image_tokens=64, mlp_ratio=2.0),
                     vq=dict(base_channels=32, channel_multiplier=[1, 2, 4], num_res_blocks=1,
                             latent_channels=64, num_embeddings=512, embed_dim=8, num_patches=8)),
    # Janus-Pro-1B: DeepSeek-LLM 1.5B-shaped Llama, SigLIP-L/16 at 384 px, VQ-16 (16384 x 8 codebook).
    "pro-1b": Preset(hidden=2048, layers=24, heads=16, intermediate=5632, max_positions=16384, vision={}, vq={}),
    "pro-7b": Preset(hidden=4096, layers=30, heads=32, intermediate=11008, max_positions=16384, vision={}, vq={}),
}


def make_config(preset: str) -> JanusConfig:
    """The JanusConfig of a preset (token ids from the preset's generated tokenizer)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
    return janus_config(PRESETS[preset], TOKENIZER_SPECS[preset])


def janus_config(p: Preset, spec: TokenizerSpec) -> JanusConfig:
    """The JanusConfig of shape `p` with the vocab size and special-token ids of `spec`."""
    ids = spec.ids
    text = LlamaConfig(
        vocab_size=spec.vocab_size, hidden_size=p.hidden, intermediate_size=p.intermediate,
        num_hidden_layers=p.layers, num_attention_heads=p.heads, num_key_value_heads=p.kv_heads or p.heads,
        max_position_embeddings=p.max_positions, rms_norm_eps=p.rms_norm_eps, rope_theta=p.rope_theta,
        hidden_act="silu",
        bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"], tie_word_embeddings=False,
    )
    vision = JanusVisionConfig(**{**p.vision, "projection_dim": p.hidden})
    vq = JanusVQVAEConfig(**{**p.vq, "projection_dim": p.hidden, "image_token_embed_dim": p.hidden})
    # The original model has a separate lm_head (LlamaForCausalLM, untied): keep it untied here too.
    return JanusConfig(text_config=text, vision_config=vision, vq_config=vq, image_token_id=ids["image"],
                       tie_word_embeddings=False)
