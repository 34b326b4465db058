"""The controls (scaled-copy, random-decoy) and the released code's fake bias (--bias official): their rows
(core.fake_rows), exact decryption, and how their fake outputs behave."""

import pytest
import torch

from fakegradient import methods
from fakegradient.core.fake_rows import (
    fake_gradient_rows,
    official_fake_bias,
    random_decoy_rows,
    scaled_copy_rows,
)
from fakegradient.evaluation.pipeline import Normalized, protected_pipeline
from fakegradient.protection import protect

TOL = dict(rtol=1e-5, atol=1e-5)  # float32 logits of two different GEMMs (same sums, another order)


# -- the controls and the official bias --------------------------------------------------------------------

def head(n=6, d=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randn(n, generator=g)


def test_control_rows_definitions():
    w, b = head()
    fw, fb = scaled_copy_rows(w, b, 5.0)
    assert torch.equal(fw, w * 5.0) and torch.equal(fb, b)
    dw, db = random_decoy_rows(w, b, 5.0, generator=torch.Generator().manual_seed(1))
    assert (dw > 0).all() and torch.equal(db, b)
    torch.testing.assert_close(dw.norm(dim=1), fake_gradient_rows(w, b, 5.0)[0].norm(dim=1), rtol=1e-5, atol=0)
    again, _ = random_decoy_rows(w, b, 5.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(dw, again)  # seeded: reproducible


def test_official_bias_formula():
    b = torch.tensor([0.5, -0.25, 0.0, 1.0])
    expected = 2.0 * (1.0 - b.abs()) * torch.tensor([1.0, -1.0, 1.0, 1.0])  # sign(0) = +1
    torch.testing.assert_close(official_fake_bias(b, 2.0), expected, rtol=0, atol=1e-7)


def features_net():
    """(B, 1, 4, 4) or (B, 16) → ReLU features (non-negative, as the ImageNet heads see) → 10 classes."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 32), torch.nn.ReLU(),
                               torch.nn.Linear(32, 10)).eval()


@pytest.mark.parametrize("method", methods.CONTROLS)
def test_controls_decrypt_exactly(method):
    model, x = features_net(), torch.randn(64, 16, generator=torch.Generator().manual_seed(2))
    protected, key = protect(model, method=method, seed=3, example_input=x[:1])
    with torch.no_grad():
        torch.testing.assert_close(key.decrypt(protected(x)), model(x), **TOL)


def test_controls_fake_output_behaviour():
    """random-decoy's fake outputs win on every input (positive rows on ReLU features); scaled-copy's
    fake output c is S_a (z_c - b_c) + b_c: an affine copy of real logit c, whose gradient is S_a times
    the real one (so an attack on it moves the real decision)."""
    model, x = features_net(), torch.randn(256, 16, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        protected, key = protect(model, method="random-decoy", seed=3, example_input=x[:1])
        assert key.is_fake(protected(x).argmax(1).numpy()).all()
        protected, key = protect(model, method="scaled-copy", seed=3, example_input=x[:1])
        plain, real, b = key.decrypt_all(protected(x)), model(x), model[3].bias
        torch.testing.assert_close(plain[:, key.n_real:], 20.0 * (real - b) + b, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("method", ["fake-gradient", "random-weight", "scaled-copy", "random-decoy"])
def test_official_bias_keeps_decryption(method):
    model = features_net()
    pipeline = Normalized(model, (0.0,), (1.0,))
    x = torch.rand(32, 1, 4, 4, generator=torch.Generator().manual_seed(5))
    official, key = protected_pipeline(pipeline, method, scale=20.0, seed=1, probe=x[:1], bias="official")
    with torch.no_grad():
        torch.testing.assert_close(key.decrypt(official(x)), model(x), **TOL)
        served_bias = official.model[3].bias
        fake = torch.as_tensor(key.permutation[key.n_real:])
        torch.testing.assert_close(served_bias[fake], official_fake_bias(model[3].bias, 20.0), rtol=0, atol=1e-6)
        assert key.model_fingerprint != protect(model, method=method, seed=1, example_input=x[:1])[1].model_fingerprint
    hardened, _ = protected_pipeline(pipeline, "fake-gradient-hardened", scale=20.0, seed=1, probe=x[:1], bias="official")
    again, _ = protected_pipeline(pipeline, "fake-gradient-hardened", scale=20.0, seed=1, probe=x[:1])
    assert torch.equal(hardened.model[3].bias, again.model[3].bias)  # its own biases: not b_F = b_o
