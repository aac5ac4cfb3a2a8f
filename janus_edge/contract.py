"""The bundle contract: graph names, I/O names, dtypes, symbolic dims, manifest schema and checks.

Everything else (export, quant, runtime, benchmarks) reads these tables; this module imports nothing of the
project and nothing heavy (json, hashlib, dataclasses only), so a Jetson can import it with the runtime alone.

Dims are ints (fixed by the model) or names (dynamic, bound at run time):
    rows  - LM batch rows: 2n with classifier-free guidance (n conditional rows, then n unconditional), else n
    n     - images in a request
    seq   - new positions in this lm call (prompt length at prefill, 1 per decode step)
    past  - slots of the preallocated KV cache (its final length: prompt + image tokens / max new tokens)
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

FORMAT_NAME = "janus-edge-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"

GRAPHS = ("vision", "vq_encoder", "vq_decoder", "gen_embed", "lm", "lm_head", "gen_head")
FLOAT_DTYPES = ("float32", "float16")
# the KV cache may also be int8 (quantize --kv-dtype int8: static per-channel scales inside the lm graph, quant/kvcache.py)
CACHE_DTYPES = FLOAT_DTYPES + ("int8",)

# Name templates of the lm graph's per-layer cache tensors ({i}: layer index).
PAST_KEY, PAST_VALUE = "past_key.{i}", "past_value.{i}"
NEW_KEY, NEW_VALUE = "new_key.{i}", "new_value.{i}"


class ContractError(ValueError):
    """A bundle or manifest that does not meet the contract (the user's input, not a bug)."""


@dataclass(frozen=True)
class ModelDims:
    """The model numbers every graph's I/O depends on (read from the checkpoint config at export)."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    image_vocab_size: int
    num_image_tokens: int
    image_size: int
    max_position_embeddings: int

    @property
    def latent_side(self) -> int:
        side = int(round(self.num_image_tokens ** 0.5))
        if side * side != self.num_image_tokens:
            raise ContractError(f"num_image_tokens {self.num_image_tokens} is not a square")
        return side


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: float32, float16, int64
    dims: tuple  # ints (fixed) and strs (symbolic)

    def to_json(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "dims": list(self.dims)}

    @staticmethod
    def from_json(d: dict) -> "TensorSpec":
        return TensorSpec(d["name"], d["dtype"], tuple(d["dims"]))


@dataclass(frozen=True)
class GraphSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def input(self, name: str) -> TensorSpec:
        return next(t for t in self.inputs if t.name == name)

    def output(self, name: str) -> TensorSpec:
        return next(t for t in self.outputs if t.name == name)


def lm_cache_names(num_layers: int) -> tuple[list[str], list[str], list[str], list[str]]:
    """(past keys, past values, new keys, new values) names, layer order."""
    r = range(num_layers)
    return ([PAST_KEY.format(i=i) for i in r], [PAST_VALUE.format(i=i) for i in r],
            [NEW_KEY.format(i=i) for i in r], [NEW_VALUE.format(i=i) for i in r])


def graph_specs(d: ModelDims, dtype: str = "float32", cache_dtype: str | None = None) -> dict[str, GraphSpec]:
    """The I/O of every graph. `dtype` is the float type of activations; `cache_dtype` that of the lm graph's KV-cache
    inputs/outputs (default: `dtype`; a quantized bundle may store an fp16 cache for an fp32 graph)."""
    if dtype not in FLOAT_DTYPES or (cache_dtype or dtype) not in CACHE_DTYPES:
        raise ContractError(f"unsupported dtype {dtype!r}/{cache_dtype!r}; expected one of {FLOAT_DTYPES} (cache: "
                            f"{CACHE_DTYPES})")
    f, i64, c = dtype, "int64", cache_dtype or dtype
    H, px, T = d.hidden_size, d.image_size, d.num_image_tokens
    kv = (d.num_kv_heads, d.head_dim)
    pk, pv, nk, nv = lm_cache_names(d.num_layers)
    lm_in = [TensorSpec("inputs_embeds", f, ("rows", "seq", H)), TensorSpec("position_ids", i64, ("rows", "seq"))]
    lm_in += [TensorSpec(n, c, ("rows", kv[0], "past", kv[1])) for pair in zip(pk, pv) for n in pair]
    lm_out = [TensorSpec("hidden_states", f, ("rows", "seq", H))]
    lm_out += [TensorSpec(n, c, ("rows", kv[0], "seq", kv[1])) for pair in zip(nk, nv) for n in pair]
    specs = [
        GraphSpec("vision", (TensorSpec("pixel_values", f, ("n", 3, px, px)),),
                  (TensorSpec("image_embeds", f, ("n", T, H)),)),
        GraphSpec("vq_encoder", (TensorSpec("pixel_values", f, ("n", 3, px, px)),),
                  (TensorSpec("codes", i64, ("n", T)),)),
        GraphSpec("vq_decoder", (TensorSpec("codes", i64, ("n", T)),),
                  (TensorSpec("pixels", f, ("n", px, px, 3)),)),  # NHWC, in [-1, 1] (clip is the caller's)
        GraphSpec("gen_embed", (TensorSpec("codes", i64, ("rows", "seq")),),
                  (TensorSpec("embeds", f, ("rows", "seq", H)),)),
        GraphSpec("lm", tuple(lm_in), tuple(lm_out)),
        GraphSpec("lm_head", (TensorSpec("hidden", f, ("rows", H)),),
                  (TensorSpec("logits", f, ("rows", d.vocab_size)),)),
        # rows = 2n: first n conditional, last n unconditional; logits = u + w * (c - u) for each image.
        GraphSpec("gen_head", (TensorSpec("hidden", f, ("rows", H)), TensorSpec("cfg_weight", f, (1,))),
                  (TensorSpec("logits", f, ("n", d.image_vocab_size)),)),
    ]
    return {s.name: s for s in specs}


@dataclass
class GraphEntry:
    """One graph of a bundle as the manifest records it."""

    file: str
    inputs: list[dict]
    outputs: list[dict]
    precision: str  # float32 | float16 | int8 | fp8 | int4 ...
    quantization: dict | None = None  # scheme details for quantized graphs
    external_data: list[str] = field(default_factory=list)  # sidecar files of this graph
    weight_bytes: int = 0  # bytes of the graph's initializers: what one call must read (benchmark floors)
    target: str = "any"  # any | ort | trt: the backend(s) this graph file is for (lint-trt/build skip "ort")

    def spec(self, name: str) -> GraphSpec:
        return GraphSpec(name, tuple(TensorSpec.from_json(t) for t in self.inputs),
                         tuple(TensorSpec.from_json(t) for t in self.outputs))


@dataclass
class Manifest:
    """manifest.json: what the runtime needs to run a bundle, and how to check it is intact."""

    model: dict  # ModelDims fields + model_type / source info
    special_tokens: dict  # name -> id: bos, eos, pad, image, boi, eoi, user, assistant
    prompts: dict  # templates: t2i, chat, system prompt, stop strings
    image_preprocess: dict  # size, mean, std, resample, background
    graphs: dict[str, GraphEntry]
    text_embedding: dict  # {"kind": "table", "file": ..., "dtype": ..., "shape": [...]}
    tokenizer: dict  # {"file": "tokenizer.json"}
    files: dict[str, str]  # relative path -> sha256
    dtype: str = "float32"
    kv_cache_dtype: str | None = None  # dtype of the lm graph's KV-cache I/O when it differs from `dtype` (quantize)
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION
    producer: dict = field(default_factory=dict)

    @property
    def dims(self) -> ModelDims:
        return ModelDims(**{k: self.model[k] for k in ModelDims.__dataclass_fields__})

    def to_json(self) -> dict:
        d = asdict(self)
        d["graphs"] = {k: asdict(v) for k, v in self.graphs.items()}
        return d

    def save(self, bundle_dir: str) -> None:
        with open(os.path.join(bundle_dir, MANIFEST), "w") as fh:
            json.dump(self.to_json(), fh, indent=2, sort_keys=False)
            fh.write("\n")

    @staticmethod
    def from_json(d: dict) -> "Manifest":
        if not isinstance(d, dict):
            raise ContractError(f"not a janus-edge bundle manifest (a JSON {type(d).__name__}, not an object)")
        if d.get("format") != FORMAT_NAME:
            raise ContractError(f"not a janus-edge bundle manifest (format={d.get('format')!r})")
        if d.get("format_version") != FORMAT_VERSION:
            raise ContractError(f"bundle format version {d.get('format_version')} is not supported "
                                f"(this janus-edge reads version {FORMAT_VERSION}); re-export the bundle")
        try:
            graphs = {k: GraphEntry(**v) for k, v in d["graphs"].items()}
            fields = {k: d[k] for k in Manifest.__dataclass_fields__ if k in d and k != "graphs"}
            m = Manifest(graphs=graphs, **fields)
            m.dims  # noqa: B018  (raises on a missing model field)
        except (KeyError, TypeError) as e:
            raise ContractError(f"manifest is missing or has a malformed field: {e}") from None
        missing = [g for g in GRAPHS if g not in m.graphs]
        if missing:
            raise ContractError(f"manifest lacks graphs: {', '.join(missing)}")
        check_dtypes(m)
        return m


def check_dtypes(m: Manifest) -> None:
    """The manifest's dtype (and KV-cache dtype) is what every float tensor of its graphs' I/O declares: the runtime
    allocates its buffers from the former and the graphs take the latter."""
    cache = getattr(m, "kv_cache_dtype", None) or m.dtype
    for dt, ok in ((m.dtype, FLOAT_DTYPES), (cache, CACHE_DTYPES)):
        if dt not in ok:
            raise ContractError(f"manifest dtype {dt!r} is not one of {', '.join(ok)}")
    cache_names = {n for names in lm_cache_names(m.dims.num_layers) for n in names}
    for g, e in m.graphs.items():
        for t in (*e.inputs, *e.outputs):
            name, dt = (t.get("name"), t.get("dtype")) if isinstance(t, dict) else (None, None)
            want = cache if g == "lm" and name in cache_names else m.dtype
            if dt != want and dt != "int64":
                raise ContractError(f"manifest dtype is {want} but its graph {g} declares {name} as {dt}")


def load_manifest(bundle_dir: str) -> Manifest:
    path = os.path.join(bundle_dir, MANIFEST)
    if not os.path.isdir(bundle_dir):
        raise ContractError(f"bundle not found: {bundle_dir}")
    if not os.path.isfile(path):
        raise ContractError(f"no {MANIFEST} in {bundle_dir}: not a janus-edge bundle")
    try:
        with open(path) as fh:
            data = json.load(fh)
    except (OSError, ValueError) as e:  # ValueError: not JSON, or not UTF-8
        raise ContractError(f"cannot read {path}: {e}") from None
    m = Manifest.from_json(data)
    check_contained(bundle_dir, m)
    return m


def manifest_paths(m: Manifest) -> list[tuple[str, Any]]:
    """(what, path) of every file the manifest names: graph files and sidecars, the tables, the sha256 list."""
    out: list[tuple[str, Any]] = []
    for g, e in m.graphs.items():
        out += [(f"graph {g} file", e.file), *((f"graph {g} external data", x) for x in e.external_data)]
    for what, d in (("text_embedding", m.text_embedding), ("tokenizer", m.tokenizer)):
        if isinstance(d, dict) and "file" in d:
            out.append((f"{what} file", d["file"]))
    out += [("files entry", f) for f in m.files]
    return out


def inside(root: str, rel: Any) -> str | None:
    """Why `rel` is not a file path inside the directory `root` (None when it is): not a plain relative path,
    a `..` component, or a symlink (of it or of a directory on the way) resolving outside `root`."""
    if not isinstance(rel, str) or not rel or "\x00" in rel:
        return "not a file name"
    if os.path.isabs(rel) or rel.startswith(("/", "\\")) or os.path.splitdrive(rel)[0]:
        return "an absolute path"
    if ".." in rel.replace("\\", "/").split("/"):
        return "a '..' path"
    real_root = os.path.realpath(root)
    real = os.path.realpath(os.path.join(root, rel))
    if os.path.commonpath([real_root, real]) != real_root:
        return f"a symlink resolving to {real}"
    return None


def check_contained(bundle_dir: str, m: Manifest) -> None:
    """A bundle reads only files inside its own directory: refuse a manifest naming any other (before any is read)."""
    for what, rel in manifest_paths(m):
        why = inside(bundle_dir, rel)
        if why is not None:
            raise ContractError(f"bundle {bundle_dir}: manifest {what} {rel!r} is {why}, outside the bundle directory; "
                                "a bundle reads only files inside itself")


_LOCATION = b"\n\x08location\x12"  # ONNX StringStringEntryProto: key "location" (field 1), then the value (field 2)


def external_data_locations(path: str, chunk: int = 1 << 24) -> list[str]:
    """The external-data `location`s an .onnx file names, read from its protobuf bytes (no onnx import: the runtime
    may not have it). The key-value entry's wire form is fixed, so a byte search finds every one."""
    found: list[str] = []
    tail = b""
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk)
            buf, cut = tail + block, -1
            i = buf.find(_LOCATION)
            while i >= 0:
                j, n, shift = i + len(_LOCATION), 0, 0
                while j < len(buf) and shift < 35:  # the value's length, a varint
                    n, shift, j = n | (buf[j] & 0x7F) << shift, shift + 7, j + 1
                    if not buf[j - 1] & 0x80:
                        break
                if j + n >= len(buf) and block:  # the entry runs past this chunk: go on with the next one
                    cut = i
                    break
                found.append(buf[j:j + n].decode("utf-8", "replace"))
                i = buf.find(_LOCATION, j + n)
            if not block:
                return found
            tail = buf[cut:] if cut >= 0 else buf[-(len(_LOCATION) - 1):]


