"""Which graph gets which precision: the default per mode, visible (printed, recorded) and overridable (--graphs).

Default: `lm` in the requested mode; `gen_head` and `lm_head` too (on Pro-1B the fp32 gen_head alone is 151 MB, a
quarter of the int4 `lm`, and lm_head 840 MB); `vision` stays float unless asked for (it runs once per chat image,
not per step); `vq_encoder`, `vq_decoder`, `gen_embed` and the text-embedding table stay float (small, or run once,
or a table gather: quantizing them saves no step time and costs image quality).

`--graphs` replaces the set: `lm,gen_head` quantizes exactly those in the mode; `lm=int4,gen_head=int8` gives each its
own mode; `lm,vision` adds vision.
"""
from __future__ import annotations

from janus_edge import contract as C

MODES = ("int8", "fp8", "int4")
DEFAULT_QUANTIZED = ("lm", "gen_head", "lm_head")
FLOAT_BY_DEFAULT = ("vision", "vq_encoder", "vq_decoder", "gen_embed")


class PolicyError(ValueError):
    pass


def default_policy(mode: str) -> dict[str, str | None]:
    """graph -> mode, or None for "keep float"."""
    if mode not in MODES:
        raise PolicyError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    return {g: (mode if g in DEFAULT_QUANTIZED else None) for g in C.GRAPHS}


def parse_graphs(spec: str | None, mode: str) -> dict[str, str | None]:
    """The policy for `--graphs SPEC` (None: the default)."""
    policy = default_policy(mode)
    if spec is None:
        return policy
    items = [s.strip() for s in spec.split(",") if s.strip()]
    if not items:
        raise PolicyError("--graphs is empty; name graphs like lm,gen_head or lm=int4,gen_head=int8")
    chosen: dict[str, str] = {}
    for it in items:
        name, _, m = it.partition("=")
        name, m = name.strip(), (m.strip() or mode)
        if name not in C.GRAPHS:
            raise PolicyError(f"unknown graph {name!r} in --graphs; graphs: {', '.join(C.GRAPHS)}")
        if m not in MODES:
            raise PolicyError(f"unknown mode {m!r} for graph {name} in --graphs; choose one of {', '.join(MODES)}")
        chosen[name] = m
    return {g: chosen.get(g) for g in C.GRAPHS}


def describe(policy: dict[str, str | None]) -> str:
    """One line: 'lm=int4 gen_head=int4 lm_head=int4 | float: vision vq_encoder ...'."""
    q = " ".join(f"{g}={m}" for g, m in policy.items() if m)
    f = " ".join(g for g, m in policy.items() if not m)
    return f"{q or '(nothing quantized)'} | float: {f or '-'} text_table"
