"""A toy scheme with a new kind of secret, written as a module under ``fakegradient/schemes/`` would be: the
served logits are the real ones under a secret affine map, ``served = a * logits + c`` per class (a > 0), and the
device undoes it. Not a protection (the order of the classes is public and a > 0 keeps the top-1): it exists to
show that a scheme is one module plus one registry entry (tests/test_schemes.py)."""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from fakegradient.errors import KeyFileError, KeyMismatch
from fakegradient.schemes.base import Capabilities, Scheme, Secret, check_labels

FORMAT = "toy-affine-secret"


@dataclass(frozen=True, eq=False)
class AffineSecret(Secret):
    FORMAT: ClassVar[str] = FORMAT
    MAX_BYTES: ClassVar[int] = 2**20

    scale: np.ndarray = field(repr=False)  # a (N,), > 0
    shift: np.ndarray = field(repr=False)  # c (N,)
    head: str
    model_fingerprint: str
    method: str = "toy-affine"
    labels: tuple[str, ...] | None = None
    fingerprint_key: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", check_labels(self.labels, len(self.scale)))

    @property
    def n_real(self) -> int:
        return len(self.scale)

    @property
    def n_outputs(self) -> int:
        return len(self.scale)

    def decrypt(self, outputs: Any, *, fingerprint: str | None = None) -> Any:
        if fingerprint is not None:
            self.check_fingerprint(fingerprint)
        if outputs.shape[-1] != self.n_outputs:
            raise KeyMismatch(f"expected outputs of width {self.n_outputs}, got {outputs.shape[-1]}")
        if hasattr(outputs, "new_tensor"):
            return (outputs - outputs.new_tensor(self.shift)) / outputs.new_tensor(self.scale)
        return ((np.asarray(outputs, np.float64) - self.shift) / self.scale).astype(np.float32)

    def describe(self) -> dict[str, Any]:
        return {"format": FORMAT, "method": self.method, "n_real": self.n_real, "head": self.head,
                "model_fingerprint": self.model_fingerprint}

    def to_bytes(self) -> bytes:
        payload = self.describe() | {"scale": self.scale.tolist(), "shift": self.shift.tolist(),
                                     "labels": None if self.labels is None else list(self.labels),
                                     "fingerprint_key": self.fingerprint_key}
        return json.dumps(payload, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "secret") -> AffineSecret:
        try:
            payload = json.loads(data)
            return cls(np.asarray(payload["scale"], np.float64), np.asarray(payload["shift"], np.float64),
                       payload["head"], payload["model_fingerprint"], payload["method"], payload["labels"],
                       payload["fingerprint_key"])
        except (ValueError, KeyError, TypeError) as exc:
            raise KeyFileError(f"{source} is not a toy affine secret ({exc})") from None

    @classmethod
    def sniff(cls, prefix: bytes) -> bool:
        return prefix[:1] == b"{" and f'"format": "{FORMAT}"'.encode() in prefix


@dataclass(frozen=True, eq=False, repr=False)
class AffineScheme(Scheme):
    name: str = "toy-affine"
    display: str = "Toy affine (test)"
    help: str = "test only: the logits under a secret per-class affine map"
    capabilities: Capabilities = Capabilities(head_rows=True, random=True)
    secret_type: type[AffineSecret] = AffineSecret
    control: bool = True  # not offered by `fakegradient protect`

    def protect(self, model, *, head=None, example_input=None, seed=None, labels=None):
        import torch

        from fakegradient.core.fingerprint import keyed_fingerprint, new_fingerprint_key
        from fakegradient.head import build_head, head_parameters, probe_input, replace_module, trace_head

        served = copy.deepcopy(model).eval()
        trace = trace_head(served, probe_input(served, example_input), head)
        layer = served.get_submodule(trace.head)
        weight, bias = head_parameters(layer)
        rng = np.random.default_rng(seed)
        scale, shift = rng.uniform(0.5, 2.0, len(bias)), rng.normal(0.0, 3.0, len(bias))
        a, c = torch.tensor(scale, dtype=weight.dtype), torch.tensor(shift, dtype=weight.dtype)
        served = replace_module(served, trace.head, build_head(layer, weight * a[:, None], bias * a + c))
        fingerprint_key = new_fingerprint_key(seed)
        fingerprint = keyed_fingerprint(self.served_digest(served, trace.head), fingerprint_key)
        return served, AffineSecret(scale, shift, trace.head, fingerprint, labels=labels,
                                    fingerprint_key=fingerprint_key)

    def served_digest(self, served, head):
        from fakegradient.head import check_head, head_parameters

        weight, bias = head_parameters(check_head(served, head))
        data = weight.detach().float().numpy().tobytes() + bias.detach().float().numpy().tobytes()
        return hashlib.sha256(data).hexdigest()

    def rebuild(self, model, head, n_outputs):
        return model  # same shape as the original


SCHEME = AffineScheme()  # registered by the test with fakegradient.schemes.register (the one registry entry)
