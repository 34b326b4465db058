"""Candidate design (ours, experimental): **secret mixing of the logits** — the served head is ``Q W``, ``Q b``
with Q a secret random N×N orthogonal matrix, so that every served output is a dense mixture of all the real
logits and none of them is a class: there is no real row to discover (by noise queries, by "never wins" or by a
row statistic), and the served model's top-1 and decision boundaries are not the real ones. The device undoes
it exactly (``z = y Q``, Q orthogonal, so no solve and no ill-conditioning).

The device keeps only a 32-byte seed (:class:`MixingKey`): Q is the Q of the QR decomposition of an N×N Gaussian
matrix drawn from SHAKE-256(seed) (stdlib + numpy only, the same on every platform), sign-fixed so that it is
unique. Built once per key (≈ N² hash bytes and one QR), then N² multiply-adds per image. Torch is imported when
a model is protected.
"""

from __future__ import annotations

import copy
import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..errors import KeyFileError, KeyMismatch
from . import _json_secret, register
from .base import Capabilities, Scheme, Secret, check_labels

if TYPE_CHECKING:
    import torch
    from torch import nn

FORMAT = "fakegradient-mixing-key"
MAX_CLASSES = 22_000  # ImageNet-21k; Q is N×N float64 (3.9 GB at this N); larger is not a mixing key


