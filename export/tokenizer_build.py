"""A real byte-level BPE tokenizer with the Janus special tokens at fixed ids (for random checkpoints).

The BPE part is trained on a small built-in English corpus; the ids up to the preset's vocab size that the
BPE does not use are filled with inert entries (no merge ever produces them), so that the special tokens sit
at the ids of the published Janus tokenizer (pro-1b / pro-7b) or at small ids (tiny).
"""
from __future__ import annotations

from dataclasses import dataclass

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
PAD = "<｜▁pad▁｜>"
USER = "<|User|>"
ASSISTANT = "<|Assistant|>"
IMAGE = "<image_placeholder>"
BOI = "<begin_of_image>"
EOI = "<end_of_image>"

# name -> token text; the keys are the names used in LoadedCheckpoint.special_tokens and the bundle manifest.
SPECIAL_TEXT = {"bos": BOS, "eos": EOS, "pad": PAD, "image": IMAGE, "boi": BOI, "eoi": EOI,
                "user": USER, "assistant": ASSISTANT}

# Published Janus(-Pro) ids: BOS 100000 and EOS 100001 (DeepSeek LLM), pad 100015 (the official
# generation code fills the unconditional row with 100015), <image_placeholder> 100581 (transformers'
# JanusConfig default), <begin_of_image> 100016 and <end_of_image> 100593 (as in the published tokenizer).
# <|User|> / <|Assistant|>: ids not confirmed from a published file; 100588 / 100589 are our choice.
PRO_IDS = {"bos": 100000, "eos": 100001, "pad": 100015, "boi": 100016, "image": 100581, "eoi": 100593,
           "user": 100588, "assistant": 100589}
TINY_IDS = {"bos": 1000, "eos": 1001, "pad": 1002, "boi": 1003, "image": 1004, "eoi": 1005,
            "user": 1006, "assistant": 1007}


@dataclass(frozen=True)
class TokenizerSpec:
    """Vocab size, the BPE part's size and the special-token ids of one preset."""

    vocab_size: int
    bpe_size: int
    ids: dict


TOKENIZER_SPECS = {
    "tiny": TokenizerSpec(vocab_size=1024, bpe_size=900, ids=TINY_IDS),
    "pro-1b": TokenizerSpec(vocab_size=102400, bpe_size=1000, ids=PRO_IDS),
    "pro-7b": TokenizerSpec(vocab_size=102400, bpe_size=1000, ids=PRO_IDS),
    "shapes": TokenizerSpec(vocab_size=1024, bpe_size=900, ids=TINY_IDS),
}

_CORPUS = """
The quick brown fox jumps over the lazy dog. A red fox runs through the snow at dawn, and the white hills
shine under a pale winter sun. Describe this picture in detail. What is in this image? The image shows a
small cat sitting on a wooden table next to a cup of coffee and an open book. There are two people walking
along the beach at sunset; the sky is orange and purple, and the waves are calm. A portrait of a young girl,
masterpiece, film grained, best quality. A photo of a mountain lake with tall pine trees and a small boat.
Draw a green route line from the left side to the right side of the map. The city at night is full of
lights, cars and people. An astronaut rides a horse on the moon. A bowl of fresh fruit: apples, oranges,
bananas and grapes. The old man reads a newspaper in the park while birds sing in the trees. How many dogs
are in the picture? There are three dogs playing with a ball on the green grass. The building is made of
glass and steel, and it reflects the clouds. She wears a blue dress and holds a yellow umbrella in the rain.
Please answer the question about the image. The chart shows the number of visitors per month; the highest
value is in July and the lowest is in February. Read the text on the sign: it says open every day from nine
to five. A cozy living room with a fireplace, a soft sofa, warm lamps and a sleeping dog. The train crosses
a long bridge over a deep river valley. Generate an image of a futuristic city with flying cars and tall
towers. A close-up of a flower with a bee collecting pollen, sharp focus, high resolution. The children are
building a sandcastle while their parents watch from under a striped umbrella. This is a simple sentence.
You are a helpful language and vision assistant. You are able to understand the visual content that the
user provides, and assist the user with a variety of tasks using natural language. Thank you! Yes, no,
maybe. It is 12:30 and the temperature is 21 degrees; numbers like 0 1 2 3 4 5 6 7 8 9 10 100 1000 appear.
Bonjour, hola, hallo, ciao: greetings in other languages. A watercolor painting of a lighthouse on a rocky
coast, with seagulls flying above the foamy sea. The robot picks up the red block and places it on the blue
one. Explain why the sky is blue in one short paragraph. Because sunlight is scattered by the air.
"""


