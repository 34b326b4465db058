"""The two halves of a protection scheme: :class:`Scheme` (torch side: what the cloud gets) and :class:`Secret`
(numpy side: what the device keeps), with what a scheme declares about itself in :class:`Capabilities`.

Torch-free at import: a device install (numpy + Pillow) reads secrets through this module; a scheme imports
torch inside :meth:`Scheme.protect` only.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from ..errors import KeyMismatch

if TYPE_CHECKING:
    import torch
    from torch import nn

Served = Literal["logits", "features"]


@dataclass(frozen=True)
class Capabilities:
    """What a scheme declares, so that no caller infers it from a type.

    ``serves``: the served model's output, the 2N permuted logits (``logits``) or the trunk's features
    (``features``). ``head_rows``: the served model ends in the protected head's rows, which a file-only
    attacker can read. ``fakes_win``: by design a fake output wins on natural images (public knowledge an
    attacker may use). ``uses_scale``: S_a applies. ``random``: protection draws from the RNG (``seed`` applies).
    ``official_bias``: b_F = b_o, which the released code's bias may replace (``fake_bias="official"``).
    ``browser``: the browser device page can use its secret.
    """

    serves: Served = "logits"
    head_rows: bool = True
    fakes_win: bool = False
    uses_scale: bool = False
    random: bool = True
    official_bias: bool = False
    browser: bool = False


class Secret(ABC):
    """What a device keeps for one protected model (numpy + stdlib only).

    Subclasses set :attr:`FORMAT` (the ``format`` their files declare) and implement the abstract methods; a
    subclass registered with :func:`fakegradient.schemes.register_secret` is read by ``load_secret``.
    """

    FORMAT: ClassVar[str]
    MAX_BYTES: ClassVar[int]  # a larger file is not this kind of secret

    method: str
    n_real: int  # N: the real classes
    head: str  # the head's name in the original model
    model_fingerprint: str  # what the cloud publishes for the served model this secret belongs to
    labels: tuple[str, ...] | None  # the class names, travelling with the secret (None: unknown)

    @property
    @abstractmethod
    def n_outputs(self) -> int:
        """The served model's output width."""

    @property
    def served_classes(self) -> bool:
        """Whether a served position is a class (its winner is what the cloud sees), not a feature."""
        return True

    @abstractmethod
    def decrypt(self, outputs: Any, *, fingerprint: str | None = None) -> Any:
        """(..., n_outputs) served outputs → (..., N) real logits; numpy in, numpy out; torch in, torch out."""

    def decrypt_all(self, outputs: Any, *, fingerprint: str | None = None) -> Any:
        """(..., n_outputs) → every plain output, the N real ones first (then the fakes, where there are any)."""
        return self.decrypt(outputs, fingerprint=fingerprint)

    def top1(self, outputs: np.ndarray, *, fingerprint: str | None = None) -> np.ndarray:
        """(..., n_outputs) served outputs → (...,) the real top-1 class."""
        return np.asarray(self.decrypt(np.asarray(outputs), fingerprint=fingerprint)).argmax(axis=-1)

    def is_fake(self, position: Any) -> np.ndarray:
        """Whether served position(s) hold a fake class (bool, numpy); never for a scheme serving no classes."""
        return np.zeros(np.shape(position), bool)

    def class_positions(self) -> np.ndarray | None:
        """(N,) the served position of each real class, in class order; None where no served output is a class."""
        return None

    def check_fingerprint(self, fingerprint: str) -> None:
        """Raise :class:`KeyMismatch` unless ``fingerprint`` is the one published for this secret's model."""
        if fingerprint != self.model_fingerprint:
            raise KeyMismatch(f"this {self.describe_kind()} belongs to another model: it is for model "
                              f"{self.model_fingerprint[:16]}…, the outputs come from {str(fingerprint)[:16]}…")

    def describe_kind(self) -> str:
        """A few words naming the kind of secret, for messages."""
        return "key"

    def label(self, index: int) -> str:
        """The name of class ``index``, or ``class <index>``."""
        labels = self.labels
        return str(labels[index]) if labels and 0 <= index < len(labels) else f"class {index}"

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """What the file holds, without the secret itself (printed by ``fakegradient info``)."""

    @abstractmethod
    def to_bytes(self) -> bytes:
        """The file's bytes."""

    @classmethod
    @abstractmethod
    def from_bytes(cls, data: bytes, source: str = "secret") -> Secret:
        """Parse a file's bytes; any defect is a one-line :class:`~fakegradient.errors.KeyFileError`."""

    @classmethod
    @abstractmethod
    def sniff(cls, prefix: bytes) -> bool:
        """Whether a file starting with ``prefix`` (its first :data:`SNIFF_BYTES` at most) declares this format."""

    def save(self, path: str | os.PathLike, *, replace: bool = False) -> None:
        """Write atomically, readable by the owner only (0600); an existing file only with ``replace``."""
        from ..secret_files import write_secret

        write_secret(path, self.to_bytes(), replace=replace)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Secret:
        """Read a regular file of at most :attr:`MAX_BYTES`; warns when group or others may read it."""
        import logging

        from ..secret_files import read_private_file, warn_if_shared

        kind = cls.FORMAT.removeprefix("fakegradient-")
        data, mode = read_private_file(path, cls.MAX_BYTES, f"{kind} file")
        secret = cls.from_bytes(data, source=f"{kind} file {path}")
        warn_if_shared(logging.getLogger(cls.__module__), path, mode, f"{kind} file",
                       "can decrypt the model's outputs")
        return secret


