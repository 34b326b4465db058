"""Serving: an Open Inference Protocol v2 server for protected ONNX models (no key, no decryption),
and the device client that decrypts (numpy + Pillow only)."""