def _shapes_corpus() -> str:
    """The shapes grammar (every caption and question, many times) before the general corpus, so that each word of
    the grammar is one token."""
    from janus_edge.shapes.scenes import QUESTIONS, all_triples, caption

    lines = [caption(*t) for t in all_triples()] + list(QUESTIONS.values())
    answers = " ".join(w for t in all_triples() for w in t)
    return "\n".join(lines * 4 + [answers] * 4) + "\n" + _CORPUS


def _train_bpe(bpe_size: int, corpus: str = _CORPUS) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=bpe_size, min_frequency=1, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    lines = [line for line in corpus.strip().splitlines() if line.strip()]
    tok.train_from_iterator(lines * 4, trainer=trainer)
    return tok


def _full_vocab(trained: dict, spec: TokenizerSpec) -> dict:
    """Trained BPE ids, then the special tokens at their ids, then inert filler entries for every other id."""
    if len(trained) > min(spec.ids.values()):
        raise ValueError(f"BPE vocab of {len(trained)} overlaps the special-token ids")
    by_id = {i: t for t, i in trained.items()}
    for name, idx in spec.ids.items():
        by_id[idx] = SPECIAL_TEXT[name]
    return {by_id.get(i, f"<|unused_{i}|>"): i for i in range(spec.vocab_size)}


def build_tokenizer(preset: str) -> Tokenizer:
    """The `tokenizers` Tokenizer of a preset: byte-level BPE, Janus special tokens, BOS prepended."""
    spec = TOKENIZER_SPECS[preset]
    trained = _train_bpe(spec.bpe_size, _shapes_corpus() if preset == "shapes" else _CORPUS)
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in _merges(trained)]
    tok = Tokenizer(models.BPE(vocab=_full_vocab(trained.get_vocab(), spec), merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return add_special_tokens(tok, spec)


def add_special_tokens(tok: Tokenizer, spec: TokenizerSpec, texts: dict | None = None) -> Tokenizer:
    """Add the Janus special tokens (`texts` overrides SPECIAL_TEXT) in id order and prepend BOS to every
    encoding; checks that each lands at its id in `spec`. Texts already in the vocab keep their id."""
    texts = {**SPECIAL_TEXT, **(texts or {})}
    order = sorted(spec.ids, key=spec.ids.get)
    tok.add_special_tokens([AddedToken(texts[n], special=True, normalized=False) for n in order])
    bos = texts["bos"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, spec.ids["bos"])])
    for name, idx in spec.ids.items():
        got = tok.token_to_id(texts[name])
        if got != idx:
            raise RuntimeError(f"special token {name} landed at id {got}, expected {idx}")
    return tok


def _merges(tok: Tokenizer) -> list:
    import json

    return json.loads(tok.to_str())["model"]["merges"]


def build_hf_tokenizer(preset: str):
    """The transformers fast tokenizer over `build_tokenizer(preset)`, with what JanusProcessor reads."""
    return hf_tokenizer(build_tokenizer(preset), TOKENIZER_SPECS[preset], 2048 if preset in ("tiny", "shapes") else 16384)


def hf_tokenizer(tok: Tokenizer, spec: TokenizerSpec, model_max_length: int, texts: dict | None = None):
    """`tok` as a transformers fast tokenizer with the BOS/EOS/pad texts (`texts` overrides SPECIAL_TEXT) and the
    image tokens JanusProcessor reads; checks that every special token sits at its id in `spec`."""
    from transformers import PreTrainedTokenizerFast

    texts = {**SPECIAL_TEXT, **(texts or {})}
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=texts["bos"], eos_token=texts["eos"], pad_token=texts["pad"],
        add_bos_token=True, add_eos_token=False, padding_side="left", model_max_length=model_max_length,
        extra_special_tokens={"image_token": IMAGE, "boi_token": BOI, "eoi_token": EOI},
    )
    moved = [n for n, i in spec.ids.items() if hf.convert_tokens_to_ids(texts[n]) != i]
    if moved:
        raise RuntimeError(f"transformers moved the special tokens {', '.join(moved)}")
    return hf
