"""Comparisons that hold on any CPU: floats that went through different kernels are compared within
stated tolerances, never bitwise (BLAS and oneDNN pick their summation order per CPU and batch shape)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

# float32 logits of real models, computed by two different kernels (another batch size, ONNX Runtime,
# a GEMM over permuted rows): they differ by rounding only, far below this
LOGIT_ATOL = 1e-4
RECORD_RTOL = 1e-5  # per-image ρ, ‖r‖ of the same attack computed in another process or shard


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def assert_same_top1(logits, reference, atol: float = LOGIT_ATOL) -> None:
    """``logits`` (B, K) equal ``reference`` (B, K) within ``atol``, and their top-1 is the same for every
    row whose reference top-2 margin exceeds 2 * atol (closer rows are ties at this precision)."""
    a, b = _numpy(logits), _numpy(reference)
    np.testing.assert_allclose(a, b, rtol=0, atol=atol)
    top2 = np.sort(b, axis=1)[:, -2:]
    decided = top2[:, 1] - top2[:, 0] > 2 * atol
    assert decided.any(), "every row is a tie: the comparison would check nothing"
    np.testing.assert_array_equal(a.argmax(1)[decided], b.argmax(1)[decided])


def assert_records_close(a: list, b: list, rtol: float = RECORD_RTOL) -> None:
    """Two lists of dataclass records: same length and order, every non-float field equal, floats within
    ``rtol``."""
    assert len(a) == len(b) and len(a) > 0
    for x, y in zip(a, b):
        assert type(x) is type(y)
        for f in dataclasses.fields(x):
            u, v = getattr(x, f.name), getattr(y, f.name)
            if isinstance(u, float):
                assert math.isclose(u, v, rel_tol=rtol, abs_tol=1e-9), (f.name, x, y)
            else:
                assert u == v, (f.name, x, y)


def image_record(method="fake-gradient", image="a", original=0, plain=10, adversarial=0, l2=1.0, model="m"):
    """An evaluation record of one image (the studies' tests): the un-permuted top-1 ``plain``, the real
    top-1 after the attack ``adversarial``, the original top-1 ``original`` (also the label)."""
    from fakegradient.evaluation.records import ImageRecord

    return ImageRecord(model=model, method=method, image=image, label=original, original_top1=original,
                       served_top1=3, served_top1_fake=method != "original", plain_top1=plain,
                       decrypted_top1=original, adversarial_top1=adversarial, attack_changed_served=True,
                       rho=0.01, l2=l2, linf=0.1, iterations=2)
