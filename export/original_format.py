"""The original deepseek-ai checkpoint format (`MultiModalityCausalLM`): config and tensor-name mapping, both ways.

Original layout (deepseek-ai/Janus, janus/models/modeling_vlm.py): a config.json with `language_config` (a Llama
config), `vision_config` / `aligner_config` / `gen_vision_config` / `gen_aligner_config` / `gen_head_config`
({cls, params}); tensors under vision_model.vision_tower (timm ViT: fused qkv, pos_embed [1, N, D]), aligner.layers,
gen_vision_model (VQ-16: conv_blocks, mid.0/1/2), gen_aligner.layers, gen_head, gen_embed, language_model.
The mapping follows transformers' convert_janus_weights_to_hf.py. Shapes the official code hard-codes (SigLIP-L
width, VQ-16 channels) are read from extra `params` keys when present, so small test models round-trip too.
"""
from __future__ import annotations

import json
import os
import re
import shutil

import torch

from janus_edge.export.checkpoint import TOKENIZER_FILES

SIGLIP = {"siglip_large_patch16_384": dict(image_size=384, patch_size=16, width=1024, layers=24, heads=16,
                                           mlp_ratio=4.0)}
VQ16 = dict(ch=128, ch_mult=[1, 1, 2, 2, 4], z_channels=256, num_res_blocks=2)
_ATTN_PARTS = ("q_proj", "k_proj", "v_proj")
_DROP = (re.compile(r"^vision_model\.vision_tower\.attn_pool\."), re.compile(r"\.quantize\.codebook_used$"),
         re.compile(r"\.rotary_emb\.inv_freq$"))
_VT, _HV = "vision_model.vision_tower.", "model.vision_model."

# (original regex, HF replacement), applied in order, first match wins; the HF->original direction is _TO_ORIG.
_TO_HF = [
    (r"^vision_model\.vision_tower\.patch_embed\.proj\.", _HV + "embeddings.patch_embedding."),
    (r"^vision_model\.vision_tower\.blocks\.(\d+)\.attn\.proj\.", _HV + r"encoder.layers.\1.self_attn.projection_layer."),
    (r"^vision_model\.vision_tower\.blocks\.(\d+)\.norm([12])\.", _HV + r"encoder.layers.\1.layer_norm\2."),
    (r"^vision_model\.vision_tower\.blocks\.(\d+)\.mlp\.", _HV + r"encoder.layers.\1.mlp."),
    (r"^vision_model\.vision_tower\.norm\.", _HV + "post_layernorm."),
    (r"^gen_vision_model\.encoder\.conv_blocks\.(\d+)\.res\.", r"model.vqmodel.encoder.down.\1.block."),
    (r"^gen_vision_model\.encoder\.conv_blocks\.", "model.vqmodel.encoder.down."),
    (r"^gen_vision_model\.decoder\.conv_blocks\.(\d+)\.res\.", r"model.vqmodel.decoder.up.\1.block."),
    (r"^gen_vision_model\.decoder\.conv_blocks\.", "model.vqmodel.decoder.up."),
    (r"^gen_vision_model\.(encoder|decoder)\.mid\.0\.", r"model.vqmodel.\1.mid.block_1."),
    (r"^gen_vision_model\.(encoder|decoder)\.mid\.1\.", r"model.vqmodel.\1.mid.attn_1."),
    (r"^gen_vision_model\.(encoder|decoder)\.mid\.2\.", r"model.vqmodel.\1.mid.block_2."),
    (r"^gen_vision_model\.", "model.vqmodel."),
    (r"^gen_head\.output_mlp_projector\.", "model.generation_head.proj_out."),
    (r"^gen_head\.vision_head\.", "model.generation_head.vision_head."),
    (r"^gen_embed\.", "model.generation_embeddings."),
    (r"^language_model\.model\.", "model.language_model."),
    (r"^language_model\.lm_head\.", "lm_head."),
]
_TO_ORIG = [
    (r"^model\.vision_model\.embeddings\.patch_embedding\.", _VT + "patch_embed.proj."),
    (r"^model\.vision_model\.encoder\.layers\.(\d+)\.self_attn\.projection_layer\.", _VT + r"blocks.\1.attn.proj."),
    (r"^model\.vision_model\.encoder\.layers\.(\d+)\.layer_norm([12])\.", _VT + r"blocks.\1.norm\2."),
    (r"^model\.vision_model\.encoder\.layers\.(\d+)\.mlp\.", _VT + r"blocks.\1.mlp."),
    (r"^model\.vision_model\.post_layernorm\.", _VT + "norm."),
    (r"^model\.vqmodel\.encoder\.down\.(\d+)\.block\.", r"gen_vision_model.encoder.conv_blocks.\1.res."),
    (r"^model\.vqmodel\.encoder\.down\.", "gen_vision_model.encoder.conv_blocks."),
    (r"^model\.vqmodel\.decoder\.up\.(\d+)\.block\.", r"gen_vision_model.decoder.conv_blocks.\1.res."),
    (r"^model\.vqmodel\.decoder\.up\.", "gen_vision_model.decoder.conv_blocks."),
    (r"^model\.vqmodel\.(encoder|decoder)\.mid\.block_1\.", r"gen_vision_model.\1.mid.0."),
    (r"^model\.vqmodel\.(encoder|decoder)\.mid\.attn_1\.", r"gen_vision_model.\1.mid.1."),
    (r"^model\.vqmodel\.(encoder|decoder)\.mid\.block_2\.", r"gen_vision_model.\1.mid.2."),
    (r"^model\.vqmodel\.", "gen_vision_model."),
    (r"^model\.generation_head\.proj_out\.", "gen_head.output_mlp_projector."),
    (r"^model\.generation_head\.vision_head\.", "gen_head.vision_head."),
    (r"^model\.generation_embeddings\.", "gen_embed."),
    (r"^model\.language_model\.", "language_model.model."),
    (r"^lm_head\.", "language_model.lm_head."),
]
_ALIGNERS = (("aligner", "model.aligner"), ("gen_aligner", "model.generation_aligner"))
_QKV = re.compile(r"^vision_model\.vision_tower\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)$")
_HF_QKV = re.compile(r"^model\.vision_model\.encoder\.layers\.(\d+)\.self_attn\.(q_proj|k_proj|v_proj)\.(weight|bias)$")


