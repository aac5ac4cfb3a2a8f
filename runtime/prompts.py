"""Prompt ids from the bundle's templates and special tokens (the official Janus-Pro formats)."""
from __future__ import annotations

import numpy as np

from janus_edge.errors import InputError


def encode(bundle, text: str) -> list[int]:
    ids = bundle.tokenizer.encode(text, add_special_tokens=False).ids
    return ([bundle.tokens["bos"]] if bundle.manifest.prompts.get("bos", True) else []) + ids


def check_text(bundle, text, what: str) -> None:
    """The user's text: non-empty, valid UTF-8, and free of the image placeholder token.

    Text is tokenized as transformers' JanusProcessor tokenizes it: special-token strings typed into it
    (`<begin_of_image>`, `<|User|>`, ...) become those tokens. The one refused, as JanusProcessor refuses it, is the
    image placeholder: its positions carry image features, so images go in `images=[...]` / `--image`."""
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"{what} must be a non-empty string")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:  # e.g. undecodable bytes on the command line (surrogate escapes)
        raise InputError(f"{what} is not valid UTF-8 text (character {e.start})") from None
    if bundle.tokens["image"] in bundle.tokenizer.encode(text, add_special_tokens=False).ids:
        placeholder = bundle.manifest.prompts.get("image_placeholder", "<image_placeholder>")
        raise InputError(f"{what} holds the image placeholder {placeholder}: give images with --image "
                         f"(images=[...]), not in the text")


def t2i_ids(bundle, prompt: str) -> list[int]:
    """BOS + "<|User|>: {prompt}\\n\\n<|Assistant|>:<begin_of_image>"."""
    check_text(bundle, prompt, "prompt")
    # stripped as the published chat template strips a text part (transformers' JanusProcessor builds the same ids)
    return encode(bundle, bundle.manifest.prompts["t2i"].format(prompt=prompt.strip()))


def uncond_ids(ids: list[int], tokens: dict) -> list[int]:
    """The unconditional CFG row: every token except BOS and <begin_of_image> replaced by the pad id."""
    keep = {tokens["bos"], tokens["boi"]}
    return [t if t in keep else tokens["pad"] for t in ids]


def chat_ids(bundle, question: str, n_images: int) -> list[int]:
    """Official understanding prompt, stripped, BOS prepended, each <image_placeholder> expanded to
    <begin_of_image> + num_image_tokens x <image_placeholder> + <end_of_image>."""
    check_text(bundle, question, "question")
    p = bundle.manifest.prompts
    # the published chat template strips a text part at the ends of the turn: both ends without an image before it
    q = question.rstrip() if n_images else question.strip()
    text = p["chat"].format(system=p["system"], images=p["chat_image"] * n_images, question=q).strip()
    return expand_images(encode(bundle, text), bundle.tokens, bundle.dims.num_image_tokens, n_images)


def expand_images(ids: list[int], tokens: dict, num_image_tokens: int, n_images: int) -> list[int]:
    img = tokens["image"]
    out: list[int] = []
    found = 0
    for t in ids:
        if t == img:
            out += [tokens["boi"]] + [img] * num_image_tokens + [tokens["eoi"]]
            found += 1
        else:
            out.append(t)
    if found != n_images:
        raise InputError(f"the question's text holds {found - n_images} extra image placeholder(s); "
                         f"pass images with images=[...] instead of typing the placeholder")
    return out


def check_ids(ids, vocab_size: int) -> np.ndarray:
    a = np.asarray(ids)
    if a.ndim != 1 or a.size == 0 or not np.issubdtype(a.dtype, np.integer):
        raise InputError("input_ids must be a non-empty 1-D list of ints")
    if a.min() < 0 or a.max() >= vocab_size:
        raise InputError(f"input_ids out of range [0, {vocab_size})")
    return a.astype(np.int64)
