"""Per-sample Philox noise: Random123 known answers, batch independence and normal statistics."""
import math

import numpy as np
import pytest

from gencc.runtime.errors import GenccError
from gencc.runtime.noise import SampleNoise, normal_noise, philox4x32

# Random123 tests/kat_vectors: rounds, counter, key, expected output (all hex uint32 words).
KAT = [
    (10, "00000000 00000000 00000000 00000000", "00000000 00000000", "6627e8d5 e169c58d bc57ac4c 9b00dbd8"),
    (10, "ffffffff ffffffff ffffffff ffffffff", "ffffffff ffffffff", "408f276d 41c83b0e a20bc7c6 6d5451fd"),
    (10, "243f6a88 85a308d3 13198a2e 03707344", "a4093822 299f31d0", "d16cfe09 94fdcceb 5001e420 24126ea1"),
    (7, "00000000 00000000 00000000 00000000", "00000000 00000000", "5f6fb709 0d893f64 4f121f81 4f730a48"),
    (7, "ffffffff ffffffff ffffffff ffffffff", "ffffffff ffffffff", "5207ddc2 45165e59 4d8ee751 8c52f662"),
    (7, "243f6a88 85a308d3 13198a2e 03707344", "a4093822 299f31d0", "4dfccaba 190a87f0 c47362ba b6b5242a"),
]


def words(text: str) -> np.ndarray:
    return np.array([int(w, 16) for w in text.split()], dtype=np.uint32)


@pytest.mark.parametrize("rounds,ctr,key,expected", KAT)
def test_philox_known_answers(rounds, ctr, key, expected):
    np.testing.assert_array_equal(philox4x32(words(ctr), words(key), rounds), words(expected))


def test_philox_vectorised_matches_one_at_a_time():
    counters = np.stack([words(c) for _, c, _, _ in KAT[:3]])
    keys = np.stack([words(k) for _, _, k, _ in KAT[:3]])
    np.testing.assert_array_equal(philox4x32(counters, keys), np.stack([words(e) for *_, e in KAT[:3]]))
    # One key broadcast over many counters.
    out = philox4x32(counters, keys[2])
    np.testing.assert_array_equal(out[2], words(KAT[2][3]))


def test_first_block_is_box_muller_of_the_zero_kat():
    # seed 0, index 0, stream 0, block 0 is Philox counter 0 under key 0, whose output the KAT gives.
    x = [(w + 0.5) / 2**32 for w in words(KAT[0][3]).tolist()]
    r0, r1 = math.sqrt(-2 * math.log(x[0])), math.sqrt(-2 * math.log(x[2]))
    t0, t1 = 2 * math.pi * x[1], 2 * math.pi * x[3]
    expected = [r0 * math.cos(t0), r0 * math.sin(t0), r1 * math.cos(t1), r1 * math.sin(t1)]
    np.testing.assert_allclose(normal_noise(0, [0], 0, (4,), np.float64)[0], expected, rtol=1e-12)


def test_smaller_shapes_are_prefixes_and_chunking_is_invisible(monkeypatch):
    whole = normal_noise(3, np.arange(6), 1, (2, 9))
    np.testing.assert_array_equal(normal_noise(3, np.arange(6), 1, (7,)), whole.reshape(6, 18)[:, :7])
    monkeypatch.setattr("gencc.runtime.noise._CHUNK_BLOCKS", 2)
    np.testing.assert_array_equal(normal_noise(3, np.arange(6), 1, (2, 9)), whole)


def test_rows_depend_only_on_their_index():
    whole = normal_noise(7, np.arange(64), 3, (5, 3))
    for i in (0, 5, 63):
        np.testing.assert_array_equal(normal_noise(7, np.array([i]), 3, (5, 3))[0], whole[i])
    np.testing.assert_array_equal(normal_noise(7, [40, 5], 3, (5, 3)), whole[[40, 5]])


def test_chunking_matches_one_batch():
    whole = normal_noise(11, np.arange(20), 0, (2, 4, 4))
    chunks = [normal_noise(11, np.arange(a, a + 10), 0, (2, 4, 4)) for a in (0, 10)]
    np.testing.assert_array_equal(np.concatenate(chunks), whole)


def test_seed_stream_and_index_all_matter():
    base = normal_noise(1, [0], 0, (16,))
    for other in (normal_noise(2, [0], 0, (16,)), normal_noise(1, [0], 1, (16,)),
                  normal_noise(1, [1], 0, (16,)), normal_noise(1 + 2**32, [0], 0, (16,)),
                  normal_noise(1, [2**32], 0, (16,))):
        assert not np.any(other == base)