SNIFF_BYTES = 64 * 2**10  # enough for any secret's header


def check_labels(labels: Any, n_real: int) -> tuple[str, ...] | None:
    """``labels`` as a tuple of N strings (or None); ValueError otherwise."""
    if labels is None:
        return None
    if isinstance(labels, (str, bytes)) or not isinstance(labels, Sequence) or len(labels) != n_real:
        raise ValueError(f"labels must be a list of {n_real} strings")
    if not all(isinstance(name, str) for name in labels):
        raise ValueError("labels must be strings")
    return tuple(labels)


class Scheme(ABC):
    """A protection scheme, torch side: how a model is protected and how its served module is rebuilt.

    ``name`` is the registry key (``--method``), ``display`` the report's name, ``help`` one line for the CLI.
    ``control``: an ablation, not a protection to deploy. ``candidate``: a design under study, not offered by
    ``fakegradient protect`` yet. ``in_paper``: one of the paper's three columns.
    ``paper``: the paper's Table 1 values (metric → column → value) where it has them.
    """

    name: str
    display: str
    help: str
    capabilities: Capabilities
    secret_type: type[Secret]
    control: bool = False
    candidate: bool = False
    in_paper: bool = False
    paper: Mapping[str, Mapping[str, float]] = {}
    protects: ClassVar[bool] = True

    @property
    def output_name(self) -> str:
        """The served model's output name in model.onnx."""
        return self.capabilities.serves

    @abstractmethod
    def protect(self, model: nn.Module, *, head: str | None = None, example_input: torch.Tensor | None = None,
                seed: int | None = None, labels: Sequence[str] | None = None,
                **params: Any) -> tuple[nn.Module, Secret]:
        """``(served module, secret)``; ``model`` itself is never modified. ``seed`` (experiments, NOT secure)
        makes the secret reproducible; ``labels`` travel with the secret; ``params`` are the scheme's own."""

    @abstractmethod
    def served_digest(self, served: nn.Module, head: str) -> str:
        """The public digest of what is secret-dependent in ``served`` (what the keyed fingerprint covers)."""

    @abstractmethod
    def rebuild(self, model: nn.Module, head: str, n_outputs: int) -> nn.Module:
        """``model`` (the base architecture) shaped as the served module, ready for its state dict."""

    def fingerprint(self, served: nn.Module, secret: Secret) -> str:
        """What the bundle publishes for ``served``: its digest keyed with ``secret``'s fingerprint key."""
        from ..core.fingerprint import keyed_fingerprint

        digest = self.served_digest(served, secret.head)
        key = getattr(secret, "fingerprint_key", None)
        return digest if key is None else keyed_fingerprint(digest, key)

    def params(self) -> dict[str, Any]:
        """The scheme's own ``protect`` parameters and their defaults (for the CLI and the evaluation)."""
        return {}

    def __repr__(self) -> str:
        return f"<scheme {self.name}>"
