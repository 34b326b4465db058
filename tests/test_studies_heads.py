"""studies.heads: the k classes an image's head keeps, and the model restricted to them."""

import numpy as np
import pytest
import torch
from conftest import TinyNet

from fakegradient.errors import InvalidArgument
from studies.heads import class_subset, head_classes, restrict_head


@pytest.mark.parametrize("k", [1, 2, 10, 100, 1000])
def test_class_subset_holds_the_kept_class_and_k_distinct_sorted_classes(k):
    classes = class_subset(k, 417, 1000, np.random.default_rng(3))
    assert len(classes) == k and 417 in classes
    assert np.all(np.diff(classes) > 0) and 0 <= classes[0] and classes[-1] < 1000


def test_class_subset_is_reproducible_per_seed_and_varies_across_seeds():
    a, b = (class_subset(10, 5, 1000, np.random.default_rng(s)) for s in (0, 0))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, class_subset(10, 5, 1000, np.random.default_rng(1)))


@pytest.mark.parametrize("k, keep", [(0, 1), (11, 1), (3, 10), (3, -1)])
def test_class_subset_rejects_impossible_requests(k, keep):
    with pytest.raises(InvalidArgument):
        class_subset(k, keep, 10, np.random.default_rng(0))


def test_head_classes_random_keeps_the_top1_and_top_takes_the_highest_ranked():
    logits = torch.tensor([0.1, 3.0, -1.0, 2.5, 0.7, 2.9])
    assert head_classes("top", 3, logits, 0, 0).tolist() == [1, 3, 5]
    random = head_classes("random", 3, logits, 0, 4)
    assert 1 in random and len(set(random.tolist())) == 3
    assert np.array_equal(random, class_subset(3, 1, 6, np.random.default_rng([0, 3, 4])))  # documented seeding
    assert head_classes("random", 6, logits, 0, 0).tolist() == list(range(6))
    with pytest.raises(InvalidArgument, match="unknown selection"):
        head_classes("nearest", 3, logits, 0, 0)


def test_restricted_head_outputs_the_chosen_rows_and_leaves_the_model_alone(one_torch_thread):
    torch.manual_seed(0)
    model = TinyNet(12).eval()
    x = torch.rand(5, 3, 16, 16)
    classes = np.array([1, 4, 7, 11])
    restricted = restrict_head(model, classes, x[:1])
    with torch.no_grad():
        full, sub = model(x), restricted(x)
    assert sub.shape == (5, 4) and model.fc.out_features == 12
    torch.testing.assert_close(sub, full[:, classes], rtol=1e-5, atol=1e-5)  # a smaller GEMM, same sums
