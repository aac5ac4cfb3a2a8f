import numpy as np
import pytest

from janus_edge.errors import InputError, NumericalError
from janus_edge.runtime.sampling import SamplingConfig, check_finite, sample


def _logits(rows=3, v=50, seed=0):
    return np.random.default_rng(seed).normal(size=(rows, v)).astype(np.float32)


def test_greedy_is_argmax():
    x = _logits()
    assert (sample(x, SamplingConfig(temperature=0), None) == x.argmax(-1)).all()


def test_top_k_1_equals_greedy():
    x = _logits()
    for seed in range(5):
        got = sample(x, SamplingConfig(temperature=1.0, top_k=1), np.random.default_rng(seed))
        assert (got == x.argmax(-1)).all()


def test_same_seed_same_tokens_and_other_seed_differs():
    x = _logits(rows=4, v=1000)
    cfg = SamplingConfig(temperature=1.0)
    a = [sample(x, cfg, r) for r in [np.random.default_rng(7)] for _ in range(20)]
    b = [sample(x, cfg, r) for r in [np.random.default_rng(7)] for _ in range(20)]
    c = [sample(x, cfg, r) for r in [np.random.default_rng(8)] for _ in range(20)]
    assert all((p == q).all() for p, q in zip(a, b))
    assert any((p != q).any() for p, q in zip(a, c))


def test_top_k_only_draws_from_the_k_largest():
    x = _logits(rows=2, v=100)
    rng = np.random.default_rng(0)
    top = np.argsort(-x, -1)[:, :5]
    for _ in range(200):
        t = sample(x, SamplingConfig(temperature=2.0, top_k=5), rng)
        assert all(t[r] in top[r] for r in range(2))


def test_top_p_keeps_the_smallest_prefix_reaching_p():
    # probabilities 0.5, 0.3, 0.2: p=0.6 keeps two tokens, p=0.5 keeps one, p=1 keeps all
    x = np.log(np.array([[0.2, 0.5, 0.3]]))
    rng = np.random.default_rng(0)
    seen = {int(sample(x, SamplingConfig(1.0, top_p=0.6), rng)[0]) for _ in range(300)}
    assert seen == {1, 2}
    assert {int(sample(x, SamplingConfig(1.0, top_p=0.5), rng)[0]) for _ in range(50)} == {1}
    assert {int(sample(x, SamplingConfig(1.0, top_p=1.0), rng)[0]) for _ in range(300)} == {0, 1, 2}


def test_sampling_follows_the_distribution():
    p = np.array([0.1, 0.6, 0.3])
    rng = np.random.default_rng(0)
    draws = np.array([sample(np.log(p)[None], SamplingConfig(1.0), rng)[0] for _ in range(4000)])
    freq = np.bincount(draws, minlength=3) / len(draws)
    assert np.abs(freq - p).max() < 0.03


def test_temperature_sharpens():
    x = np.log(np.array([[0.4, 0.6]]))
    rng = np.random.default_rng(0)
    cold = np.mean([sample(x, SamplingConfig(0.1), rng)[0] for _ in range(500)])
    assert cold > 0.95


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
