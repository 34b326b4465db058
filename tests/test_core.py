"""The functional core: Algorithm 1 rows, the key permutation, Algorithms 2/3."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fakegradient import Key
from fakegradient.core.fake_rows import check_scale, fake_gradient_rows, hardened_rows, random_weight_rows
from fakegradient.core.permutation import (
    decrypt,
    decrypt_real,
    encrypt_rows,
    generate_permutation,
    inverse_permutation,
    is_permutation,
)

finite = st.floats(-10, 10, allow_nan=False, width=32)


def reference_fake_rows(w, scale):
    """Algorithm 1, element by element as written in the paper."""
    w_max = max(max(row) for row in w)
    sign = lambda v: (v > 0) - (v < 0)  # noqa: E731
    return [[(w_max - abs(v)) * scale * sign(v) for v in row] for row in w]


@settings(max_examples=60, deadline=None)
@given(
    w=st.integers(1, 6).flatmap(lambda n: st.integers(1, 7).flatmap(
        lambda d: arrays(np.float32, (n, d), elements=finite))),
    scale=st.floats(0.5, 50),
)
def test_fake_rows_match_elementwise_reference(w, scale):
    weight = torch.from_numpy(w.astype(np.float64))
    bias = torch.arange(w.shape[0], dtype=torch.float64)
    fake_w, fake_b = fake_gradient_rows(weight, bias, scale)
    expected = np.array(reference_fake_rows(w.astype(np.float64).tolist(), scale))
    np.testing.assert_allclose(fake_w.numpy(), expected, rtol=1e-12, atol=1e-12)
    assert torch.equal(fake_b, bias)
    assert fake_b is not bias


def test_fake_rows_uses_signed_maximum():
    w = torch.tensor([[-3.0, 1.0], [0.5, -0.25]])
    fake_w, _ = fake_gradient_rows(w, torch.zeros(2), scale=2.0)
    # W_max = 1.0 (signed max, not max |W| = 3)
    assert torch.allclose(fake_w, torch.tensor([[(1 - 3) * 2 * -1.0, 0.0], [(1 - 0.5) * 2, (1 - 0.25) * 2 * -1]]))


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), "x", None])
def test_scale_must_be_finite_positive(bad):
    with pytest.raises(ValueError, match="scale"):
        check_scale(bad)


def test_random_weight_rows_fit_gaussian():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(200, 300, generator=g) * 0.05 + 0.01
    b = torch.randn(200, generator=g)
    fake_w, fake_b = random_weight_rows(w, b, torch.Generator().manual_seed(1))
    assert fake_w.shape == w.shape and torch.equal(fake_b, b)
    assert math.isclose(fake_w.mean().item(), w.mean().item(), abs_tol=2e-3)
    assert math.isclose(fake_w.std().item(), w.std().item(), rel_tol=0.02)
    again, _ = random_weight_rows(w, b, torch.Generator().manual_seed(1))
    other, _ = random_weight_rows(w, b, torch.Generator().manual_seed(2))
    assert torch.equal(fake_w, again) and not torch.equal(fake_w, other)


@settings(max_examples=80, deadline=None)
@given(n=st.integers(1, 60), d=st.integers(1, 5), batch=st.integers(1, 4), seed=st.integers(0, 2**32 - 1))
def test_encrypt_decrypt_round_trip(n, d, batch, seed):
    rng = np.random.default_rng(seed)
    perm = generate_permutation(2 * n, seed=seed)
    assert is_permutation(perm, 2 * n)
    rows = rng.normal(size=(2 * n, d)).astype(np.float32)
    bias = rng.normal(size=2 * n).astype(np.float32)
    w_en, b_en = encrypt_rows(rows, perm), encrypt_rows(bias, perm)
    # Algorithm 2, literally: W_en[K[i]] = W'[i]
    for i in range(2 * n):
        assert np.array_equal(w_en[perm[i]], rows[i]) and b_en[perm[i]] == bias[i]
    features = rng.normal(size=(batch, d)).astype(np.float32)
    plain = features @ rows.T + bias
    encrypted = features @ w_en.T + b_en
    # two GEMMs over differently ordered rows: BLAS may sum a row differently wherever it sits (kernel and
    # edge blocks chosen per CPU), so they agree up to float32 rounding of a d-term dot product plus a bias
    bound = (d + 1) * np.finfo(np.float32).eps * (np.abs(features) @ np.abs(rows).T + np.abs(bias))
    assert np.all(np.abs(decrypt(encrypted, perm) - plain) <= bound)
    # decryption itself is a gather: exact, on numpy and torch alike
    assert np.array_equal(decrypt(encrypted, perm), encrypted[:, perm])
    out = decrypt(torch.from_numpy(encrypted), perm)
    assert isinstance(out, torch.Tensor)
    assert torch.equal(out, torch.from_numpy(encrypted[:, perm]))
    assert torch.equal(encrypt_rows(torch.from_numpy(rows), perm), torch.from_numpy(w_en))


def test_decrypt_works_on_extra_leading_dims():
    perm = generate_permutation(6, seed=3)
    x = np.arange(2 * 3 * 6).reshape(2, 3, 6)
    assert np.array_equal(decrypt(x, perm)[1, 2], x[1, 2][perm])


def test_unseeded_keys_differ_and_seeded_repeat():
    assert not np.array_equal(generate_permutation(2000), generate_permutation(2000))
    assert np.array_equal(generate_permutation(50, seed=7), generate_permutation(50, seed=7))


def test_unseeded_key_positions_are_uniform():
    counts = np.zeros((4, 4))
    for _ in range(4000):
        perm = generate_permutation(4)
        counts[np.arange(4), perm] += 1
    assert np.all(np.abs(counts - 1000) < 150)  # ~5 sigma


def test_decrypt_rejects_wrong_width():
    perm = generate_permutation(10, seed=0)
    with pytest.raises(ValueError, match="width 9"):
        decrypt(np.zeros((2, 9)), perm)


def test_inverse_and_validation():
    perm = generate_permutation(12, seed=1)
    assert np.array_equal(perm[inverse_permutation(perm)], np.arange(12))
    assert not is_permutation([0, 0, 1])
    assert not is_permutation([0.0, 1.0])
    with pytest.raises(ValueError):
        generate_permutation(1)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 40), batch=st.integers(1, 1100), seed=st.integers(0, 2**32 - 1))
def test_fast_paths_equal_algorithm_3(n, batch, seed):
    perm = generate_permutation(2 * n, seed=seed)
    key = Key(permutation=perm, n_real=n, method="fake-gradient", scale=20.0, model_fingerprint="x")
    outputs = np.random.default_rng(seed).standard_normal((batch, 2 * n)).astype(np.float32)
    full = decrypt(outputs, perm)
    assert np.array_equal(decrypt_real(outputs, perm, n), full[:, :n])
    assert np.array_equal(key.decrypt(outputs), full[:, :n])
    assert np.array_equal(key.top1(outputs), full[:, :n].argmax(1))
    positions = np.arange(2 * n)
    assert np.array_equal(key.is_fake(perm), positions >= n)  # plain i sits at K[i]


@pytest.mark.parametrize("n", [1, 2, 7])
def test_hardened_biases_are_all_distinct_on_every_draw(n):
    # Equal real biases give noise of spread 0: every fake bias would equal a real one without the ULP step.
    bias = torch.zeros(n)
    weight = torch.randn((n, 5), generator=torch.Generator().manual_seed(0))
    for seed in range(5):
        _, fake_bias = hardened_rows(weight, bias, torch.Generator().manual_seed(seed))
        assert len(set(fake_bias.tolist()) | {0.0}) == n + 1
        assert torch.all((fake_bias - bias).abs() < 1e-6)  # moved by ULPs only
