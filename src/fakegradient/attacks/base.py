"""What every attack returns: per-sample results on batched tensors in pixel space, and their norms."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AttackResult:
    """Per-sample outcome of an attack on a batch of B images (B, C, H, W) in [0, 1].

    ``success``, ``clean_label`` and ``adversarial_label`` are those of the attacked model, or of the
    ``judge`` an adapter was given (e.g. the decrypted real top-1 when the served model is attacked)."""

    adversarial: torch.Tensor  # (B, C, H, W)
    success: torch.Tensor  # (B,) bool: the attacked model's top-1 changed
    iterations: torch.Tensor  # (B,) int64
    clean_label: torch.Tensor  # (B,) the attacked model's top-1 on the clean image
    adversarial_label: torch.Tensor  # (B,) its top-1 on the adversarial image
    queries: torch.Tensor | None = None  # (B,) int64 distinct model queries (query-based attacks), else None
    l2: torch.Tensor | None = None  # (B,) ‖r‖₂ (the library adapters fill it; else use norms())

    def perturbation(self, images: torch.Tensor) -> torch.Tensor:
        return self.adversarial - images


def norms(perturbation: torch.Tensor, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-sample ‖r‖₂, ‖r‖∞ and ρ = ‖r‖₂/‖x‖₂ (the DeepFool paper's and Table 1's "L2")."""
    r = perturbation.flatten(1)
    l2 = r.norm(dim=1)
    return {"l2": l2, "linf": r.abs().amax(dim=1), "rho": l2 / images.flatten(1).norm(dim=1)}
