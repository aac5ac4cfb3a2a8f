"""Engines directories (what `janus-edge build` writes and the `trt` backend loads): profiles, engines.json, checks.

Pure logic (json, the contract): no tensorrt, no CUDA. The builder (export/trt_build.py) and the backend
(runtime/trt_backend.py) share it, so what is built and what is checked at load are one definition.

An engines directory holds:
    manifest.json     the source bundle's manifest, each graph's file replaced by NAME.plan (sha256s of these)
    NAME.plan         one serialized TensorRT engine per graph (graphs marked target "ort" are not built)
    engines.json      TensorRT version, device name and compute capability, profiles, limits, source bundle hash
    tokenizer/text-embedding files copied from the bundle (the runtime needs them, not the ONNX graphs)
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass

from janus_edge import contract as C
from janus_edge.errors import BackendUnavailable, BundleError, InputError

ENGINES_JSON = "engines.json"
FORMAT_NAME = "janus-edge-engines"
FORMAT_VERSION = 1
MIN_TRT = (10, 3)  # JetPack 6.1/6.2; JetPack 6.0 ships 8.6
TESTED_TRT_MAJORS = (10,)  # TensorRT 11 (pip's default since 2026) is refused until tested
FP8_MIN_CC = (8, 9)  # Ada, Hopper, Thor; Orin is 8.7
PLAN_SUFFIX = ".plan"


@dataclass(frozen=True)
class Limits:
    """What a set of engines is built for: the request shapes their optimization profiles cover."""

    max_images: int  # n per request; lm/gen_head/gen_embed rows up to 2n (CFG)
    max_prompt_len: int  # prompt tokens incl. image placeholder tokens (prefill seq)
    max_new_tokens: int  # chat answer tokens
    max_cache_len: int  # KV-cache slots ("past"): max_prompt_len + max(image tokens, max_new_tokens)

    @property
    def max_rows(self) -> int:
        return 2 * self.max_images


def plan_limits(dims: C.ModelDims, max_images: int = 4, max_prompt_len: int | None = None,
                max_new_tokens: int = 512) -> Limits:
    """Check the user's limits against the model; the default prompt length fits one chat image + 512 tokens."""
    for name, v in (("--max-images", max_images), ("--max-new-tokens", max_new_tokens)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise InputError(f"{name} must be an integer >= 1, got {v!r}")
    new = max(dims.num_image_tokens, max_new_tokens)
    ctx = dims.max_position_embeddings
    if max_prompt_len is None:
        max_prompt_len = max(1, min(dims.num_image_tokens + 512, ctx - new))
    if isinstance(max_prompt_len, bool) or not isinstance(max_prompt_len, int) or max_prompt_len < 1:
        raise InputError(f"--max-prompt-len must be an integer >= 1, got {max_prompt_len!r}")
    if max_prompt_len + new > ctx:
        raise InputError(f"--max-prompt-len {max_prompt_len} + {new} new tokens exceeds the model context ({ctx})")
    return Limits(max_images, max_prompt_len, max_new_tokens, max_prompt_len + new)


def dim_ranges(limits: Limits, dims: C.ModelDims, step: bool) -> dict[str, tuple[int, int, int]]:
    """(min, opt, max) of each symbolic dim. `step`: the single-token decode profile (seq = 1)."""
    opt_prompt = min(limits.max_prompt_len, 64)
    return {
        "n": (1, 1, limits.max_images),
        "rows": (1, 2 if limits.max_rows >= 2 else 1, limits.max_rows),
        "seq": (1, 1, 1) if step else (1, opt_prompt, limits.max_prompt_len),
        # the cache is allocated once at its final length: opt = a t2i request's (prompt + image tokens)
        "past": (1, min(limits.max_cache_len, opt_prompt + dims.num_image_tokens), limits.max_cache_len),
    }


def _shape(t: C.TensorSpec, ranges: dict, k: int) -> list[int]:
    return [d if isinstance(d, int) else ranges[d][k] for d in t.dims]


def profiles_for(graph: str, spec: C.GraphSpec, limits: Limits, dims: C.ModelDims) -> list[dict]:
    """The optimization profiles of one graph: [{"name", "shapes": {input: [min, opt, max]}}].

    lm: profile 0 "prefill" (seq 1..max_prompt_len), profile 1 "step" (seq 1) against a cache of its final length;
    gen_embed runs only in the step (seq 1); gen_head always gets 2n rows; the rest one profile over n / rows."""
    kinds = [("prefill", False), ("step", True)] if graph == "lm" else [("step" if graph == "gen_embed" else "all",
                                                                         graph == "gen_embed")]
    out = []
    for name, step in kinds:
        r = dim_ranges(limits, dims, step)
        if graph == "gen_head":
            r["rows"] = (2, 2, limits.max_rows)
        out.append({"name": name, "shapes": {t.name: [_shape(t, r, 0), _shape(t, r, 1), _shape(t, r, 2)]
                                             for t in spec.inputs}})
    return out


def select_profile(profiles: list[dict], shapes: dict[str, tuple]) -> int:
    """Index of the narrowest profile covering every input shape (lm: a one-token call gets the step profile, with
    its own execution context); InputError naming the limit otherwise."""
    fits = [i for i, p in enumerate(profiles)
            if all(all(lo <= s <= hi for s, lo, hi in zip(shapes[n], mn, mx))
                   for n, (mn, _, mx) in p["shapes"].items() if n in shapes)]
    if fits:
        return min(fits, key=lambda i: sum(hi - lo for mn, _, mx in profiles[i]["shapes"].values()
                                           for lo, hi in zip(mn, mx)))
    bad = next(f"{n} {list(shapes[n])} outside [{mn}, {mx}]" for p in profiles[-1:] for n, (mn, _, mx)
               in p["shapes"].items() if n in shapes and not all(lo <= s <= hi for s, lo, hi in
                                                                  zip(shapes[n], mn, mx)))
    raise InputError(f"request exceeds what the engines were built for ({bad}); rebuild with larger "
                     f"--max-images / --max-prompt-len / --max-new-tokens")


# ---- versions, devices, precisions --------------------------------------------------------------------------------
def parse_version(v: str) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", str(v))
    if not m:
        raise ValueError(f"unparseable version {v!r}")
    return int(m.group(1)), int(m.group(2))


def check_trt_version(v: str) -> None:
    """TensorRT 10.3 <= v < 11: the tested major. TensorRT 11 (what `pip install tensorrt` gives now, CUDA 13) drops
    Orin on JetPack 6 and the weakly typed API; it is refused until it is tested, with the pin that avoids it."""
    if parse_version(v) < MIN_TRT:
        hint = " (JetPack 6.0 ships 8.6: upgrade to JetPack 6.1 or later)" if parse_version(v)[0] == 8 else ""
        raise BackendUnavailable(f"TensorRT {v} is too old: janus-edge needs TensorRT >= "
                                 f"{MIN_TRT[0]}.{MIN_TRT[1]}{hint}")
    if parse_version(v)[0] not in TESTED_TRT_MAJORS:
        raise BackendUnavailable(f"TensorRT {v} is untested: janus-edge supports TensorRT "
                                 f"{MIN_TRT[0]}.{MIN_TRT[1]} to <{max(TESTED_TRT_MAJORS) + 1}; install "
                                 f"'janus-edge[trt-cu12]' (tensorrt-cu12>=10.3,<11) or 'janus-edge[trt-cu13]'")


def graph_precision(entry: C.GraphEntry) -> str:
    return entry.precision or "float32"


def check_precisions(manifest: C.Manifest, cc: tuple[int, int], device: str = "this GPU") -> None:
    """Refuse what this GPU cannot run: FP8 graphs below compute capability 8.9."""
    fp8 = [g for g, e in manifest.graphs.items() if e.target != "ort" and graph_precision(e) == "fp8"]
    if fp8 and tuple(cc) < FP8_MIN_CC:
        raise InputError(f"graphs {', '.join(fp8)} are FP8, which needs compute capability >= 8.9 (Ada, Hopper, "
                         f"Thor); {device} is {cc[0]}.{cc[1]}: quantize with --mode int8 or int4 for it")


def buildable_graphs(manifest: C.Manifest) -> tuple[list[str], list[str]]:
    """(graphs to build, graphs skipped as ORT-only variants)."""
    build, skip = [], []
    for g, e in manifest.graphs.items():
        (skip if getattr(e, "target", "any") == "ort" else build).append(g)
    return build, skip


# ---- engines.json ---------------------------------------------------------------------------------------------------
def engines_meta(*, trt_version: str, device: dict, bundle_path: str, bundle_sha256: str, limits: Limits,
                 engines: dict, skipped: list[str], extra: dict | None = None) -> dict:
    return {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "tensorrt": trt_version, "device": device,
            "bundle": {"path": os.path.abspath(bundle_path), "sha256": bundle_sha256}, "limits": asdict(limits),
            "engines": engines, "skipped_graphs": skipped, **({"build": extra} if extra else {})}


def read_meta(path: str) -> dict:
    """engines.json of an engines dir; BundleError for a plain bundle or a broken file."""
    f = os.path.join(path, ENGINES_JSON)
    if not os.path.isfile(f):
        if os.path.isfile(os.path.join(path, C.MANIFEST)):
            raise BundleError(f"{path} is a bundle, not TensorRT engines: run `janus-edge build {path} --out "
                              f"ENGINES` on this device and pass ENGINES")
        raise BundleError(f"engines not found: {path} (no {ENGINES_JSON})")
    try:
        with open(f) as fh:
            meta = json.load(fh)
    except (OSError, json.JSONDecodeError) as e:
        raise BundleError(f"cannot read {f}: {e}") from None
    if meta.get("format") != FORMAT_NAME or meta.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{f} is not a janus-edge engines file of version {FORMAT_VERSION}; rebuild the engines")
    for k in ("tensorrt", "device", "limits", "engines"):
        if k not in meta:
            raise BundleError(f"{f} lacks {k!r}; rebuild the engines")
    return meta


def meta_limits(meta: dict) -> Limits:
    return Limits(**{k: int(meta["limits"][k]) for k in Limits.__dataclass_fields__})


def check_meta(meta: dict, trt_version: str, device: dict) -> None:
    """Engines run only on the TensorRT version and GPU model they were built with: refuse anything else."""
    if meta["tensorrt"] != trt_version:
        raise BundleError(f"engines were built with TensorRT {meta['tensorrt']}, this is TensorRT {trt_version}: "
                          f"engines are not portable across versions; rebuild with `janus-edge build`")
    want, have = meta["device"], device
    if want.get("name") != have.get("name") or list(want.get("compute_capability", [])) != \
            list(have.get("compute_capability", [])):
        cc = ".".join(map(str, want.get("compute_capability", [])))
        cc2 = ".".join(map(str, have.get("compute_capability", [])))
        raise BundleError(f"engines were built for {want.get('name')} (compute capability {cc}), this GPU is "
                          f"{have.get('name')} ({cc2}): rebuild them on this device")


def check_profiles(graph: str, recorded: list[dict], engine_profiles: list[dict]) -> None:
    """The profiles an opened engine reports must be those engines.json records (a swapped plan file)."""
    if len(recorded) != len(engine_profiles):
        raise BundleError(f"{graph}: engine has {len(engine_profiles)} optimization profiles, engines.json "
                          f"records {len(recorded)}; rebuild the engines")
    for i, (a, b) in enumerate(zip(recorded, engine_profiles)):
        for name, rng in a["shapes"].items():
            got = [list(map(int, s)) for s in b.get(name, [])]
            if got != [list(s) for s in rng]:
                raise BundleError(f"{graph}: profile {i} of input {name} is {got} in the engine, {rng} in "
                                  f"engines.json; rebuild the engines")
