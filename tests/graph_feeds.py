"""Random feeds for a graph spec (imported as `graph_feeds`: pytest puts tests/ on sys.path), shared by the tests that
run quantized `lm` graphs side by side on the same inputs (test_quant, test_kv_int8)."""
import numpy as np


def random_feeds(spec, past: int = 16, seed: int = 0) -> dict:
    """One value per input of `spec`: 2 rows, 3 new positions after `past` cached ones; position_ids count on from
    `past`, everything else standard normal, each in its declared dtype."""
    rng = np.random.default_rng(seed)
    sizes = {"rows": 2, "seq": 3, "past": past}
    out = {}
    for t in spec.inputs:
        shape = tuple(sizes[d] if isinstance(d, str) else d for d in t.dims)
        out[t.name] = (np.tile(np.arange(past, past + shape[1]), (shape[0], 1)) if t.name == "position_ids"
                       else rng.standard_normal(shape)).astype(t.dtype)
    return out
