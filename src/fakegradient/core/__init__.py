"""The functional core: pure functions on tensors and arrays (Algorithms 1-3, the fingerprint).

``permutation`` and ``fingerprint`` need numpy only; ``fake_rows`` loads torch when first used.
"""

from .._lazy import lazy

_EXPORTS = {
    **dict.fromkeys(("check_scale", "fake_gradient_rows", "hardened_rows", "official_fake_bias",
                     "random_decoy_rows", "random_weight_rows", "scaled_copy_rows"), ".fake_rows"),
    **dict.fromkeys(("decrypt", "decrypt_real", "encrypt_rows", "generate_permutation", "inverse_permutation",
                     "is_permutation", "real_top1", "top1_tables"), ".permutation"),
    "head_fingerprint": ".fingerprint",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy(__name__, _EXPORTS, __all__)
