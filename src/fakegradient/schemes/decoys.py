"""Candidate design (ours, experimental): **decoys that also lose** — 3N served outputs: the N real rows, N
winning fakes (the paper's Algorithm 1) and N losing decoys, in a secret order (:class:`DecoyKey`).

Why: on the paper's scheme the real rows are the ones that never win and whose outputs vary least on noise
(the fakes, scaled by S_a, vary ~10× more): a cloud finds every real row from a few noise queries. Here the fakes
still win on natural images (the naive attacker still attacks them), while each decoy is a shuffled mixture of
real rows (the hardened variant's construction, :func:`~fakegradient.core.fake_rows.hardened_rows`) rescaled
and shifted at protection time so that its mean and spread over noise images match a real row's (each decoy
twinned with one real row, with a jitter so that no pair is exact): "never wins" and "varies little on noise"
then mark 2N rows, of which only half are real. Decryption is a gather of N columns, as for the paper's key;
the secret is a permutation of 3N (≈ 1.5× the paper's key). Torch is imported when a model is protected.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from .. import defaults
from ..core.permutation import decrypt, decrypt_real, inverse_permutation, is_permutation
from ..errors import KeyFileError, KeyMismatch
from . import _json_secret, register
from .base import Capabilities, Scheme, Secret, check_labels

if TYPE_CHECKING:
    import torch
    from torch import nn

FORMAT = "fakegradient-decoy-key"
NOISE_IMAGES = 64  # uniform-noise images the protection sends through the trunk to match the decoys
JITTER = 0.15  # log-normal spread of each decoy's match to its twin (no exact pairs)


@dataclass(frozen=True, eq=False)
class DecoyKey(Secret):
    """A permutation of the 3N served outputs: ``permutation[i]`` is where plain output ``i`` sits; plain
    outputs ``0..N-1`` are the real classes, ``N..2N-1`` the winning fakes, ``2N..3N-1`` the losing decoys."""

    FORMAT: ClassVar[str] = FORMAT
    MAX_BYTES: ClassVar[int] = 12 * 2**20

    permutation: np.ndarray = field(repr=False)
    n_real: int
    head: str
    model_fingerprint: str
    method: str = "decoys"
    labels: tuple[str, ...] | None = None
    fingerprint_key: str | None = field(default=None, repr=False)
    seeded: bool = False

    def __post_init__(self) -> None:
        if not _json_secret.is_int(self.n_real) or self.n_real < 1:
            raise KeyFileError(f"a decoy key needs a positive number of classes, got {self.n_real!r}")
        if not is_permutation(self.permutation, 3 * self.n_real):
            raise KeyFileError(f"decoy key is not a permutation of {3 * self.n_real} outputs")
        try:
            object.__setattr__(self, "labels", check_labels(self.labels, self.n_real))
        except ValueError as exc:
            raise KeyFileError(f"decoy key: {exc}") from None
        object.__setattr__(self, "_inverse", inverse_permutation(self.permutation))

    @property
    def n_outputs(self) -> int:
        return 3 * self.n_real

    def _check(self, outputs: Any, fingerprint: str | None) -> None:
        if fingerprint is not None:
            self.check_fingerprint(fingerprint)
        if outputs.shape[-1] != self.n_outputs:
            raise KeyMismatch(f"expected outputs of width {self.n_outputs} (3N), got {outputs.shape[-1]}")

    def decrypt(self, outputs: Any, *, fingerprint: str | None = None) -> Any:
        """(..., 3N) → (..., N) real logits (numpy or torch, as given)."""
        self._check(outputs, fingerprint)
        return decrypt_real(outputs, self.permutation, self.n_real)

    def decrypt_all(self, outputs: Any, *, fingerprint: str | None = None) -> Any:
        """(..., 3N) → (..., 3N) plain outputs ``[real, fakes, decoys]``."""
        self._check(outputs, fingerprint)
        return decrypt(outputs, self.permutation)

    def is_fake(self, position: Any) -> np.ndarray:
        """Whether served position(s) hold a fake or a decoy."""
        return self._inverse[np.asarray(position)] >= self.n_real

    def is_decoy(self, position: Any) -> np.ndarray:
        return self._inverse[np.asarray(position)] >= 2 * self.n_real

    def class_positions(self) -> np.ndarray:
        return np.asarray(self.permutation[: self.n_real])

    def describe(self) -> dict[str, Any]:
        return _json_secret.describe(self, FORMAT)

    def to_bytes(self) -> bytes:
        return _json_secret.dump_secret(self, FORMAT, {"permutation": self.permutation.tolist()})

    @classmethod
    def sniff(cls, prefix: bytes) -> bool:
        return _json_secret.sniffs(prefix, FORMAT)

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "decoy key") -> DecoyKey:
        def build(payload: dict[str, Any]) -> DecoyKey:
            n_real, permutation = payload["n_real"], payload["permutation"]
            if not (_json_secret.is_int(n_real) and n_real >= 1 and isinstance(permutation, list)
                    and all(_json_secret.is_int(v) for v in permutation)):
                raise ValueError("n_real and permutation must be integers")
            return cls(np.asarray(permutation, np.int64), n_real, **_json_secret.common_fields(payload))
        return _json_secret.load_secret(data, FORMAT, source, build)


def head_inputs(model: nn.Module, head: str, x: torch.Tensor) -> torch.Tensor:
    """(B, D) what the layer ``head`` of ``model`` receives on ``x`` (B, ...)."""
    import torch

    seen: list[torch.Tensor] = []
    hook = model.get_submodule(head).register_forward_hook(lambda _m, inputs, _o: seen.append(inputs[0]))
    try:
        with torch.no_grad():
            model(x)
    finally:
        hook.remove()
    return seen[0].reshape(x.shape[0], -1)


def matched_decoys(weight: torch.Tensor, bias: torch.Tensor, features: torch.Tensor, generator: torch.Generator,
                   jitter: float = JITTER) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoy rows (N, D), (N,) for a head (N, D), (N,) given its inputs on noise (M, D): shuffled mixtures of real
    rows (:func:`hardened_rows`), each rescaled and shifted so that its outputs' spread and mean over the noise
    match those of one real row (a random one-to-one twin) up to a log-normal ``jitter``."""
    import torch

    from ..core.fake_rows import hardened_rows

    rows, _ = hardened_rows(weight, bias, generator)
    w, feats = weight.detach().double().cpu(), features.detach().double().cpu()
    rows = rows.detach().double().cpu()
    real = feats @ w.T + bias.detach().double().cpu()  # (M, N)
    twin = torch.randperm(len(bias), generator=generator)
    spread = real.std(0)[twin]
    own = (feats @ rows.T).std(0).clamp_min(1e-12)
    factor = spread / own * torch.exp(jitter * torch.randn(len(bias), generator=generator, dtype=torch.float64))
    factor = torch.where(own > 1e-12, factor, torch.ones_like(factor))
    rows = rows * factor[:, None]
    shift = jitter * spread * torch.randn(len(bias), generator=generator, dtype=torch.float64)
    decoy_bias = real.mean(0)[twin] - (feats @ rows.T).mean(0) + shift
    return rows.to(weight.dtype).to(weight.device), decoy_bias.to(bias.dtype).to(bias.device)


