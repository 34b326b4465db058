"""Batched and per-image attacks agree: what an attack gives an image does not depend on its batch-mates.

The model computes in float64 (its float32 logits are the float64 ones rounded), so that a batch of 6 and a
batch of 1 — different kernels — differ by ~1e-13 before that rounding, far below what ATOL allows, and what
remains is the attack's own coupling. (In float32 they differ by rounding: feature-space PGD's first step
subtracts two nearly equal feature vectors; measured here, another kernel's last bits moved a digit by 1e-4
after one step and 0.05 after ten.)

- Deterministic attacks (DeepFool; C&W without its batch-wide early abort): every image of a batch gets what
  it gets alone.
- Random-start attacks (PGD, APGD at one restart, feature-space PGD) draw one start for the whole batch, so a
  position's start depends on the batch's size and its place in it: an image keeps its result when its
  batch-mates are replaced (same size, same place), and feature-space PGD's first image gets it alone too (its
  start is the first numbers drawn; foolbox's and ART's draws for one image are not a batch's first).
  Not covered: ART's APGD stops the whole batch once every image's loss is exactly 0 (a saturated
  cross-entropy, as on Fake Gradient's served outputs) and draws a second restart only for images not yet
  broken; these digits reach neither.
- Per-image loops (Square, HopSkipJump): a batch is its images one at a time, the generator carried from one
  image's run to the next, queries counted from 0 for each: the same computation, so the same adversarial
  images and queries, bit for bit.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from fakegradient.attacks.apgd import APGD
from fakegradient.attacks.cw import CarliniWagnerL2
from fakegradient.attacks.deepfool import DeepFool
from fakegradient.attacks.feature_space import FeatureSpacePGD
from fakegradient.attacks.hopskipjump import HopSkipJump
from fakegradient.attacks.pgd import L2PGD
from fakegradient.attacks.square import SquareAttack
from fakegradient.errors import InvalidArgument

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BATCH = 6
ATOL = 1e-5  # pixels in [0, 1]: a float32 rounding of a float64 difference of ~1e-13 can still flip a bit


class Float64(nn.Module):
    """``model`` in float64 behind float32 images and logits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = copy.deepcopy(model).double().eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.double()).float()


@pytest.fixture(scope="module")
def digits64(digits_model):
    model, x, _ = digits_model
    return Float64(model), x[:12]


def _feature_space(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    head = f"model.{len(model.model) - 1}"  # the last Linear: the features are its input
    return FeatureSpacePGD(steps=10, seed=0)(model, head, images, torch.full((len(images),), 1.0))


DETERMINISTIC = {
    "deepfool": lambda model, x: DeepFool(clip=(0.0, 1.0))(model, x).adversarial,
    "cw": lambda model, x: CarliniWagnerL2(eps=1.5, steps=50, binary_search_steps=4,
                                           abort_early=False)(model, x).adversarial,
}
RANDOM_START = {
    "pgd": lambda model, x: L2PGD(eps=1.0, steps=20)(model, x, generator=np.random.default_rng(3)).adversarial,
    "apgd": lambda model, x: APGD(eps=1.0, steps=20)(model, x, generator=np.random.default_rng(3)).adversarial,
    "feature-space": _feature_space,
}
LOOPS = {
    "square": SquareAttack(eps=2.0, queries=300),
    "hopskipjump": HopSkipJump(queries=300, eps=2.5),
}


@pytest.mark.parametrize("name", sorted(DETERMINISTIC))
def test_a_deterministic_attack_gives_each_image_of_a_batch_what_it_gives_it_alone(digits64, name):
    model, x = digits64
    images = x[:BATCH]
    batched = DETERMINISTIC[name](model, images)
    assert (batched - images).flatten(1).norm(dim=1).gt(0).sum() >= BATCH - 1  # it moves the images
    for i in range(BATCH):
        torch.testing.assert_close(batched[i:i + 1], DETERMINISTIC[name](model, images[i:i + 1]), atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", sorted(RANDOM_START))
def test_a_random_start_attack_gives_an_image_the_same_result_whatever_its_batch_mates(digits64, name):
    model, x = digits64
    attack, images = RANDOM_START[name], x[:BATCH]
    batched = attack(model, images)
    assert (batched - images).flatten(1).norm(dim=1).gt(0).all()
    for place in (0, 3):
        mates = torch.cat([x[BATCH:BATCH + place], images[place:place + 1], x[BATCH + place:2 * BATCH - 1]])
        assert len(mates) == BATCH and torch.equal(mates[place], images[place])
        torch.testing.assert_close(attack(model, mates)[place], batched[place], atol=ATOL, rtol=0)


def test_feature_space_pgd_gives_a_batch_s_first_image_what_it_gives_it_alone(digits64):
    model, x = digits64
    batched = _feature_space(model, x[:BATCH])
    torch.testing.assert_close(_feature_space(model, x[:1]), batched[:1], atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", sorted(LOOPS))
def test_a_per_image_loop_is_its_images_one_at_a_time(digits_model, name):
    model, x, _ = digits_model
    images, attack = x[:4], LOOPS[name]
    batched = attack(model, images, generator=np.random.default_rng(5))
    generator = np.random.default_rng(5)  # carried from image to image, as in the loop
    alone = [attack(model, images[i:i + 1], generator=generator) for i in range(len(images))]
    assert torch.equal(batched.adversarial, torch.cat([a.adversarial for a in alone]))
    assert torch.equal(batched.queries, torch.cat([a.queries for a in alone]))  # the first image's too
    # success is judged once more on the adversarials, a batch of 4 against batches of 1 (other kernels, and
    # HopSkipJump's points lie on the boundary): the same images, so judge them alike
    assert batched.success.any()  # it breaks something at this budget


def test_cw_abort_early_must_be_a_bool():
    with pytest.raises(InvalidArgument, match="abort_early"):
        CarliniWagnerL2(abort_early="no")
