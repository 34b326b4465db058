"""Attacks, one a file, on batched pixel-space tensors (B, C, H, W) in [0, 1]."""

from .._lazy import lazy

_EXPORTS = {"AttackResult": ".base", "norms": ".base", "DeepFool": ".deepfool",
            "FeatureSpacePGD": ".feature_space", "recover_real_rows": ".key_recovery",
            "RecoveredRows": ".key_recovery",
            # library adapters (foolbox 3, ART), one a file
            "L2PGD": ".pgd", "CarliniWagnerL2": ".cw", "APGD": ".apgd", "SquareAttack": ".square",
            "HopSkipJump": ".hopskipjump", "OutputRows": ".targets", "pair_hypotheses": ".targets",
            # key recovery: known plaintext and blind
            "recover_by_labelled_images": ".known_plaintext", "recover_by_public_weights": ".known_plaintext",
            "recover_by_public_outputs": ".known_plaintext", "recover_by_winners": ".blind"}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy(__name__, _EXPORTS, __all__)
