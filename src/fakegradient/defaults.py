"""Every default in one place (no imports: the CLI reads them without loading torch)."""

SCALE = 20.0  # S_a of Algorithm 1, as in the official code
# DeepFool as in the LTS4 reference and the paper's evaluation
CANDIDATES = 10
OVERSHOOT = 0.02
MAX_ITER = 50
# images per DeepFool batch and per shard: small is faster on CPU (measured), large on a GPU
BATCH_SIZE_CPU = 4
BATCH_SIZE_CUDA = 64
TIMING_REPEATS = 15
HEATMAP_IMAGES = 3
BLACKBOX_QUERIES = 300
BLACKBOX_FACTOR = 2.0  # black-box L2 budget = factor x the median DeepFool ‖r‖₂ on the original
FEATURE_STEPS = 20

# the embedded default: the ImageNet checkpoint that exists offline (torchvision's DEFAULT is V2)
EMBEDDED_MODEL, EMBEDDED_WEIGHTS = "mobilenet_v2", "IMAGENET1K_V1"
EMBEDDED_SPEC = f"{EMBEDDED_MODEL}:{EMBEDDED_WEIGHTS}"
EMBEDDED_DATA = "foolbox-imagenet"  # the 20 ImageNet photos in foolbox's wheel


def batch_size(device: str) -> int:
    """The default attack batch for ``device`` ("cpu", "cuda", "cuda:1", ...)."""
    return BATCH_SIZE_CUDA if device.startswith("cuda") else BATCH_SIZE_CPU