@dataclass(frozen=True, eq=False, repr=False)
class DecoyScheme(Scheme):
    name: str = "decoys"
    display: str = "Decoys that also lose (ours, 3N)"
    help: str = ("experimental: N winning fakes and N losing decoys matched to the real rows on noise, 3N outputs "
                 "in a secret order")
    capabilities: Capabilities = Capabilities(fakes_win=True, uses_scale=True)
    secret_type: type[DecoyKey] = DecoyKey
    candidate: bool = True  # under measurement (reports/private), not offered by `protect` yet

    def params(self) -> dict[str, Any]:
        return {"scale": defaults.SCALE}

    def protect(self, model: nn.Module, *, head: str | None = None, example_input: torch.Tensor | None = None,
                seed: int | None = None, labels: Sequence[str] | None = None,
                scale: float = defaults.SCALE) -> tuple[nn.Module, DecoyKey]:
        """A copy of ``model`` (eval mode) with 3N outputs in the key's order, and the key. The decoys are matched
        on :data:`NOISE_IMAGES` uniform-noise images shaped like ``example_input``."""
        import secrets

        import torch

        from ..core.fake_rows import check_scale, fake_gradient_rows
        from ..core.fingerprint import head_fingerprint, keyed_fingerprint, new_fingerprint_key
        from ..core.permutation import encrypt_rows, generate_permutation
        from ..head import as_tensor_model, build_head, head_parameters, probe_input, replace_module, trace_head
        from .fake_rows import _check_decrypts

        scale = check_scale(scale)
        served = copy.deepcopy(model).eval()
        x = probe_input(served, example_input)
        wrapped = as_tensor_model(served, x)
        if wrapped is not served:
            served, head = wrapped, None if head is None else f"model.{head}"
        trace = trace_head(served, x, head)
        layer = served.get_submodule(trace.head)
        weight, bias = head_parameters(layer)
        generator = torch.Generator().manual_seed(secrets.randbits(63) if seed is None else seed)
        noise = torch.rand((NOISE_IMAGES, *x.shape[1:]), generator=generator).to(x.device, x.dtype)
        fake_w, fake_b = fake_gradient_rows(weight, bias, scale)
        decoy_w, decoy_b = matched_decoys(weight, bias, head_inputs(served, trace.head, noise), generator)
        permutation = generate_permutation(3 * weight.shape[0], seed)
        w_en = encrypt_rows(torch.cat([weight, fake_w, decoy_w]), permutation)
        b_en = encrypt_rows(torch.cat([bias, fake_b, decoy_b]), permutation)
        served = replace_module(served, trace.head, build_head(layer, w_en, b_en))
        fingerprint_key = new_fingerprint_key(seed)
        key = DecoyKey(permutation, weight.shape[0], trace.head,
                       keyed_fingerprint(head_fingerprint(w_en, b_en), fingerprint_key), self.name, labels,
                       fingerprint_key, seed is not None)
        _check_decrypts(served, key, x, trace.output)
        return served, key

    def served_digest(self, served: nn.Module, head: str) -> str:
        from ..core.fingerprint import head_fingerprint
        from ..head import check_head, head_parameters

        return head_fingerprint(*head_parameters(check_head(served, head)))

    def rebuild(self, model: nn.Module, head: str, n_outputs: int) -> nn.Module:
        from .fake_rows import FakeRows

        return FakeRows.rebuild(self, model, head, n_outputs)  # type: ignore[arg-type]  # same head surgery


register(DecoyScheme(), origin=__name__)
