"""The paper's attacker: DeepFool on the served model (Table 1/2). One shard = one method, b images."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import torch
from torch import nn

from ...attacks.base import norms
from ...attacks.deepfool import DeepFool
from ...data import Sample
from ...errors import InvalidArgument
from ...schemes.base import Secret
from ..pipeline import Normalized
from ..plan import Shard, ShardResult
from ..records import ImageRecord
from ..workbench import Workbench, deepfool


def run(bench: Workbench, shard: Shard, images: torch.Tensor, samples: list[Sample]) -> ShardResult:
    """Records of the shard's images, and the perturbations of those among the heatmap images."""
    pipeline, key = bench.served[shard.method]
    records, perturbation = attack_batch(shard, bench.original, pipeline, key, images, samples,
                                         deepfool(bench.config), bench.config.space)
    keep = max(0, bench.config.heatmap_images - shard.start)
    return ShardResult([asdict(r) for r in records], perturbation[:keep].numpy() if keep else None)


def attack_in_space(attack: DeepFool, served: Normalized, images: torch.Tensor,
                    space: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The attack on the served pipeline: in pixels, or on the normalised tensor z = (x - mean)/std
    fed to the classifier itself (as the released code). Returns the adversarial images in pixel
    space (b, C, H, W), ``x_adv = z_adv·std + mean`` (not clipped), and the attack's iterations (b,)."""
    if space == "pixel":
        result = attack(served, images)
        return result.adversarial, result.iterations
    if space != "normalized":
        raise InvalidArgument(f"unknown attack space {space!r}; pixel or normalized")
    result = attack(served.model, (images - served.mean) / served.std)
    return result.adversarial * served.std + served.mean, result.iterations


def rho_normalized(perturbation: torch.Tensor, images: torch.Tensor, pipeline: Normalized) -> torch.Tensor:
    """(b,) ‖r_z‖₂/‖z‖₂ for pixel images (b, C, H, W) and perturbations: z = (x - mean)/std, r_z = r/std."""
    return norms(perturbation / pipeline.std, (images - pipeline.mean) / pipeline.std)["rho"]


def attack_batch(shard: Shard, original: nn.Module, served: Normalized, key: Secret | None, images: torch.Tensor,
                 samples: list[Sample], attack: DeepFool,
                 space: str = "pixel") -> tuple[list[ImageRecord], torch.Tensor]:
    """DeepFool on the served pipeline for one shard: images (b, C, H, W) → records and perturbations
    (pixel space, whatever ``space`` the attack ran in)."""
    with torch.no_grad():
        original_top1 = original(images).argmax(1)
        clean = served(images)
    adversarial_images, iterations = attack_in_space(attack, served, images, space)
    with torch.no_grad():
        adversarial = served(adversarial_images)
    changed = adversarial.argmax(1) != clean.argmax(1)  # judged by the same forward as the metrics
    plain = clean if key is None else key.decrypt_all(clean)
    n_real = plain.shape[1] if key is None else key.n_real
    real_adv = adversarial if key is None else key.decrypt(adversarial)
    fake = np.zeros(len(images), bool) if key is None else key.is_fake(clean.argmax(1).cpu().numpy())
    r = adversarial_images - images
    sizes = norms(r, images)
    rho_z = rho_normalized(r, images, served)
    records = [
        ImageRecord(
            model=shard.model, method=shard.method, image=samples[i].path.name, label=samples[i].label,
            original_top1=int(original_top1[i]), served_top1=int(clean[i].argmax()), served_top1_fake=bool(fake[i]),
            plain_top1=int(plain[i].argmax()), decrypted_top1=int(plain[i, :n_real].argmax()),
            adversarial_top1=int(real_adv[i].argmax()), attack_changed_served=bool(changed[i]),
            rho=float(sizes["rho"][i]), l2=float(sizes["l2"][i]), linf=float(sizes["linf"][i]),
            iterations=int(iterations[i]), rho_normalized=float(rho_z[i]),
        )
        for i in range(len(images))
    ]
    return records, r.cpu()
