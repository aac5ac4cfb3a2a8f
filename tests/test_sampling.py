"""The host sampler (numpy twin of the cfg_sample kernel): its definition, edges, and the per-request generator."""
import numpy as np
import pytest

from janus_edge.errors import InputError, NumericalError
from janus_edge.runtime.sampling import (WEIGHT_ONE, SamplingConfig, SeededSampler, cfg_combine, check_finite,
                                         draw_target, exp_f32, order_keys, sample, top_p_keep, weights)


def _logits(rows=3, v=50, seed=0):
    return np.random.default_rng(seed).normal(size=(rows, v)).astype(np.float32)


def test_greedy_is_argmax():
    x = _logits()
    assert (sample(x, SamplingConfig(temperature=0), None) == x.argmax(-1)).all()


def test_top_k_1_equals_greedy_even_with_ties():
    x = np.round(_logits(rows=6, v=40), 0)           # many ties, also at the top
    for seed in range(5):
        got = sample(x, SamplingConfig(temperature=1.0, top_k=1), SeededSampler(seed), step=seed)
        assert (got == x.argmax(-1)).all()


def test_same_seed_same_tokens_and_other_seed_differs():
    x = _logits(rows=4, v=1000)
    cfg = SamplingConfig(temperature=1.0)
    a = [sample(x, cfg, SeededSampler(7), step=i) for i in range(20)]
    b = [sample(x, cfg, SeededSampler(7), step=i) for i in range(20)]
    c = [sample(x, cfg, SeededSampler(8), step=i) for i in range(20)]
    assert all((p == q).all() for p, q in zip(a, b))
    assert any((p != q).any() for p, q in zip(a, c))


def test_a_rows_token_does_not_depend_on_the_rest_of_the_batch():
    x = _logits(rows=4, v=500)
    cfg = SamplingConfig(temperature=1.5, top_k=100, top_p=0.95)
    full = sample(x, cfg, SeededSampler(3), step=9)
    for r in range(4):
        assert sample(x[r:r + 1], cfg, SeededSampler(3), step=9, images=[r])[0] == full[r]


def test_random_seed_when_none_and_bad_rng_or_seed():
    assert SeededSampler().seed != SeededSampler().seed
    with pytest.raises(TypeError, match="SeededSampler"):
        sample(_logits(), SamplingConfig(1.0), np.random.default_rng(0))
    with pytest.raises(InputError):
        SeededSampler(-3)


def test_top_k_only_draws_from_the_k_largest():
    x = _logits(rows=2, v=100)
    top = np.argsort(-x, -1)[:, :5]
    for i in range(200):
        t = sample(x, SamplingConfig(temperature=2.0, top_k=5), SeededSampler(0), step=i)
        assert all(t[r] in top[r] for r in range(2))


def test_top_k_ties_keep_the_lower_ids():
    x = np.zeros((1, 10), np.float32)
    seen = {int(sample(x, SamplingConfig(1.0, top_k=3), SeededSampler(1), step=i)[0]) for i in range(300)}
    assert seen == {0, 1, 2}


def test_top_p_keeps_the_smallest_prefix_reaching_p():
    # probabilities 0.5, 0.3, 0.2: p=0.6 keeps two tokens, p=0.45 keeps one, p=1 keeps all
    x = np.log(np.array([[0.2, 0.5, 0.3]]))
    draw = lambda p, n: {int(sample(x, SamplingConfig(1.0, top_p=p), SeededSampler(0), step=i)[0]) for i in range(n)}
    assert draw(0.6, 300) == {1, 2}
    assert draw(0.45, 50) == {1}
    assert draw(1.0, 300) == {0, 1, 2}


def test_top_p_edges_on_exact_weights():
    w = np.array([4, 2, 1, 1, 0], np.uint64)
    assert top_p_keep(w, 0.5).tolist() == [True, False, False, False, False]   # prefix mass exactly p: stop
    assert top_p_keep(w, 0.75).tolist() == [True, True, False, False, False]
    assert top_p_keep(w, 0.76).tolist() == [True, True, True, False, False]    # one token over p
    assert top_p_keep(w, 1.0).tolist() == [True, True, True, True, False]      # p = 1: every nonzero weight
    assert top_p_keep(w, 1e-9).tolist() == [True, False, False, False, False]  # the first always stays


