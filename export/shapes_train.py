"""Train the `shapes` Janus on this machine's CPU: `janus-edge train-shapes --out DIR --seed 0`.

Stage 1, the VQ (transformers' JanusVQVAE): pixel reconstruction of freshly drawn scenes (training triples only),
Adam; the code book and the encoder's latents are L2-normalised before the nearest-code search (LlamaGen's VQ, as
the published Janus VQ does), and the code book is stored normalised, so transformers' `quantize` (plain L2 search)
and `decode` (which normalises) give the same codes and pictures as training did.
Stage 2, everything else (the VQ frozen), both directions in every step:
- generation: `<bos><|User|>: {caption}\\n\\n<|Assistant|>:<begin_of_image>` then the scene's 64 VQ codes, cross
  entropy of `generation_head` on each next code; 10% of the prompts are replaced by the unconditional row (every
  token but BOS and <begin_of_image> -> pad, as the runtime's CFG row), so CFG works;
- understanding: `<bos><|User|>: <begin_of_image>{64 x image}<end_of_image>\\n{question}\\n\\n<|Assistant|>:`
  then ` {answer}<eos>`, cross entropy of `lm_head` on the answer and EOS.
The prompts come from the bundle contract's templates (the ones the runtime formats), without a system prompt (the
shapes processor has none); tests/test_shapes.py checks that they are the runtime's ids.

Writes DIR: the HF checkpoint (fp32), `shapes_fp16.safetensors` (the package-data form), `train_log.tsv`.
Same seed, same step counts and thread count: the same weights (a --minutes cap ends stages by the clock instead).
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from janus_edge import contract as C
from janus_edge.shapes import scenes as S


@dataclass
class TrainConfig:
    out: str
    seed: int = 0
    vq_steps: int = 1500
    lm_steps: int = 2000
    vq_batch: int = 16
    lm_batch: int = 24  # generation rows; as many understanding rows again
    vq_lr: float = 2e-3
    lm_lr: float = 1e-3
    n_images: int = 6144  # the stage-2 data set: scenes drawn once, VQ-encoded once
    uncond_p: float = 0.1
    init_from: str | None = None  # a shapes checkpoint (dir) to continue from instead of the random init
    restart_every: int = 20  # VQ: codes unused in this many steps restart at a latent of the current batch
    minutes: float | None = None  # wall-clock cap of the whole run, split vq_share VQ / the rest LM
    vq_share: float = 0.3
    threads: int = 1  # one thread: reproducible, and on a shared 2-core machine faster than two
    progress: bool = True
    force: bool = False


class Log:
    """train_log.tsv: stage, step, seconds, loss and its parts."""

    def __init__(self, path: str):
        self.fh = open(path, "w")
        self.fh.write("stage\tstep\tseconds\tloss\tpart_a\tpart_b\tlr\n")
        self.t0 = time.time()

    def note(self, text: str) -> None:
        """A line for the person watching (stderr) and the log (as a `# ` comment row)."""
        print(f"[train-shapes] {text}", file=sys.stderr, flush=True)
        self.fh.write(f"# {text}\n")
        self.fh.flush()

    def row(self, stage: str, step: int, loss: float, a: float, b: float, lr: float) -> None:
        self.fh.write(f"{stage}\t{step}\t{time.time() - self.t0:.1f}\t{loss:.5f}\t{a:.5f}\t{b:.5f}\t{lr:.6f}\n")
        self.fh.flush()


def to_pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 [n, H, W, 3] -> [n, 3, H, W] in [-1, 1] (the processor's rescale 1/255, mean = std = 0.5)."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _schedule(step: int, steps: int, t0: float, budget_s: float | None, lr: float, warmup: int) -> float:
    """Linear warm-up, then cosine to 10%; progress is the larger of steps done and time used (with a cap)."""
    done = step / steps
    if budget_s:
        done = max(done, (time.time() - t0) / budget_s)
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(done, 1.0))))


def _step_lr(opt, step: int, steps: int, t0: float, budget_s: float | None, lr: float, warmup_cap: int) -> bool:
    """Set this step's learning rate (`_schedule`, warm-up min(warmup_cap, steps / 10)) on every group; False when the
    time budget is spent (the stage ends)."""
    if budget_s and time.time() - t0 > budget_s:
        return False
    now = _schedule(step, steps, t0, budget_s, lr, min(warmup_cap, max(1, steps // 10)))
    for g in opt.param_groups:
        g["lr"] = now
    return True


def _bar(total: int, desc: str, on: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=not on, file=sys.stderr, dynamic_ncols=True, mininterval=2)


# ---- stage 1: VQ -------------------------------------------------------------------------------------------------
BLANK_CODE = 0  # the one code of every token whose pixels are all background


def blank_tokens(pixels: torch.Tensor, grid: int) -> torch.Tensor:
    """[b * grid * grid] bool: the tokens whose patch of `pixels` ([b, 3, H, W] in [-1, 1]) is all white."""
    b, _, hgt, wid = pixels.shape
    white = (pixels >= 0.99).all(1).view(b, grid, hgt // grid, grid, wid // grid)
    return white.all(4).all(2).reshape(-1)


def vq_codes(vq, pixels: torch.Tensor, blank: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(normalised latents [b*h*w, c], normalised code book, codes [b*h*w]): the nearest code by cosine, and (with
    `blank`) BLANK_CODE on every all-white token. Without that, the encoder's global view (its attention block)
    spread each picture's content over all 64 codes (~50 distinct codes a picture, 438 codes for white patches), which
    the LM then had to predict; pinned, the white ~89% of a picture is one code and the shape's few tokens carry it."""
    h = F.normalize(vq.quant_conv(vq.encoder(pixels)), dim=1)
    flat = h.permute(0, 2, 3, 1).reshape(-1, h.shape[1])
    book = F.normalize(vq.quantize.embedding.weight, dim=1)
    idx = (flat @ book.t()).argmax(1)
    if blank:
        idx = torch.where(blank_tokens(pixels, h.shape[-1]), torch.full_like(idx, BLANK_CODE), idx)
    return flat, book, idx


