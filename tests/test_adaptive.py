"""Adaptive attackers with known answers on small models and the real MobileNetV2 head (the whole matrix:
test_adaptive_matrix.py)."""

import copy
import inspect

import numpy as np
import pytest
import torch
from helpers import assert_same_top1

from fakegradient import Key, protect
from fakegradient.attacks.deepfool import DeepFool
from fakegradient.attacks.feature_space import FeatureSpacePGD
from fakegradient.attacks.key_recovery import recover_real_rows
from fakegradient.attacks.targets import OutputRows
from fakegradient.evaluation.pipeline import Normalized
from fakegradient.head import head_parameters, replace_module


def served_head(model, key):
    return head_parameters(model.get_submodule(key.head))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_key_recovery_breaks_the_paper_scheme_and_not_the_hardened_one(mobilenet_imagenet, seed):
    model, _ = mobilenet_imagenet
    for method, low, high in (("fake-gradient", 0.99, 1.0), ("fake-gradient-hardened", 0.40, 0.60)):
        protected, key = protect(model, method=method, seed=seed)
        recovered = recover_real_rows(*served_head(protected, key))
        fraction = recovered.recovered_fraction(key.permutation[: key.n_real])
        assert low <= fraction <= high, (method, recovered.oracle, fraction)
        if method == "fake-gradient-hardened":
            assert recovered.oracle == "row-norm"  # no bias or sign pairing exists


def test_key_recovery_uses_sign_patterns_when_biases_differ(tiny, tiny_input):
    protected, key = protect(tiny, example_input=tiny_input, seed=0)
    weight, bias = served_head(protected, key)
    noisy_bias = bias + torch.randn(bias.shape, generator=torch.Generator().manual_seed(0)) * 1e-3
    recovered = recover_real_rows(weight, noisy_bias)
    assert recovered.oracle == "sign-pattern"
    assert recovered.recovered_fraction(key.permutation[: key.n_real]) == 1.0


def test_hardened_keeps_exact_functionality(mobilenet_imagenet, imagenet_photos):
    model, _ = mobilenet_imagenet
    images, _ = imagenet_photos
    protected, key = protect(model, method="fake-gradient-hardened")
    with torch.no_grad():
        assert_same_top1(key.decrypt(protected(images)), model(images))  # within 1e-4, top-1 unchanged
    weight, bias = served_head(protected, key)
    assert len(torch.unique(bias)) == len(bias)  # no bias equality oracle
    norms = weight.norm(dim=1).numpy()
    real = np.zeros(len(norms), bool)
    real[key.permutation[: key.n_real]] = True
    # row norms of fake rows follow the real rows' distribution
    assert abs(np.median(norms[real]) - np.median(norms[~real])) < 0.1 * np.median(norms[real])


def test_sanity_attacker_with_the_key_always_wins(digits_model):
    model, x, _ = digits_model
    pipeline = Normalized(model, (0.0,), (1.0,))
    served, key = protect(model, example_input=x[:2], seed=0)
    served = Normalized(served, (0.0,), (1.0,))
    result = DeepFool()(OutputRows(served, np.sort(key.permutation[: key.n_real])), x[:40])
    with torch.no_grad():
        decrypted = key.decrypt(served(result.adversarial)).argmax(1)
        clean = pipeline(x[:40]).argmax(1)
    assert (decrypted != clean).all()  # 100 % attack success: the evaluation can fail the defense


def test_feature_space_attack_never_reads_the_key(digits_model, monkeypatch):
    """The attack's result is a function of the served model alone: it takes no key, and two served models
    that differ only in their secret row order (keys of different permutations), or a bare copy that no key
    was ever made for, give the same adversarial images while every way of reading a key raises."""
    params = inspect.signature(FeatureSpacePGD.__call__).parameters
    assert set(params) == {"self", "served", "head", "images", "eps"}

    model, x, _ = digits_model
    images, eps = x[:8], torch.full((8,), 0.5)
    served, key = protect(model, example_input=x[:2], seed=0)
    reordered, other_key = protect(model, example_input=x[:2], seed=1)
    assert key.head == other_key.head and not np.array_equal(key.permutation, other_key.permutation)
    with torch.no_grad():  # the two served models really differ: a key-dependent attack would see it
        assert not torch.equal(served(images), reordered(images))
    # a bare module with the served weights, built without protect(): no Key is attached to or made for it
    bare = copy.deepcopy(model)
    weight, _ = served_head(served, key)
    replace_module(bare, key.head, torch.nn.Linear(weight.shape[1], weight.shape[0]))
    bare.load_state_dict(served.state_dict())
    assert not any(isinstance(v, Key) for m in bare.modules() for v in vars(m).values())

    def forbidden(*_args, **_kwargs):
        raise AssertionError("the feature-space attack touched a key")

    for name in ("decrypt", "decrypt_all", "decrypt_real", "top1", "is_fake", "check_fingerprint", "describe",
                 "to_bytes", "save"):
        monkeypatch.setattr(Key, name, forbidden, raising=False)
    for name in ("permutation", "n_real", "n_outputs", "model_fingerprint", "_top1_tables"):
        monkeypatch.setattr(Key, name, property(forbidden), raising=False)

    attack = FeatureSpacePGD(steps=5)
    adversarial = attack(served, key.head, images, eps)
    assert torch.equal(attack(reordered, other_key.head, images, eps), adversarial)
    assert torch.equal(attack(bare, key.head, images, eps), adversarial)
    r = (adversarial - images).flatten(1).norm(dim=1)
    assert (r <= 0.5 + 1e-5).all() and (r > 0).all()
    assert adversarial.min() >= 0 and adversarial.max() <= 1
