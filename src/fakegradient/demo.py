"""``make demo``: protect MobileNetV2 (ImageNet) and classify the 20 photos shipped in foolbox."""

from __future__ import annotations

import torch

from . import models
from .classify import predictions
from .data import foolbox_imagenet, load_batch
from .models import EMBEDDED_MODEL, EMBEDDED_WEIGHTS
from .protection import protect


@torch.no_grad()
def run_demo(seed: int | None = None) -> dict[str, float]:
    """Print a per-image table and return the fake-output and functionality rates (0..1)."""
    weights = models.get_weights(EMBEDDED_MODEL, EMBEDDED_WEIGHTS)
    model = models.load(EMBEDDED_MODEL, weights=weights)
    categories = weights.meta["categories"]
    protected, key = protect(model, seed=seed)
    samples = foolbox_imagenet()
    images = load_batch([s.path for s in samples], weights.transforms())
    original_logits = model(images)
    original = original_logits.argmax(1).tolist()
    encrypted = protected(images)
    preds = predictions(key, encrypted.numpy(), k=1)
    max_diff = (key.decrypt(encrypted) - original_logits).abs().max().item()

    def name(i: int) -> str:
        return categories[i][:22]

    print(f"{EMBEDDED_MODEL} ({weights}) protected with Fake Gradient: "
          f"{key.n_real} real + {key.n_real} fake outputs, key fingerprint {key.model_fingerprint[:12]}")
    print(f"{'image':<22} {'true label':<23} {'original top-1':<23} {'cloud top-1':>11} {'fake?':>5}  decrypted top-1")
    for sample, orig, pred in zip(samples, original, preds):
        decrypted = pred.topk[0][0]
        print(f"{sample.path.name:<22} {name(sample.label):<23} {name(orig):<23} "
              f"{pred.encrypted_top1:>11} {'yes' if pred.encrypted_top1_is_fake else 'NO':>5}  "
              f"{name(decrypted)}{'' if decrypted == orig else '  (MISMATCH)'}")
    n = len(samples)
    rates = {
        "fake_output": sum(p.encrypted_top1_is_fake for p in preds) / n,
        "original_functionality": sum(p.topk[0][0] == o for p, o in zip(preds, original)) / n,
        "original_accuracy": sum(o == s.label for o, s in zip(original, samples)) / n,
    }
    print(f"fake output {rates['fake_output']:.0%} · original functionality {rates['original_functionality']:.0%}"
          f" · original model accuracy on these photos {rates['original_accuracy']:.0%} ({n} images)")
    print(f"decrypted logits vs the original model's: max |difference| {max_diff:.2e} (at most float rounding: the "
          "protected head is a different GEMM)")
    rates["max_abs_logit_difference"] = max_diff
    return rates