def mixing_matrix(seed_hex: str, n: int) -> np.ndarray:
    """(n, n) float64 orthogonal Q from a 64-hex-digit seed: Box–Muller normals from SHAKE-256, then QR."""
    words = np.frombuffer(hashlib.shake_256(b"fakegradient-mixing-v1\0" + bytes.fromhex(seed_hex))
                          .digest(8 * n * n + 8), dtype="<u8")
    uniform = ((words >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53  # (0, 1), never 0
    half = (n * n + 1) // 2
    u1, u2 = uniform[:half], uniform[half:2 * half]
    radius = np.sqrt(-2.0 * np.log(u1))
    normals = np.concatenate([radius * np.cos(2 * np.pi * u2), radius * np.sin(2 * np.pi * u2)])[: n * n]
    q, r = np.linalg.qr(normals.reshape(n, n))
    return q * np.where(np.diag(r) < 0, -1.0, 1.0)  # the unique Q with a positive diagonal R


@dataclass(frozen=True, eq=False)
class MixingKey(Secret):
    """The seed of a secret orthogonal mixing Q of the N logits: served ``y = Q z``; ``decrypt(y) = y Q``."""

    FORMAT: ClassVar[str] = FORMAT
    MAX_BYTES: ClassVar[int] = 8 * 2**20

    mix_seed: str = field(repr=False)
    n_real: int
    head: str
    model_fingerprint: str
    method: str = "mixing"
    labels: tuple[str, ...] | None = None
    fingerprint_key: str | None = field(default=None, repr=False)
    seeded: bool = False

    def __post_init__(self) -> None:
        if not (isinstance(self.mix_seed, str) and _json_secret.HEX64.fullmatch(self.mix_seed)):
            raise KeyFileError("a mixing key's seed must be 64 hex digits")
        if not _json_secret.is_int(self.n_real) or not 2 <= self.n_real <= MAX_CLASSES:
            raise KeyFileError(f"a mixing key needs 2..{MAX_CLASSES} classes, got {self.n_real!r}")
        try:
            object.__setattr__(self, "labels", check_labels(self.labels, self.n_real))
        except ValueError as exc:
            raise KeyFileError(f"mixing key: {exc}") from None
        object.__setattr__(self, "_q", None)

    @property
    def matrix(self) -> np.ndarray:
        """Q (N, N) float64, built on first use."""
        if self._q is None:
            object.__setattr__(self, "_q", mixing_matrix(self.mix_seed, self.n_real))
        return self._q

    @property
    def n_outputs(self) -> int:
        return self.n_real

    @property
    def served_classes(self) -> bool:
        return False  # a served position is a mixture of every class

    def decrypt(self, outputs: Any, *, fingerprint: str | None = None) -> Any:
        """(..., N) served → (..., N) real logits ``y Q`` (numpy float32 or torch, as given)."""
        if fingerprint is not None:
            self.check_fingerprint(fingerprint)
        if outputs.shape[-1] != self.n_outputs:
            raise KeyMismatch(f"expected outputs of width {self.n_outputs}, got {outputs.shape[-1]}")
        if hasattr(outputs, "new_tensor"):
            return outputs @ outputs.new_tensor(self.matrix)
        return (np.asarray(outputs, np.float64) @ self.matrix).astype(np.float32)

    def describe(self) -> dict[str, Any]:
        return _json_secret.describe(self, FORMAT)

    def describe_kind(self) -> str:
        return "mixing key"

    def to_bytes(self) -> bytes:
        return _json_secret.dump_secret(self, FORMAT, {"mix_seed": self.mix_seed})

    @classmethod
    def sniff(cls, prefix: bytes) -> bool:
        return _json_secret.sniffs(prefix, FORMAT)

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "mixing key") -> MixingKey:
        return _json_secret.load_secret(data, FORMAT, source, lambda payload: cls(
            payload["mix_seed"], payload["n_real"], **_json_secret.common_fields(payload)))


@dataclass(frozen=True, eq=False, repr=False)
class MixingScheme(Scheme):
    name: str = "mixing"
    display: str = "Secret mixing (ours)"
    help: str = "experimental: the logits under a secret orthogonal mixing; the device keeps a 32-byte seed"
    capabilities: Capabilities = Capabilities()
    secret_type: type[MixingKey] = MixingKey
    candidate: bool = True  # under measurement (reports/private), not offered by `protect` yet

    def protect(self, model: nn.Module, *, head: str | None = None, example_input: torch.Tensor | None = None,
                seed: int | None = None, labels: Sequence[str] | None = None) -> tuple[nn.Module, MixingKey]:
        """A copy of ``model`` (eval mode) whose head is ``Q W``, ``Q b`` (N outputs, each a mixture), and the key.
        ``seed`` (experiments, NOT secure) fixes Q and the fingerprint key."""
        import torch

        from ..core.fingerprint import keyed_fingerprint, new_fingerprint_key
        from ..head import as_tensor_model, build_head, head_parameters, probe_input, replace_module, trace_head
        from .fake_rows import _check_decrypts

        served = copy.deepcopy(model).eval()
        x = probe_input(served, example_input)
        wrapped = as_tensor_model(served, x)
        if wrapped is not served:
            served, head = wrapped, None if head is None else f"model.{head}"
        trace = trace_head(served, x, head)
        layer = served.get_submodule(trace.head)
        weight, bias = head_parameters(layer)
        mix_seed = (secrets.token_hex(32) if seed is None
                    else hashlib.sha256(f"fakegradient-mixing:{seed}".encode()).hexdigest())
        q = torch.from_numpy(mixing_matrix(mix_seed, weight.shape[0]))
        w_mix = (q @ weight.double().cpu()).to(weight.device, weight.dtype)
        b_mix = (q @ bias.double().cpu()).to(bias.device, bias.dtype)
        served = replace_module(served, trace.head, build_head(layer, w_mix, b_mix))
        fingerprint_key = new_fingerprint_key(seed)
        key = MixingKey(mix_seed, weight.shape[0], trace.head,
                        keyed_fingerprint(self.served_digest(served, trace.head), fingerprint_key), self.name,
                        labels, fingerprint_key, seed is not None)
        _check_decrypts(served, key, x, trace.output)
        return served, key

    def served_digest(self, served: nn.Module, head: str) -> str:
        from ..core.fingerprint import head_fingerprint
        from ..head import check_head, head_parameters

        return head_fingerprint(*head_parameters(check_head(served, head)))

    def rebuild(self, model: nn.Module, head: str, n_outputs: int) -> nn.Module:
        return model  # the same shape as the original


register(MixingScheme(), origin=__name__)