def test_steps_match_step_and_prior_is_stream_zero():
    noise = SampleNoise(5, np.arange(3, 9), (3, 2))
    bulk = noise.steps(2, 7)
    assert bulk.shape == (5, 6, 3, 2)
    for j in range(5):
        np.testing.assert_array_equal(bulk[j], noise.step(2 + j))
        np.testing.assert_array_equal(bulk[j], normal_noise(5, np.arange(3, 9), 3 + j, (3, 2)))
    np.testing.assert_array_equal(noise.prior(), normal_noise(5, np.arange(3, 9), 0, (3, 2)))
    assert noise.steps(4, 4).shape == (0, 6, 3, 2)


def test_dtype_and_shape():
    assert normal_noise(0, np.arange(4), 0, (1, 8, 8)).dtype == np.float32
    assert normal_noise(0, np.arange(4), 0, (3,), dtype=np.float64).shape == (4, 3)
    assert normal_noise(0, np.arange(4), 0, ()).shape == (4,)


def test_standard_normal_statistics():
    z = normal_noise(2024, np.arange(1000), 9, (200,), dtype=np.float64).ravel()
    assert abs(z.mean()) < 0.01
    assert abs(z.std() - 1.0) < 0.01
    # Phi(1) = 0.8413; a CDF point checks the shape, not just the first two moments.
    assert abs(np.mean(z < 1.0) - 0.5 * (1 + math.erf(1 / math.sqrt(2)))) < 0.005
    assert abs(np.mean(z < -2.0) - 0.5 * (1 + math.erf(-2 / math.sqrt(2)))) < 0.002


@pytest.mark.parametrize("seed", [-1, 2**64, 1.5, True])
def test_bad_seed_raises(seed):
    with pytest.raises(GenccError, match="seed"):
        normal_noise(seed, [0], 0, (2,))


@pytest.mark.parametrize("indices", [[-3], np.array([0.5]), np.zeros((2, 2), dtype=int)])
def test_bad_indices_raise(indices):
    with pytest.raises(GenccError, match="indices"):
        normal_noise(0, indices, 0, (2,))


def test_bad_stream_and_steps_raise():
    with pytest.raises(GenccError, match="stream"):
        normal_noise(0, [0], 2**32, (2,))
    with pytest.raises(GenccError, match="k0=3, k1=2"):
        SampleNoise(0, [0], (2,)).steps(3, 2)


@pytest.mark.slow
def test_compiled_noise_kernel_equals_numpy_and_its_gate_can_fail(tmp_path, monkeypatch):
    """compiler/noise_kernel.py's kernel passes the parity gate; one wrong Philox constant fails it."""
    from gencc.compiler import noise_kernel
    from gencc.compiler.build import resolve_target

    target, _ = resolve_target("llvm")
    noise_kernel.build_noise(tmp_path / "good.so", target)
    assert noise_kernel.check_noise(tmp_path / "good.so") > 2000
    monkeypatch.setattr(noise_kernel, "_M0", noise_kernel._M0 ^ 1)
    noise_kernel.build_noise(tmp_path / "bad.so", target)
    with pytest.raises(GenccError, match="compiled noise kernel differs from runtime/noise.py"):
        noise_kernel.check_noise(tmp_path / "bad.so")


def test_rows_of_several_seeds_each_equal_their_own_seeds_draw():
    """Issue 16: a server's merged batch gives row r seed seeds[r]; every row equals its seed's solo draw."""
    seeds, idx = [3, 2**40 + 7, 3, 0], [0, 0, 5, 9]
    mixed = SampleNoise(seeds, idx, (3, 5))
    assert mixed.row_seeds is not None
    for r, (seed, i) in enumerate(zip(seeds, idx, strict=True)):
        alone = SampleNoise(seed, [i], (3, 5))
        assert np.array_equal(mixed.prior()[r], alone.prior()[0])
        assert np.array_equal(mixed.steps(2, 6)[:, r], alone.steps(2, 6)[:, 0])
    same = SampleNoise([4, 4], [0, 1], (2,))
    assert same.row_seeds is None and same.seed == 4   # one seed: the one-seed path, unchanged
    with pytest.raises(GenccError, match="one seed per index"):
        SampleNoise([1, 2], [0, 1, 2], (2,))
    with pytest.raises(GenccError, match="seed"):
        SampleNoise([1, -2], [0, 1], (2,))