def _apply(rules: list, key: str) -> str | None:
    for pattern, repl in rules:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new
    return None


def _aligner_to_hf(key: str) -> str | None:
    for orig, hf in _ALIGNERS:
        m = re.match(rf"^{orig}\.layers\.(\d+)\.(.+)$", key)
        if m:
            i = int(m.group(1))
            return f"{hf}.fc1.{m.group(2)}" if i == 0 else f"{hf}.hidden_layers.{i // 2 - 1}.{m.group(2)}"
    return None


def _aligner_to_orig(key: str) -> str | None:
    for orig, hf in _ALIGNERS:
        m = re.match(rf"^{re.escape(hf)}\.(fc1|hidden_layers\.(\d+))\.(.+)$", key)
        if m:
            i = 0 if m.group(1) == "fc1" else 2 * (int(m.group(2)) + 1)
            return f"{orig}.layers.{i}.{m.group(3)}"
    return None


def original_to_hf_state_dict(sd: dict) -> tuple[dict, list]:
    """Original tensors -> HF names (qkv split, pos_embed squeezed); returns (hf_state_dict, unknown_keys)."""
    out, unknown = {}, []
    for key, t in sd.items():
        if any(p.search(key) for p in _DROP):
            continue
        qkv = _QKV.match(key)
        if qkv:
            for part, piece in zip(_ATTN_PARTS, torch.chunk(t, 3, dim=0)):
                out[f"{_HV}encoder.layers.{qkv.group(1)}.self_attn.{part}.{qkv.group(2)}"] = piece
        elif key == _VT + "pos_embed":
            out[_HV + "embeddings.position_embedding.weight"] = t.squeeze(0) if t.dim() == 3 else t
        elif (new := _aligner_to_hf(key) or _apply(_TO_HF, key)) is not None:
            out[new] = t
        else:
            unknown.append(key)
    return out, unknown


