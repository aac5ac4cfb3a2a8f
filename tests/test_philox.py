"""Philox4x32 (numpy twin) against Random123's known-answer vectors, and the draw stream's layout."""
import numpy as np
import pytest

from janus_edge.runtime.philox import check_seed, draw_u32, philox4x32, u01

F = 0xFFFFFFFF
PI_CTR, PI_KEY = (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0)
# Random123 tests/kat_vectors, lines "philox4x32 R ctr[4] key[2] expected[4]" (DEShawResearch/random123)
KAT = [
    (7, (0, 0, 0, 0), (0, 0), (0x5F6FB709, 0x0D893F64, 0x4F121F81, 0x4F730A48)),
    (7, (F, F, F, F), (F, F), (0x5207DDC2, 0x45165E59, 0x4D8EE751, 0x8C52F662)),
    (7, PI_CTR, PI_KEY, (0x4DFCCABA, 0x190A87F0, 0xC47362BA, 0xB6B5242A)),
    (10, (0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    (10, (F, F, F, F), (F, F), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (10, PI_CTR, PI_KEY, (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("rounds,ctr,key,want", KAT)
def test_known_answers(rounds, ctr, key, want):
    assert philox4x32(ctr, key, rounds)[0].tolist() == list(want)


def test_vectorised_equals_one_at_a_time():
    rng = np.random.default_rng(0)
    ctr = rng.integers(0, 2**32, size=(4, 257), dtype=np.uint64)
    key = rng.integers(0, 2**32, size=(2, 257), dtype=np.uint64)
    many = philox4x32(tuple(ctr), tuple(key))
    for j in [0, 1, 100, 256]:
        assert (philox4x32(tuple(ctr[:, j]), tuple(key[:, j]))[0] == many[j]).all()


def test_draw_layout_seed_in_key_step_image_draw_in_counter():
    seed, step = 0x0123456789ABCDEF, 2**33 + 5
    want = philox4x32((5, 2, 7, 1), (0x89ABCDEF, 0x01234567))[0, 0]
    assert draw_u32(seed, step, 7, 1)[0] == want


def test_a_draw_depends_only_on_its_own_indices():
    batch = draw_u32(42, 10, np.arange(8))
    assert [int(draw_u32(42, 10, i)[0]) for i in range(8)] == batch.tolist()
    assert len(set(batch.tolist())) == 8
    assert draw_u32(42, 11, 0)[0] != batch[0] and draw_u32(43, 10, 0)[0] != batch[0]


def test_u01_is_in_unit_interval_and_uniform():
    w = draw_u32(7, np.arange(200_000), 0)
    u = u01(w)
    assert u.dtype == np.float32 and u.min() >= 0 and u.max() < 1
    assert u01(np.array([F], np.uint32))[0] == np.float32(1 - 2**-24)
    hist = np.bincount((u * 16).astype(int), minlength=16) / len(u)
    assert np.abs(hist - 1 / 16).max() < 0.004   # ~ 7 sigma for 200k draws
    assert abs(float(u.mean()) - 0.5) < 0.003


@pytest.mark.parametrize("bad", [-1, 2**64, 1.5, True])
def test_bad_seeds(bad):
    with pytest.raises(ValueError):
        check_seed(bad)
