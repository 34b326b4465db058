"""Serving: an Open Inference Protocol v2 server for protected ONNX models (no key, no decryption),
and the device client that decrypts (numpy + Pillow only)."""

from .._lazy import lazy

_EXPORTS = {"create_app": ".server", "serve": ".server", "Limits": ".settings", "Access": ".settings",
            "Batching": ".settings", "RuntimeOptions": ".settings", "Observability": ".settings",
            "DataPlane": ".dataplane", "InferenceClient": ".client", "classify": ".client",
            "classify_iter": ".client", "load_labels": ".client", "read_token": ".auth",
            "export_triton": ".triton", "load_model_dir": ".onnx_model"}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy(__name__, _EXPORTS, __all__)