def hf_key_to_original(key: str) -> str:
    """The original name of one HF tensor (q/k/v -> their fused qkv), for error messages."""
    m = _HF_QKV.match(key)
    if m:
        return f"{_VT}blocks.{m.group(1)}.attn.qkv.{m.group(3)}"
    if key == _HV + "embeddings.position_embedding.weight":
        return _VT + "pos_embed"
    return _aligner_to_orig(key) or _apply(_TO_ORIG, key) or key


def hf_to_original_state_dict(sd: dict) -> dict:
    """HF tensors -> original names (q/k/v fused into qkv, pos_embed [1, N, D])."""
    out, qkv = {}, {}
    for key, t in sd.items():
        m = _HF_QKV.match(key)
        if m:
            qkv.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = t
        elif key == _HV + "embeddings.position_embedding.weight":
            out[_VT + "pos_embed"] = t.unsqueeze(0)
        elif (new := _aligner_to_orig(key) or _apply(_TO_ORIG, key)) is not None:
            out[new] = t
        else:
            raise KeyError(f"no original-format name for tensor {key}")
    for (layer, kind), parts in qkv.items():
        out[f"{_VT}blocks.{layer}.attn.qkv.{kind}"] = torch.cat([parts[p] for p in _ATTN_PARTS], dim=0)
    return out


def _params(cfg: dict, section: str) -> dict:
    sec = cfg.get(section)
    if not isinstance(sec, dict) or not isinstance(sec.get("params", {}), dict):
        raise ValueError(f"{section} is missing or not a {{cls, params}} object")
    return sec.get("params", {})


def _check_cls(cfg: dict, section: str, expected: str) -> None:
    cls = (cfg.get(section) or {}).get("cls", "")
    if expected not in str(cls):
        raise ValueError(f"{section}.cls is {cls!r}, expected {expected!r}")


