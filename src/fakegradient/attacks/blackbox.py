"""Score-based black-box attack through ART's Square attack: it sees only the served outputs."""

from __future__ import annotations

import random
import warnings

import numpy as np
import torch
from torch import nn


def square_attack(served: nn.Module, images: torch.Tensor, eps: float, queries: int, norm: float = 2,
                  seed: int = 0) -> torch.Tensor:
    """Untargeted Square attack (Andriushchenko et al. 2020) on the served model's top-1.

    ``queries`` bounds the iterations (one model query per image each); ``eps`` is the L2 (or L∞)
    budget in [0, 1] pixel space. Returns adversarial images (B, C, H, W).
    """
    from art.attacks.evasion import SquareAttack
    from art.estimators.classification import PyTorchClassifier

    with torch.no_grad():
        n_outputs = served(images[:1]).shape[1]
    classifier = PyTorchClassifier(
        model=served, loss=nn.CrossEntropyLoss(), input_shape=tuple(images.shape[1:]), nb_classes=n_outputs,
        clip_values=(0.0, 1.0), device_type="gpu" if images.is_cuda else "cpu")
    attack = SquareAttack(classifier, norm=norm, eps=eps, max_iter=queries, nb_restarts=1,
                          batch_size=len(images), verbose=False)
    # ART draws from numpy's and Python's global generators: fix both, then restore them
    numpy_state, python_state = np.random.get_state(), random.getstate()
    np.random.seed(seed)
    random.seed(seed)
    try:
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            adversarial = attack.generate(images.detach().cpu().numpy())
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)
    return torch.from_numpy(np.asarray(adversarial, dtype=np.float32)).to(images.device)