def test_sampling_follows_the_distribution():
    p = np.array([0.1, 0.6, 0.3])
    draws = sample(np.repeat(np.log(p)[None], 4000, 0), SamplingConfig(1.0), SeededSampler(0), step=0)
    freq = np.bincount(draws, minlength=3) / len(draws)
    assert np.abs(freq - p).max() < 0.03


def test_temperature_sharpens_and_underflow_is_greedy():
    x = np.log(np.array([[0.4, 0.6]]))
    cold = np.mean([sample(x, SamplingConfig(0.1), SeededSampler(0), step=i)[0] for i in range(500)])
    assert cold > 0.95
    y = _logits(rows=3, v=300)
    for t in (1e-30, 1e-44, 1e-60):     # (l - max) / T -> -inf for all but the top; 1e-60 rounds to 0 in float32
        assert (sample(y, SamplingConfig(t), SeededSampler(5), step=1) == y.argmax(-1)).all()
    z = np.array([[1.0, 3.0, 3.0, -2.0]], np.float32)    # tied top: a tiny T draws among the tied tokens only
    seen = {int(sample(z, SamplingConfig(1e-30), SeededSampler(2), step=i)[0]) for i in range(100)}
    assert seen == {1, 2}


def test_minus_inf_is_never_drawn_and_all_minus_inf_gives_token_0():
    x = _logits(rows=2, v=20)
    x[:, ::2] = -np.inf
    for i in range(200):
        t = sample(x, SamplingConfig(1.0, top_k=15, top_p=0.99), SeededSampler(1), step=i)
        assert (t % 2 == 1).all()
    allinf = np.full((1, 8), -np.inf, np.float32)
    assert sample(allinf, SamplingConfig(1.0), SeededSampler(1))[0] == 0
    assert sample(allinf, SamplingConfig(0.0), None)[0] == 0


def test_exp_f32_is_accurate_and_exact_at_zero():
    x = -np.linspace(0, 60, 100_001).astype(np.float32)
    e = exp_f32(x)
    assert e[0] == 1.0 and (e <= 1).all() and (np.diff(e) <= 0).all()
    ref = np.exp(x.astype(np.float64))
    assert np.max(np.abs(e - ref) / ref) < 3e-7
    assert exp_f32(np.array([-np.inf, -100.0], np.float32)).tolist() == [0.0, 0.0]


def test_weights_and_keys():
    l = np.array([0.5, 2.0, -np.inf, 2.0, -0.0, 0.0], np.float32)
    w = weights(l, np.float32(2.0), np.float32(1.0))
    assert w[1] == w[3] == WEIGHT_ONE and w[2] == 0 and 0 < w[0] < WEIGHT_ONE
    order = np.argsort(order_keys(l))[::-1].tolist()
    assert order == [1, 3, 0, 4, 5, 2]       # value desc, ties by lower id, -0 == +0, -inf last


def test_draw_target_is_floor_of_r_times_total_over_2_32():
    rng = np.random.default_rng(0)
    for _ in range(1000):
        r, total = int(rng.integers(0, 2**32)), int(rng.integers(1, 2**48))
        assert draw_target(r, total) == (r * total) >> 32


def test_cfg_combine():
    c, u = _logits(1, 30, 1), _logits(1, 30, 2)
    got = cfg_combine(c, u, 5.0)
    assert got.dtype == np.float32 and np.array_equal(got, u + np.float32(5.0) * (c - u))


@pytest.mark.parametrize("cfg", [SamplingConfig(-1.0), SamplingConfig(1.0, top_k=0), SamplingConfig(1.0, top_p=0.0),
                                 SamplingConfig(1.0, top_p=1.5), SamplingConfig(float("nan"))])
def test_bad_sampling_arguments(cfg):
    with pytest.raises(InputError):
        cfg.validate()


def test_non_finite_logits_are_reported():
    x = _logits()
    check_finite(x, "t")
    x[1, 3] = np.nan
    with pytest.raises(NumericalError, match="NaN"):
        check_finite(x, "t")
    x[1, 3] = np.inf
    with pytest.raises(NumericalError, match="inf"):
        check_finite(x, "t")