def original_to_hf_config(cfg: dict, token_ids: dict):
    """An original config.json dict -> transformers JanusConfig. Raises ValueError naming the offending field."""
    from transformers import JanusConfig, JanusVisionConfig, JanusVQVAEConfig, LlamaConfig

    for section, cls in (("vision_config", "CLIPVisionTower"), ("aligner_config", "MlpProjector"),
                         ("gen_vision_config", "VQ"), ("gen_aligner_config", "MlpProjector"),
                         ("gen_head_config", "vision_head")):
        _check_cls(cfg, section, cls)
    lang = cfg.get("language_config")
    if not isinstance(lang, dict):
        raise ValueError("language_config is missing")
    vp, ap = _params(cfg, "vision_config"), _params(cfg, "aligner_config")
    gvp, gap, ghp = (_params(cfg, s) for s in ("gen_vision_config", "gen_aligner_config", "gen_head_config"))
    for name, p in (("aligner_config", ap), ("gen_aligner_config", gap)):
        if p.get("projector_type", "mlp_gelu") != "mlp_gelu":
            raise ValueError(f"{name}.params.projector_type {p.get('projector_type')!r} is not supported")
    if ghp["image_token_embed"] != gap["n_embed"]:
        raise ValueError("gen_head image_token_embed differs from gen_aligner n_embed (unsupported by the HF port)")
    sig = {**SIGLIP.get(vp.get("model_name", "siglip_large_patch16_384"), {}), **vp}
    missing = [k for k in ("width", "layers", "heads", "patch_size") if k not in sig]
    if missing:
        raise ValueError(f"unknown vision model {vp.get('model_name')!r} and no {', '.join(missing)} in its params")
    sel = int(vp.get("select_layer", -1))
    layers = min(sig["layers"], sig["layers"] + sel + 1) if sel <= 0 else min(sig["layers"], sel)
    image_size = int(vp.get("image_size", sig.get("image_size", 384)))
    vq = {**VQ16, **gvp}
    text = LlamaConfig(
        vocab_size=lang["vocab_size"], hidden_size=lang["hidden_size"], intermediate_size=lang["intermediate_size"],
        num_hidden_layers=lang["num_hidden_layers"], num_attention_heads=lang["num_attention_heads"],
        num_key_value_heads=lang.get("num_key_value_heads", lang["num_attention_heads"]),
        hidden_act=lang.get("hidden_act", "silu"), max_position_embeddings=lang.get("max_position_embeddings", 4096),
        rms_norm_eps=lang.get("rms_norm_eps", 1e-6), rope_theta=lang.get("rope_theta", 10000.0),
        bos_token_id=token_ids.get("bos"), eos_token_id=token_ids.get("eos"), pad_token_id=token_ids.get("pad"),
        tie_word_embeddings=False)
    vision = JanusVisionConfig(
        hidden_size=sig["width"], num_hidden_layers=layers, num_attention_heads=sig["heads"],
        image_size=image_size, patch_size=sig["patch_size"], mlp_ratio=float(sig.get("mlp_ratio", 4.0)),
        projection_dim=ap["n_embed"], depth=ap.get("depth", 1),
        num_image_tokens=(image_size // sig["patch_size"]) ** 2)
    vq_config = JanusVQVAEConfig(
        embed_dim=gvp["n_embed"], num_embeddings=gvp["image_token_size"], base_channels=vq["ch"],
        channel_multiplier=list(vq["ch_mult"]), num_res_blocks=vq["num_res_blocks"], latent_channels=vq["z_channels"],
        projection_dim=gap["n_embed"], num_hidden_layers=gap.get("depth", 1), image_token_embed_dim=ghp["n_embed"])
    return JanusConfig(text_config=text, vision_config=vision, vq_config=vq_config,
                       image_token_id=token_ids.get("image") or 100581, tie_word_embeddings=False)


def hf_to_original_config(config) -> dict:
    """JanusConfig -> an original config.json dict (published layout; extra params only where shapes differ)."""
    t, v, q = config.text_config, config.vision_config, config.vq_config
    vision = {"image_size": v.image_size, "model_name": "siglip_large_patch16_384", "select_feature": "same",
              "select_layer": -1}
    mine = dict(patch_size=v.patch_size, width=v.hidden_size, layers=v.num_hidden_layers,
                heads=v.num_attention_heads, mlp_ratio=float(v.mlp_ratio))
    if any(mine[k] != SIGLIP["siglip_large_patch16_384"][k] for k in mine):
        vision.update(model_name="siglip_custom", **mine)
    gen_vision = {"image_token_size": q.num_embeddings, "n_embed": q.embed_dim}
    vq = dict(ch=q.base_channels, ch_mult=list(q.channel_multiplier), z_channels=q.latent_channels,
              num_res_blocks=q.num_res_blocks)
    if vq != VQ16:
        gen_vision.update(vq)
    lang = {"hidden_size": t.hidden_size, "intermediate_size": t.intermediate_size,
            "max_position_embeddings": t.max_position_embeddings, "model_type": "llama",
            "num_attention_heads": t.num_attention_heads, "num_hidden_layers": t.num_hidden_layers,
            "num_key_value_heads": t.num_key_value_heads, "torch_dtype": "bfloat16", "vocab_size": t.vocab_size}
    if t.rms_norm_eps != 1e-6:
        lang["rms_norm_eps"] = t.rms_norm_eps
    theta = (getattr(t, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
    if theta != 10000.0:
        lang["rope_theta"] = theta
    mlp = {"projector_type": "mlp_gelu"}
    return {
        "aligner_config": {"cls": "MlpProjector", "model_type": "aligner",
                           "params": {**mlp, "depth": v.depth, "input_dim": v.hidden_size, "n_embed": v.projection_dim}},
        "architectures": ["MultiModalityCausalLM"],
        "gen_aligner_config": {"cls": "MlpProjector", "model_type": "gen_aligner",
                               "params": {**mlp, "depth": q.num_hidden_layers, "input_dim": q.embed_dim,
                                          "n_embed": q.projection_dim}},
        "gen_head_config": {"cls": "vision_head", "model_type": "gen_head",
                            "params": {"image_token_embed": q.projection_dim, "image_token_size": q.num_embeddings,
                                       "n_embed": q.image_token_embed_dim}},
        "gen_vision_config": {"cls": "VQ-16", "model_type": "gen_vision", "params": gen_vision},
        "language_config": lang, "model_type": "multi_modality", "torch_dtype": "bfloat16",
        "transformers_version": "4.33.1",
        "vision_config": {"cls": "CLIPVisionTower", "model_type": "vision", "params": vision},
    }


def _processor_files(hf_dir: str, config) -> dict:
    """preprocessor_config.json / processor_config.json in the official VLChatProcessor layout."""
    from janus_edge.export.checkpoint import read_image_preprocess

    pre = read_image_preprocess(hf_dir, config.vision_config.image_size)
    return {
        "preprocessor_config.json": {
            "background_color": list(pre["background_color"]), "do_normalize": True,
            "image_mean": pre["image_mean"], "image_std": pre["image_std"], "image_size": pre["size"],
            "min_size": 14, "rescale_factor": pre["rescale_factor"],
            "image_processor_type": "VLMImageProcessor", "processor_class": "VLChatProcessor"},
        "processor_config.json": {
            "add_special_token": False, "ignore_id": -100, "image_tag": "<image_placeholder>", "mask_prompt": True,
            "num_image_tokens": config.vision_config.num_image_tokens, "processor_class": "VLChatProcessor",
            "sft_format": "deepseek"},
    }


def _fake_attn_pool(sd: dict, width: int) -> None:
    """A few tensors of the unused SigLIP attention-pool head, as the published original checkpoints carry."""
    sd[_VT + "attn_pool.latent"] = torch.zeros(1, 1, width)
    sd[_VT + "attn_pool.q.weight"] = torch.zeros(width, width)
    sd[_VT + "attn_pool.kv.weight"] = torch.zeros(2 * width, width)


def write_original(hf_ckpt_dir: str, out: str, weights: str = "bin", shards: int = 1) -> str:
    """Write the original deepseek-ai format of an HF-format checkpoint (a test and interop helper).

    weights: "bin" (torch.save of a plain state dict) or "safetensors"; shards > 1 writes an index json too.
    """
    from transformers import JanusConfig
    from safetensors.torch import load_file, save_file

    if weights not in ("bin", "safetensors"):
        raise ValueError(f"weights must be 'bin' or 'safetensors', not {weights!r}")
    config = JanusConfig.from_pretrained(hf_ckpt_dir)
    sd = {}
    for f in sorted(os.listdir(hf_ckpt_dir)):
        if f.endswith(".safetensors"):
            sd.update(load_file(os.path.join(hf_ckpt_dir, f)))
    if "lm_head.weight" not in sd:  # tied checkpoints store the embedding only
        sd["lm_head.weight"] = sd["model.language_model.embed_tokens.weight"]
    orig = hf_to_original_state_dict(sd)
    _fake_attn_pool(orig, config.vision_config.hidden_size)
    orig["gen_vision_model.quantize.codebook_used"] = torch.zeros(65536)
    os.makedirs(out, exist_ok=True)
    _save_shards(orig, out, weights, shards, save_file)
    files = {"config.json": hf_to_original_config(config), **_processor_files(hf_ckpt_dir, config)}
    for name, obj in files.items():
        with open(os.path.join(out, name), "w") as fh:
            json.dump(obj, fh, indent=2)
    for name in TOKENIZER_FILES:
        if os.path.exists(os.path.join(hf_ckpt_dir, name)):
            shutil.copy(os.path.join(hf_ckpt_dir, name), os.path.join(out, name))
    return out


def _save_shards(sd: dict, out: str, weights: str, shards: int, save_file) -> None:
    keys = sorted(sd)
    ext = "bin" if weights == "bin" else "safetensors"
    base = "pytorch_model" if weights == "bin" else "model"
    groups = [keys[i::shards] for i in range(shards)]
    weight_map = {}
    for i, group in enumerate(groups):
        name = f"{base}.{ext}" if shards == 1 else f"{base}-{i + 1:05d}-of-{shards:05d}.{ext}"
        part = {k: sd[k].contiguous().clone() for k in group}
        if weights == "bin":
            torch.save(part, os.path.join(out, name))
        else:
            save_file(part, os.path.join(out, name), metadata={"format": "pt"})
        weight_map.update({k: name for k in group})
    if shards > 1:
        with open(os.path.join(out, f"{base}.{ext}.index.json"), "w") as fh:
            json.dump({"metadata": {}, "weight_map": weight_map}, fh, indent=2)
