"""What an evaluation runs: a frozen, fully validated :class:`EvaluationConfig` and its samples.

Every field carries its CLI help (``metadata["help"]``): ``fakegradient evaluate`` builds its flags
from these fields, so defaults and help live here and in :mod:`fakegradient.defaults` only.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .. import defaults
from .._lazy import missing_message
from ..data import Sample, bundled_photos, foolbox_imagenet, image_folder
from ..errors import ConfigError, InvalidArgument
from ..methods import METHODS, ORIGINAL, PAPER_METHODS

BIASES = ("paper", "official")  # b_F = b_o (the paper's text) | S_a (max b - |b|) sign(b) (the released code)
SPACES = ("pixel", "normalized")  # where the naive DeepFool runs: [0, 1] pixels | the normalised tensor
RUNTIMES = ("torch", "onnxruntime")  # what answers forward passes without a graph (evaluation/runtimes.py)
PHOTOS_DATA = "photos"  # the 20 labelled foolbox photos + the unlabelled photos bundled in installed packages


def _opt(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


@dataclass(frozen=True)
class EvaluationConfig:
    models: tuple[str, ...] = _opt((defaults.EMBEDDED_SPEC,), "comma-separated name[:weights]", list=True)
    methods: tuple[str, ...] = _opt(PAPER_METHODS, "comma-separated: " + ", ".join(METHODS), list=True)
    data: str = _opt(defaults.EMBEDDED_DATA, f"an ImageFolder (ImageNet val layout), {defaults.EMBEDDED_DATA} (the "
                                             f"20 labelled photos in foolbox) or {PHOTOS_DATA} (those + the "
                                             "unlabelled photos bundled in matplotlib, scikit-learn and scikit-image)")
    limit: int | None = _opt(None, "use the first N images", type=int)
    seed: int | None = _opt(None, "reproducible keys and random rows (NOT secure); default: drawn per run",
                            type=int)
    scale: float = _opt(defaults.SCALE, "S_a of Algorithm 1")
    candidates: int = _opt(defaults.CANDIDATES, "DeepFool's candidate classes (top-k of the attacked outputs)")
    overshoot: float = _opt(defaults.OVERSHOOT, "DeepFool's overshoot on the accumulated perturbation")
    max_iter: int = _opt(defaults.MAX_ITER, "DeepFool's iterations per image")
    clip: bool = _opt(False, "clip adversarial images to [0, 1] (the reference DeepFool does not)")
    bias: str = _opt("paper", "fake biases of the methods with b_F = b_o: paper (b_F = b_o, the paper's text) or "
                              "official (b_F = S_a (max b - |b|) sign(b), the released code)")
    space: str = _opt("pixel", "where the naive DeepFool runs: pixel ([0, 1] images) or normalized (the "
                               "normalised tensor, as the released code); ρ is reported in both")
    batch_size: int | None = _opt(None, f"images per attack batch and per shard (default: "
                                        f"{defaults.BATCH_SIZE_CPU} on CPU, where larger is slower; "
                                        f"{defaults.BATCH_SIZE_CUDA} on CUDA)", type=int)
    device: str = _opt("cpu", "cpu, cuda, cuda:1, ...")
    heatmap_images: int = _opt(defaults.HEATMAP_IMAGES, "images in the Fig. 6 heatmaps")
    timing_repeats: int = _opt(defaults.TIMING_REPEATS, "timed forward passes per model (Fig. 8)")
    adaptive: bool = _opt(False, "also run the scheme x attacker matrix (evaluation/stages/attackers.py): "
                                 "transfer, key recovery x4, PGD, EOT-PGD, APGD, C&W, feature space, Square, "
                                 "HopSkipJump, sanity; needs the original among --methods (the baselines)")
    budget_factor: float = _opt(defaults.BUDGET_FACTOR, "white-box L2 budget (PGD, EOT-PGD, APGD, C&W, feature "
                                                        "space), in multiples of the median DeepFool ‖r‖₂ on the "
                                                        "original")
    iterative_steps: int = _opt(defaults.ITERATIVE_STEPS, "steps of PGD, EOT-PGD and APGD")
    blackbox_queries: int = _opt(defaults.BLACKBOX_QUERIES, "queries per image of the black-box attacks "
                                                            "(Square, HopSkipJump)")
    blackbox_factor: float = _opt(defaults.BLACKBOX_FACTOR, "black-box L2 budget, in multiples of the median "
                                                            "DeepFool ‖r‖₂ on the original")
    attacker_images: tuple[str, ...] = _opt((), "name=N,...: run these adaptive attackers on the first N images "
                                               "only (expensive ones, e.g. hopskipjump=2,square=4; 0: not at all; "
                                               "default: all)",
                                            list=True)
    feature_steps: int = _opt(defaults.FEATURE_STEPS, "PGD steps of the feature-space attack")
    feature_restarts: int = _opt(defaults.FEATURE_RESTARTS, "random restarts of the feature-space attack")
    channels_last: bool = _opt(False, "every model's convolution weights in the channels-last memory layout: faster "
                                      "on CPU (reports/matrix_speed_mobilenet_v2_channels_last/), but another "
                                      "rounding, so a borderline attack decision can differ from a run without it")
    query_runtime: str = _opt("torch", "what answers every forward pass made without a graph (black-box queries, "
                                       "success judgements, timings): torch, or onnxruntime (each pipeline's trunk "
                                       "exported to ONNX and run on the CPU, as an inference server runs it, its head "
                                       "in torch: faster, another rounding); gradients always come from torch")

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise once, here
        set_(self, "models", tuple(self.models))
        set_(self, "methods", tuple(self.methods))
        if self.batch_size is None:
            set_(self, "batch_size", defaults.batch_size(self.device))
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ConfigError("methods", f"methods: unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
        if not self.methods or not self.models:
            raise InvalidArgument("give at least one model and one method")
        for name, low in (("limit", 1), ("batch_size", 1), ("max_iter", 1), ("candidates", 2),
                          ("heatmap_images", 0), ("timing_repeats", 2), ("blackbox_queries", 1),
                          ("feature_steps", 1), ("feature_restarts", 1), ("iterative_steps", 1)):
            value = getattr(self, name)
            if value is None and name == "limit":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                why = " (a median and an IQR)" if name == "timing_repeats" else ""
                raise ConfigError(name, f"{name} must be an integer >= {low}{why}, got {value!r}")
        for name, choices in (("bias", BIASES), ("space", SPACES), ("query_runtime", RUNTIMES)):
            if getattr(self, name) not in choices:
                raise ConfigError(name, f"{name} must be one of {', '.join(choices)}, got {getattr(self, name)!r}")
        if self.query_runtime == "onnxruntime" and self.device != "cpu":
            raise ConfigError("query_runtime", f"query_runtime onnxruntime runs on the CPU; --device is {self.device}")
        if self.query_runtime == "onnxruntime" and importlib.util.find_spec("onnxruntime") is None:
            raise ConfigError("query_runtime", missing_message("query_runtime onnxruntime", "eval"))
        if self.clip and self.space == "normalized":
            raise ConfigError("clip", "clip works in pixel space only: DeepFool's clip is one (low, high) for all "
                                  "channels, the normalised tensor's bounds differ per channel")
        set_(self, "attacker_images", tuple(self.attacker_images))
        self.images_per_attacker  # validates
        if self.adaptive and ORIGINAL not in self.methods:
            raise ConfigError("adaptive", "adaptive needs the original among the methods: every attacker's row has its "
                                  "sanity baseline, the same attack on the unprotected model")
        for name, positive in (("scale", True), ("overshoot", False), ("blackbox_factor", True),
                               ("budget_factor", True)):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0 or (
                    positive and value == 0):
                raise ConfigError(name, f"{name} must be finite and "
                                      f"{'> 0' if positive else '>= 0'}, got {value!r}")

    @property
    def images_per_attacker(self) -> dict[str, int]:
        """``attacker_images`` as attacker → N (the names are checked against the registry when it runs)."""
        out = {}
        for item in self.attacker_images:
            name, _, count = item.partition("=")
            if not name or not count.isdigit() or name in out:
                raise ConfigError("attacker_images", f"attacker_images: expected distinct name=N with N >= 0, "
                                  f"got {item!r}")
            out[name] = int(count)
        return out

    def command(self) -> str:
        """The ``fakegradient evaluate`` flags that give this config (those that differ from the defaults)."""
        parts = ["fakegradient evaluate"]
        for f in fields(self):
            value = getattr(self, f.name)
            default = tuple(f.default) if isinstance(f.default, (tuple, list)) else f.default
            if value == default or (f.name == "batch_size" and value == defaults.batch_size(self.device)):
                continue
            flag = "--" + f.name.replace("_", "-")
            parts.append(flag if isinstance(value, bool) else
                         f"{flag} {','.join(value) if isinstance(value, tuple) else value}")
        return " ".join(parts)

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Each setting that has a default → that default (what a run recorded before the setting existed did)."""
        return {f.name: f.default for f in fields(cls) if f.default is not MISSING}

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able settings (results.json, Ray workers, --resume)."""
        data = asdict(self)
        data["models"], data["methods"] = list(self.models), list(self.methods)
        data["attacker_images"] = list(self.attacker_images)
        data["data"] = self.data if self.data in (defaults.EMBEDDED_DATA, PHOTOS_DATA) else str(Path(self.data))
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvaluationConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def load_samples(config: EvaluationConfig) -> list[Sample]:
    """The images ``config`` names (labelled, or ``label=None``), the first ``config.limit`` of them."""
    if config.data in (defaults.EMBEDDED_DATA, PHOTOS_DATA):
        samples = foolbox_imagenet() + (bundled_photos() if config.data == PHOTOS_DATA else [])
        return samples[: config.limit] if config.limit else samples
    return image_folder(config.data, config.limit)
