"""Feature-space attack: needs no key. L2 PGD pushing the penultimate features away from the clean ones.

The features are the input of the served model's head, whose name is public (it is in the
graph). The API takes only the served model: there is no way to hand it a key.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class FeatureSpacePGD:
    """Maximise ‖φ(x + r) − φ(x)‖₂ subject to ‖r‖₂ ≤ eps (per sample) and x + r ∈ [0, 1]."""

    steps: int = 20
    step_fraction: float = 2.5  # step size = step_fraction * eps / steps (Madry et al.)
    seed: int = 0  # of the random start (restarts use different seeds)

    def __call__(self, served: nn.Module, head: str, images: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """images (B, C, H, W) in [0, 1], eps (B,) → adversarial images (B, C, H, W)."""
        layer = served.get_submodule(head)
        captured: list[torch.Tensor] = []
        hook = layer.register_forward_hook(lambda _m, inputs, _o: captured.append(inputs[0]))
        try:
            with torch.no_grad():
                served(images)
            clean = captured.pop().detach().flatten(1)
            shape = (-1,) + (1,) * (images.dim() - 1)
            eps = eps.to(images.device).view(shape)
            step = self.step_fraction * eps / self.steps
            g = torch.Generator(device="cpu").manual_seed(self.seed)
            r = torch.randn(images.shape, generator=g).to(images.device)
            r = r / r.flatten(1).norm(dim=1).view(shape) * eps * 0.01
            for _ in range(self.steps):
                r.requires_grad_(True)
                served((images + r).clamp(0, 1))
                loss = (captured.pop().flatten(1) - clean).pow(2).sum()
                (grad,) = torch.autograd.grad(loss, r)
                with torch.no_grad():
                    r = r + step * grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(shape)
                    norm = r.flatten(1).norm(dim=1).view(shape)
                    r = r * torch.clamp(eps / norm.clamp_min(1e-12), max=1.0)
                    r = (images + r).clamp(0, 1) - images
            return (images + r).detach()
        finally:
            hook.remove()