def check_external_data(bundle_dir: str, m: Manifest, graph: str) -> None:
    """Every external-data file a graph's .onnx names lies inside the bundle and is one the manifest lists for that
    graph (so its sha256 was checked); refused before the graph is opened."""
    e = m.graphs[graph]
    if not e.file.endswith(".onnx"):  # a TensorRT plan (engines dir) names no external data
        return
    for loc in dict.fromkeys(external_data_locations(os.path.join(bundle_dir, e.file))):
        why = inside(os.path.dirname(os.path.join(bundle_dir, e.file)), loc)
        if why is not None:
            raise ContractError(f"bundle {bundle_dir}: graph {graph} ({e.file}) names external data {loc!r}, {why}, "
                                "outside the bundle directory; a bundle reads only files inside itself")
        rel = os.path.normpath(os.path.join(os.path.dirname(e.file), loc)).replace(os.sep, "/")
        if rel not in e.external_data:
            raise ContractError(f"bundle {bundle_dir}: graph {graph} ({e.file}) names external data {loc!r}, which "
                                "its manifest entry does not list (so no sha256 covers it)")


def sha256_file(path: str, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            b = fh.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def check_files(bundle_dir: str, manifest: Manifest, names: list[str] | None = None) -> None:
    """Check sha256 of the given files (default: all recorded) against the manifest."""
    for rel in names if names is not None else list(manifest.files):
        want = manifest.files.get(rel)
        if want is None:
            raise ContractError(f"{rel} is not recorded in the manifest of {bundle_dir}")
        path = os.path.join(bundle_dir, rel)
        if not os.path.isfile(path):
            raise ContractError(f"bundle file missing: {path}")
        if sha256_file(path) != want:
            raise ContractError(f"bundle file altered or corrupt (sha256 mismatch): {path}")


def graph_files(manifest: Manifest, graph: str) -> list[str]:
    e = manifest.graphs[graph]
    return [e.file, *e.external_data]


def check_bindings(spec: GraphSpec, feeds: dict[str, Any]) -> None:
    """Check names, dtypes and fixed dims of arrays fed to a graph (numpy-like objects with .dtype/.shape)."""
    for t in spec.inputs:
        if t.name not in feeds:
            raise ContractError(f"{spec.name}: missing input {t.name}")
        a = feeds[t.name]
        if str(a.dtype) != t.dtype:
            raise ContractError(f"{spec.name}.{t.name}: dtype {a.dtype}, expected {t.dtype}")
        if len(a.shape) != len(t.dims) or any(isinstance(x, int) and x != y for x, y in zip(t.dims, a.shape)):
            raise ContractError(f"{spec.name}.{t.name}: shape {tuple(a.shape)}, expected {t.dims}")


# Prompt formats of the official Janus-Pro code (JANUS_FACTS.md), recorded in every manifest so that the runtime
# builds prompts from the bundle, not from its own constants.
DEFAULT_SYSTEM_PROMPT = ("You are a helpful language and vision assistant. You are able to understand the visual "
                         "content that the user provides, and assist the user with a variety of tasks using natural "
                         "language.")


def prompt_templates(use_system_prompt: bool = True) -> dict:
    return {
        "bos": True,  # BOS id is prepended to every prompt (ids, not text)
        # text-to-image: empty system prompt; the image-start token ends the prompt
        "t2i": "<|User|>: {prompt}\n\n<|Assistant|>:<begin_of_image>",
        # understanding: the whole string is stripped; {images} is chat_image once per image
        "chat": "{system}<|User|>: {images}{question}\n\n<|Assistant|>:",
        "chat_image": "<image_placeholder>\n",
        "system": (DEFAULT_SYSTEM_PROMPT + "\n\n") if use_system_prompt else "",
        "image_placeholder": "<image_placeholder>",  # expanded to boi + num_image_tokens x image + eoi
        "stop_strings": ["<|User|>"],
    }
