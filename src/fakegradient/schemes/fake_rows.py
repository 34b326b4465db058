"""The fake-row family: the head gets N fake rows (Algorithm 1 or a variant) and its 2N rows are permuted by a
secret key (Algorithm 2); the device keeps the :class:`~fakegradient.key.Key` (Algorithm 3).

A variant is one :class:`FakeRows` entry below and one row function in :mod:`fakegradient.core.fake_rows`
(``W_F (N, D), b_F (N,)`` from the head's ``W_o, b_o``). Torch is imported when a model is protected.
"""

from __future__ import annotations

import copy
import importlib
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import defaults
from ..errors import HeadNotFound, InvalidArgument
from ..key import Key
from . import register
from .base import Capabilities, Scheme

if TYPE_CHECKING:
    import torch
    from torch import nn

FAKE_BIASES = ("paper", "official")  # b_F = b_o (the paper's text), or the released code's bias


@dataclass(frozen=True, eq=False, repr=False)
class FakeRows(Scheme):
    """One variant of the fake-row family. ``rows`` names its function in :mod:`fakegradient.core.fake_rows`,
    called ``rows(W_o, b_o[, scale][, generator])``: with ``scale`` when the capabilities say ``uses_scale``,
    with the generator when they say ``random`` (as a keyword when both)."""

    name: str
    display: str
    help: str
    rows: str
    capabilities: Capabilities
    control: bool = False
    in_paper: bool = False
    paper: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    secret_type: type[Key] = Key

    def params(self) -> dict[str, Any]:
        return {"scale": defaults.SCALE, "fake_bias": "paper"}

    def fake_rows(self, weight: torch.Tensor, bias: torch.Tensor, *, scale: float,
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Fake rows (N, D), (N,) for a head (N, D), (N,)."""
        function: Callable = getattr(importlib.import_module("..core.fake_rows", __package__), self.rows)
        uses_scale, random = self.capabilities.uses_scale, self.capabilities.random
        if uses_scale:
            return function(weight, bias, scale, generator=generator) if random else function(weight, bias, scale)
        return function(weight, bias, generator)

    def encrypted_head(self, weight: torch.Tensor, bias: torch.Tensor, *, scale: float = defaults.SCALE,
                       seed: int | None = None, fake_bias: str = "paper",
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Algorithms 1+2 on a head: (N, D), (N,) → W_en (2N, D), b_en (2N,), permutation (2N,).
        ``fake_bias="official"`` replaces b_F = b_o by the released code's bias (variants that copy b_o)."""
        import torch

        from ..core.fake_rows import official_fake_bias
        from ..core.permutation import encrypt_rows, generate_permutation

        if fake_bias not in FAKE_BIASES:
            raise InvalidArgument(f"fake_bias must be one of {', '.join(FAKE_BIASES)}, got {fake_bias!r}")
        generator = torch.Generator().manual_seed(secrets.randbits(63) if seed is None else seed)
        fake_w, fake_b = self.fake_rows(weight, bias, scale=scale, generator=generator)
        if fake_bias == "official" and self.capabilities.official_bias:
            fake_b = official_fake_bias(bias, scale)
        permutation = generate_permutation(2 * weight.shape[0], seed)
        w_en = encrypt_rows(torch.cat([weight, fake_w]), permutation)
        b_en = encrypt_rows(torch.cat([bias, fake_b]), permutation)
        return w_en, b_en, torch.from_numpy(permutation)

    def protect(self, model: nn.Module, *, head: str | None = None, example_input: torch.Tensor | None = None,
                seed: int | None = None, labels: Sequence[str] | None = None, scale: float = defaults.SCALE,
                fake_bias: str = "paper") -> tuple[nn.Module, Key]:
        """A copy of ``model`` (eval mode) whose head has 2N outputs, real and fake in the key's order, and the
        key. A model returning a ``ModelOutput`` (Hugging Face) is protected as one returning its logits
        (B, 2N), under the name ``model`` (its head: ``model.<head>``)."""
        from ..core.fake_rows import check_scale
        from ..core.fingerprint import head_fingerprint, keyed_fingerprint, new_fingerprint_key
        from ..head import as_tensor_model, build_head, head_parameters, probe_input, replace_module, trace_head

        scale = check_scale(scale)
        protected = copy.deepcopy(model).eval()
        x = probe_input(protected, example_input)
        wrapped = as_tensor_model(protected, x)  # a Hugging Face model returns a ModelOutput: serve its logits
        if wrapped is not protected:
            protected, head = wrapped, None if head is None else f"model.{head}"
        trace = trace_head(protected, x, head)
        layer = protected.get_submodule(trace.head)
        weight, bias = head_parameters(layer)
        w_en, b_en, permutation = self.encrypted_head(weight, bias, scale=scale, seed=seed, fake_bias=fake_bias)
        protected = replace_module(protected, trace.head, build_head(layer, w_en, b_en))  # a new root if head ""
        fingerprint_key = new_fingerprint_key(seed)
        key = Key(permutation=permutation.numpy(), n_real=weight.shape[0], method=self.name,
                  scale=scale if self.capabilities.uses_scale else None,  # the other variants do not use S_a
                  model_fingerprint=keyed_fingerprint(head_fingerprint(w_en, b_en), fingerprint_key),
                  head=trace.head, seeded=seed is not None, labels=labels, fingerprint_key=fingerprint_key)
        _check_decrypts(protected, key, x, trace.output)
        return protected, key

    def served_digest(self, served: nn.Module, head: str) -> str:
        from ..core.fingerprint import head_fingerprint
        from ..head import check_head, head_parameters

        return head_fingerprint(*head_parameters(check_head(served, head)))

    def rebuild(self, model: nn.Module, head: str, n_outputs: int) -> nn.Module:
        import torch

        from ..head import build_head, check_head, head_parameters, replace_module

        layer = check_head(model, head)
        weight, _ = head_parameters(layer)
        placeholder = torch.zeros(n_outputs, weight.shape[1], dtype=weight.dtype)
        return replace_module(model, head, build_head(layer, placeholder, placeholder[:, 0]))


def _check_decrypts(protected: nn.Module, key: Key, x: torch.Tensor, expected: torch.Tensor) -> None:
    import torch

    message = (f"layer {key.head!r} does not produce the model's logits directly "
               "(the protected model would not decrypt to the original); pass head= to choose another")
    with torch.no_grad():
        try:
            out = protected(x)
        except RuntimeError:  # e.g. a later layer cannot take 2N inputs
            raise HeadNotFound(message) from None
    out = out[0] if isinstance(out, (tuple, list)) else out
    out = out.reshape(out.shape[0], -1)
    if out.shape[-1] != key.n_outputs or not torch.allclose(
            key.decrypt(out), expected.reshape(out.shape[0], -1), rtol=1e-4, atol=1e-4):
        raise HeadNotFound(message)


PAPER_COLUMNS = ("ResNet34", "ResNet18", "DenseNet121", "VGG19", "VGG11", "MobileNet", "GoogLeNet")


def paper_values(**rows: list[float]) -> dict[str, dict[str, float]]:
    """The paper's Table 1 values: metric → column → value."""
    return {metric: dict(zip(PAPER_COLUMNS, values)) for metric, values in rows.items()}


_SCALED = Capabilities(fakes_win=True, uses_scale=True, random=False, official_bias=True, browser=True)

register(FakeRows(
    "fake-gradient", "Fake Gradient", "the paper's Algorithm 1: mirrored, scaled fake rows (S_a)",
    rows="fake_gradient_rows", capabilities=_SCALED, in_paper=True,
    paper=paper_values(fake_output_pct=[100] * 7, original_functionality_pct=[100] * 7,
                       defense_success_pct=[90.5, 92.1, 94.9, 79.8, 82.9, 87.1, 84.8],
                       rho_mean=[0.0010, 0.0009, 0.0008, 0.0015, 0.0015, 0.0012, 0.0015])), origin=__name__)
register(FakeRows(
    "random-weight", "Random Weight", "the paper's baseline: Gaussian fake rows fitted to W_o",
    rows="random_weight_rows", capabilities=Capabilities(official_bias=True, browser=True), in_paper=True,
    paper=paper_values(fake_output_pct=[1, 1, 0, 0, 0, 0, 6], original_functionality_pct=[100] * 7,
                       defense_success_pct=[1.2, 11.4, 0, 0, 0, 0, 22.5],
                       rho_mean=[0.0019, 0.0016, 0.0017, 0.0017, 0.0020, 0.0012, 0.0017])), origin=__name__)
register(FakeRows(
    "fake-gradient-hardened", "Fake Gradient, hardened (ours)",
    "ours: shuffled mixtures of real rows, no pairing oracle in the file", rows="hardened_rows",
    capabilities=Capabilities(browser=True)), origin=__name__)
register(FakeRows(
    "scaled-copy", "Scaled Copy (control)", "control: W_F = S_a W_o, b_F = b_o (rejected in the paper's §4.4.1)",
    rows="scaled_copy_rows", capabilities=_SCALED, control=True), origin=__name__)
register(FakeRows(
    "random-decoy", "Random Decoy (control)",
    "control: random positive rows with Algorithm 1's row norms (S_a), unrelated to W_o",
    rows="random_decoy_rows", capabilities=Capabilities(fakes_win=True, uses_scale=True, official_bias=True,
                                                        browser=True), control=True), origin=__name__)