def vq_forward(vq, pixels: torch.Tensor, blank: bool = True):
    """(reconstruction, codebook loss, codes) with L2-normalised latents and code book; the commitment term pulls
    the latents of all-white tokens to BLANK_CODE, so the plain nearest-code search (transformers') picks it too."""
    flat, book, idx = vq_codes(vq, pixels, blank)
    b, c = pixels.shape[0], flat.shape[1]
    hh = ww = int(round((flat.shape[0] // b) ** 0.5))
    q = book[idx]
    loss = F.mse_loss(q, flat.detach()) + 0.25 * F.mse_loss(flat, q.detach())
    q = flat + (q - flat).detach()
    q = q.view(b, hh, ww, c).permute(0, 3, 1, 2)
    return vq.decoder(vq.post_quant_conv(q)), loss, idx.view(b, -1)


def _restart_dead_codes(vq, x: torch.Tensor, used: torch.Tensor, rng: np.random.Generator) -> None:
    """Codes no latent picked lately move to latents of the batch (the usual cure of a collapsing code book)."""
    dead = torch.nonzero(~used).flatten()
    if len(dead) == 0:
        return
    with torch.no_grad():
        flat = vq_codes(vq, x)[0]
        pick = torch.from_numpy(rng.integers(0, len(flat), len(dead)))
        vq.quantize.embedding.weight[dead] = flat[pick] + 0.01 * torch.randn(len(dead), flat.shape[1])


def train_vq(vq, cfg: TrainConfig, log: Log, budget_s: float | None) -> None:
    rng = np.random.default_rng(cfg.seed + 1)
    opt = torch.optim.Adam(vq.parameters(), lr=cfg.vq_lr, betas=(0.9, 0.99))
    used = torch.zeros(vq.quantize.embedding.weight.shape[0], dtype=torch.bool)
    vq.to(memory_format=torch.channels_last)  # ~30% faster convolutions on the CPU (measured), same maths
    vq.train()
    t0 = time.time()
    with _bar(cfg.vq_steps, "VQ", cfg.progress) as bar:
        for step in range(cfg.vq_steps):
            if not _step_lr(opt, step, cfg.vq_steps, t0, budget_s, cfg.vq_lr, 20):
                break
            batch = S.sample_scenes(cfg.vq_batch, int(rng.integers(1 << 31)))
            x = to_pixels(S.scene_images(batch, int(rng.integers(1 << 31)))).contiguous(
                memory_format=torch.channels_last)
            rec, cb, idx = vq_forward(vq, x)
            used[idx.unique()] = True
            # the shape's pixels and a pixel around it count 5x: both sides of every edge alike (weighting only the
            # shape's own pixels rewards painting past its edges, which made rounded blobs of every shape)
            weight = 1.0 + 4.0 * F.max_pool2d((x < 0.99).any(1, keepdim=True).float(), 3, 1, 1)
            rloss = (weight * ((rec - x) ** 2 + (rec - x).abs())).mean()
            loss = rloss + cb
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if cfg.restart_every and (step + 1) % cfg.restart_every == 0:
                _restart_dead_codes(vq, x, used, rng)
                used[:] = False
            log.row("vq", step, loss.item(), rloss.item(), cb.item(), opt.param_groups[0]["lr"])
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    vq.eval().to(memory_format=torch.contiguous_format)
    with torch.no_grad():  # stored normalised: transformers' plain L2 search then picks the same codes
        vq.quantize.embedding.weight.copy_(F.normalize(vq.quantize.embedding.weight, dim=1))
    rate, plain = reconstruction_rate(vq)
    log.note(f"VQ reconstructions of 216 drawn scenes (all 108 triples): ShapeEval {100 * rate:.1f}% fully right; "
             f"the plain nearest-code search picks the blank code on {100 * plain:.1f}% of all-white tokens")


def reconstruction_rate(vq, seed: int = 123) -> tuple[float, float]:
    """(ShapeEval's rate on the VQ's reconstructions of drawn scenes, 2 of each triple: what the decoder draws from
    the codes the LM learns; the share of all-white tokens the plain nearest-code search maps to BLANK_CODE)."""
    from janus_edge.shapes.shapeeval import image_correct

    scenes = [S.Scene(*t) for t in S.all_triples()] * 2
    x = to_pixels(S.scene_images(scenes, seed))
    with torch.no_grad():
        rec = vq_forward(vq, x)[0]
        _, _, plain = vq_codes(vq, x, blank=False)
    pics = ((rec.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    blank = blank_tokens(x, int(round((plain.numel() // len(scenes)) ** 0.5)))
    return (float(np.mean([image_correct(p, s)["all"] for p, s in zip(pics, scenes)])),
            float((plain[blank] == BLANK_CODE).float().mean()))


# ---- stage 2: the LM, generation + understanding -----------------------------------------------------------------
class Prompts:
    """Prompt ids exactly as the runtime builds them from the bundle contract's templates (no system prompt)."""

    def __init__(self, tokenizer, ids: dict, num_image_tokens: int):
        self.tok, self.ids, self.T = tokenizer, ids, num_image_tokens
        self.t = C.prompt_templates(False)

    def _enc(self, text: str) -> list[int]:
        return [self.ids["bos"]] + self.tok.encode(text, add_special_tokens=False).ids

    def t2i(self, caption: str) -> list[int]:
        return self._enc(self.t["t2i"].format(prompt=caption.strip()))

    def uncond(self, ids: list[int]) -> list[int]:
        keep = {self.ids["bos"], self.ids["boi"]}
        return [i if i in keep else self.ids["pad"] for i in ids]

    def chat(self, question: str) -> list[int]:
        text = self.t["chat"].format(system=self.t["system"], images=self.t["chat_image"],
                                     question=question.rstrip()).strip()
        out = []
        for i in self._enc(text):
            out += ([self.ids["boi"]] + [self.ids["image"]] * self.T + [self.ids["eoi"]]
                    if i == self.ids["image"] else [i])
        return out

    def answer(self, word: str) -> list[int]:
        """The assistant turn after `<|Assistant|>:` as the chat template writes it: ' {answer}' then EOS."""
        return self.tok.encode(" " + word, add_special_tokens=False).ids + [self.ids["eos"]]


@dataclass
class Data:
    images: np.ndarray  # uint8 [n, S.SIZE, S.SIZE, 3]
    codes: torch.Tensor  # [n, T]
    scenes: list


def make_data(vq, cfg: TrainConfig) -> Data:
    scenes = S.sample_scenes(cfg.n_images, cfg.seed + 2)
    images = S.scene_images(scenes, cfg.seed + 3)
    codes = []
    with torch.no_grad():
        for i in range(0, len(scenes), 256):
            codes.append(vq_codes(vq, to_pixels(images[i:i + 256]))[2].view(len(images[i:i + 256]), -1))
    return Data(images, torch.cat(codes), scenes)


def _pad(rows: list[list[int]], value: int) -> torch.Tensor:
    n = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (n - len(r)) for r in rows])


def make_batch(data: Data, P: Prompts, idx_gen: np.ndarray, idx_und: np.ndarray, rng: np.random.Generator,
               uncond_p: float = 0.1):
    """Rows 0..g-1 generation, then understanding; right-padded (causal attention: padding after a row's end
    never reaches its real positions)."""
    T = P.T
    text, code, is_code, gen_tgt, txt_tgt = [], [], [], [], []
    for i in idx_gen:
        ids = P.t2i(data.scenes[i].caption)
        if rng.random() < uncond_p:
            ids = P.uncond(ids)
        c = data.codes[i].tolist()
        text.append(ids + [0] * T)
        code.append([0] * len(ids) + c)
        is_code.append([0] * len(ids) + [1] * T)
        gen_tgt.append([-100] * (len(ids) - 1) + c + [-100])
        txt_tgt.append([-100] * (len(ids) + T))
    attrs = list(S.QUESTIONS)
    for i in idx_und:
        attr = attrs[int(rng.integers(3))]
        q, a = P.chat(S.QUESTIONS[attr]), P.answer(data.scenes[i].answer(attr))
        text.append(q + a)
        code.append([0] * (len(q) + len(a)))
        is_code.append([0] * (len(q) + len(a)))
        gen_tgt.append([-100] * (len(q) + len(a)))
        txt_tgt.append([-100] * (len(q) - 1) + a + [-100])
    pixels = to_pixels(data.images[idx_und])
    return (_pad(text, 0), _pad(code, 0), _pad(is_code, 0).bool(), _pad(gen_tgt, -100), _pad(txt_tgt, -100), pixels)


def lm_loss(model, batch, image_id: int):
    text, code, is_code, gen_tgt, txt_tgt, pixels = batch
    m = model.model
    emb = m.get_input_embeddings()(text)
    emb = torch.where(is_code[..., None], m.generation_aligner(m.generation_embeddings(code)), emb)
    feats = m.get_image_features(pixels).pooler_output
    img_mask = text == image_id
    emb = emb.masked_scatter(img_mask[..., None], feats.to(emb.dtype))
    h = m.language_model(inputs_embeds=emb, use_cache=False).last_hidden_state
    gsel, tsel = gen_tgt != -100, txt_tgt != -100
    gen = F.cross_entropy(m.generation_head(h[gsel]), gen_tgt[gsel])
    und = F.cross_entropy(model.lm_head(h[tsel]), txt_tgt[tsel])
    return gen + und, gen, und


def train_lm(model, data: Data, P: Prompts, cfg: TrainConfig, log: Log, budget_s: float | None) -> None:
    params = [p for n, p in model.named_parameters() if not n.startswith("model.vqmodel.")]
    for p in model.model.vqmodel.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(params, lr=cfg.lm_lr, betas=(0.9, 0.98), weight_decay=0.01)
    rng = np.random.default_rng(cfg.seed + 4)
    model.train()
    model.model.vqmodel.eval()
    t0 = time.time()
    n = len(data.scenes)
    with _bar(cfg.lm_steps, "LM", cfg.progress) as bar:
        for step in range(cfg.lm_steps):
            if not _step_lr(opt, step, cfg.lm_steps, t0, budget_s, cfg.lm_lr, 50):
                break
            batch = make_batch(data, P, rng.integers(0, n, cfg.lm_batch), rng.integers(0, n, cfg.lm_batch), rng,
                               cfg.uncond_p)
            loss, gen, und = lm_loss(model, batch, P.ids["image"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            log.row("lm", step, loss.item(), gen.item(), und.item(), opt.param_groups[0]["lr"])
            bar.update(1)
            bar.set_postfix(gen=f"{gen.item():.3f}", chat=f"{und.item():.3f}", refresh=False)
    model.eval()


def train_shapes(cfg: TrainConfig) -> str:
    """Train the shapes model; writes the checkpoint, shapes_fp16.safetensors and train_log.tsv to cfg.out."""
    from janus_edge.errors import InputError
    from janus_edge.export.shapes_model import new_model, save_checkpoint, save_weights_fp16
    from janus_edge.export.staging import staged_dir
    from janus_edge.export.tokenizer_build import TOKENIZER_SPECS, build_tokenizer

    for name in ("vq_steps", "lm_steps", "vq_batch", "lm_batch", "n_images", "threads"):
        if getattr(cfg, name) < (0 if name == "vq_steps" and cfg.init_from else 1):
            raise InputError(f"{name.replace('_', '-')} must be >= 1 (--vq-steps 0: only with --init-from)")
    if cfg.minutes is not None and cfg.minutes <= 0:
        raise InputError("--minutes must be > 0")
    torch.set_num_threads(cfg.threads)
    out = os.path.abspath(cfg.out)
    with staged_dir(out, cfg.force, InputError) as tmp:
        t0 = time.time()
        log = Log(os.path.join(tmp, "train_log.tsv"))
        model = new_model(cfg.seed)
        if cfg.init_from:
            from transformers import JanusForConditionalGeneration

            model.load_state_dict(JanusForConditionalGeneration.from_pretrained(cfg.init_from).state_dict())
        budget = cfg.minutes * 60 if cfg.minutes else None
        if cfg.vq_steps:  # 0 (continuing a checkpoint): the VQ stays as it is
            train_vq(model.model.vqmodel, cfg, log, budget and cfg.vq_share * budget)
        data = make_data(model.model.vqmodel, cfg)
        spec = TOKENIZER_SPECS["shapes"]
        P = Prompts(build_tokenizer("shapes"), spec.ids, model.config.vision_config.num_image_tokens)
        train_lm(model, data, P, cfg, log, budget and max(budget - (time.time() - t0), 1.0))
        log.fh.close()
        save_checkpoint(model, tmp)
        save_weights_fp16(model, os.path.join(tmp, "shapes_fp16.safetensors"))
        print(f"[train-shapes] trained in {(time.time() - t0) / 60:.1f} min", file=sys.stderr, flush=True)
    return out


__all__ = ["TrainConfig", "train_shapes", "Prompts", "vq_forward"]
