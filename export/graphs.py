"""The seven bundle graphs as torch modules over a transformers `JanusForConditionalGeneration`.

Each module reuses the reference model's own submodules; only `LMStep` re-states the attention, because the
bundle's cache contract differs from transformers' (see contract.py): the caller preallocates the KV cache at its
final length and passes it in; the graph returns only the K/V of the new positions, and the caller writes them in
place. Slot t of the cache holds position t; slots at or beyond a row's first new position are masked out, so the
same graph serves prefill (empty cache) and decode, with the cache at any length >= the filled prefix.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv


class LMStep(nn.Module):
    """inputs_embeds [rows, seq, H], position_ids [rows, seq], (past_key.i, past_value.i) [rows, kvh, past, D]
    -> hidden_states [rows, seq, H] (after the final norm), (new_key.i, new_value.i) [rows, kvh, seq, D]."""

    def __init__(self, language_model: nn.Module):
        super().__init__()
        self.lm = language_model
        cfg = language_model.config
        self.num_layers = cfg.num_hidden_layers
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.groups = cfg.num_attention_heads // cfg.num_key_value_heads

    def _bias(self, position_ids: torch.Tensor, past: int, dtype: torch.dtype) -> torch.Tensor:
        """Additive attention bias [rows, 1, seq, past + seq]: 0 where attended, dtype-min elsewhere."""
        q_pos = position_ids[:, :, None]  # [rows, seq, 1]
        slots = torch.arange(past, device=position_ids.device)[None, None, :]  # [1, 1, past]
        past_ok = (slots < position_ids[:, :1, None]) & (slots <= q_pos)  # [rows, seq, past]
        new_ok = position_ids[:, None, :] <= q_pos  # [rows, seq, seq]
        ok = torch.cat([past_ok, new_ok], dim=-1)[:, None]
        zero = torch.zeros((), dtype=dtype)
        return torch.where(ok, zero, torch.full((), torch.finfo(dtype).min, dtype=dtype))

    def _attend(self, attn: nn.Module, h, cos, sin, bias, pk, pv):
        rows, seq, _ = h.shape
        shape = (rows, seq, -1, self.head_dim)
        q = attn.q_proj(h).view(shape).transpose(1, 2)
        k = attn.k_proj(h).view(shape).transpose(1, 2)
        v = attn.v_proj(h).view(shape).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        # Scores against the cache and against the new keys, without concatenating K (no copy of the cache).
        pk_r, pv_r = repeat_kv(pk, self.groups), repeat_kv(pv, self.groups)
        k_r, v_r = repeat_kv(k, self.groups), repeat_kv(v, self.groups)
        scores = torch.cat([torch.matmul(q, pk_r.transpose(2, 3)), torch.matmul(q, k_r.transpose(2, 3))], dim=-1)
        scores = scores * attn.scaling + bias
        probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)  # as transformers' eager attention
        past = pk.shape[2]
        out = torch.matmul(probs[..., :past], pv_r) + torch.matmul(probs[..., past:], v_r)
        out = out.transpose(1, 2).reshape(rows, seq, -1)
        return attn.o_proj(out), k, v

    def forward(self, inputs_embeds: torch.Tensor, position_ids: torch.Tensor, *cache: torch.Tensor):
        x = inputs_embeds
        cos, sin = self.lm.rotary_emb(x, position_ids)
        bias = self._bias(position_ids, cache[0].shape[2], x.dtype)
        new = []
        for i, layer in enumerate(self.lm.layers[: self.num_layers]):
            a, k, v = self._attend(layer.self_attn, layer.input_layernorm(x), cos, sin, bias,
                                   cache[2 * i], cache[2 * i + 1])
            x = x + a
            x = x + layer.mlp(layer.post_attention_layernorm(x))
            new += [k, v]
        return (self.lm.norm(x), *new)


class Vision(nn.Module):
    """pixel_values [n, 3, px, px] -> image_embeds [n, T, H] (SigLIP + aligner)."""

    def __init__(self, model):
        super().__init__()
        self.vision, self.aligner = model.model.vision_model, model.model.aligner

    def forward(self, pixel_values):
        return self.aligner(self.vision(pixel_values).last_hidden_state)


class VQEncoder(nn.Module):
    """pixel_values [n, 3, px, px] -> codes [n, T] (int64)."""

    def __init__(self, model):
        super().__init__()
        self.vq = model.model.vqmodel

    def forward(self, pixel_values):
        h = self.vq.quant_conv(self.vq.encoder(pixel_values))
        _, _, idx = self.vq.quantize(h)
        return idx.view(pixel_values.shape[0], -1)


class VQDecoder(nn.Module):
    """codes [n, T] -> pixels [n, px, px, 3] in about [-1, 1] (NHWC, unclipped).
    As `JanusForConditionalGeneration.decode_image_tokens`, holding only the VQ model's weights."""

    def __init__(self, model):
        super().__init__()
        self.vq = model.model.vqmodel

    def forward(self, codes):
        return self.vq.decode(codes).permute(0, 2, 3, 1)


class GenEmbed(nn.Module):
    """codes [rows, seq] -> embeds [rows, seq, H].
    As `prepare_embeddings_for_image_generation` (gen_aligner(gen_embed(codes))), holding only those weights."""

    def __init__(self, model):
        super().__init__()
        self.embed, self.aligner = model.model.generation_embeddings, model.model.generation_aligner

    def forward(self, codes):
        return self.aligner(self.embed(codes))


class LMHead(nn.Module):
    """hidden [rows, H] -> logits [rows, vocab]."""

    def __init__(self, model):
        super().__init__()
        self.head = model.lm_head

    def forward(self, hidden):
        return self.head(hidden)


class GenHead(nn.Module):
    """hidden [2n, H] (n conditional rows, then n unconditional), cfg_weight [1] -> logits [n, image_vocab]."""

    def __init__(self, model):
        super().__init__()
        self.head = model.model.generation_head

    def forward(self, hidden, cfg_weight):
        logits = self.head(hidden)
        n = logits.shape[0] // 2
        cond, uncond = logits[:n], logits[n:]
        return uncond + cfg_weight.to(logits.dtype) * (cond - uncond)


MODULES = {"vision": Vision, "vq_encoder": VQEncoder, "vq_decoder": VQDecoder, "gen_embed": GenEmbed,
           "lm_head": LMHead, "gen_head": GenHead}


def build_module(name: str, model) -> nn.Module:
    if name == "lm":
        return LMStep(model.model.language_model).eval()
    return MODULES[name](model).eval()
