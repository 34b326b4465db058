"""Attacks, one a file, on batched pixel-space tensors (B, C, H, W) in [0, 1]."""

from .._lazy import lazy

_EXPORTS = {"Attack": ".base", "AttackResult": ".base", "norms": ".base", "DeepFool": ".deepfool",
            "FeatureSpacePGD": ".feature_space", "recover_real_rows": ".key_recovery",
            "RecoveredRows": ".key_recovery", "square_attack": ".blackbox"}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy(__name__, _EXPORTS, __all__)
