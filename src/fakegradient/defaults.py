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
# the adaptive attackers (`evaluate --adaptive`); L2 budgets are multiples of the median DeepFool ‖r‖₂
# on the unprotected original (the natural scale on each model)
BUDGET_FACTOR = 2.0  # white-box PGD, EOT-PGD, APGD, C&W and the feature-space headline budget
ITERATIVE_STEPS = 20  # PGD / EOT-PGD / APGD steps
EOT_CANDIDATES = 8  # candidate real-row sets of the EOT-style PGD
# C&W: Adam's step in tanh space, as the L2 length of a step over the whole image (stepsize = CW_STEP_L2 /
# sqrt(C·H·W): 0.05 on 8x8 digits, 0.001 on 224x224 RGB; foolbox's 0.01 overshoots ImageNet budgets 10x)
CW_BINARY_STEPS, CW_STEPS, CW_INITIAL_CONST, CW_STEP_L2 = 2, 50, 0.1, 0.4
FEATURE_STEPS = 20
FEATURE_RESTARTS = 2
BLACKBOX_QUERIES = 5000  # Square and HopSkipJump, per image
BLACKBOX_FACTOR = 40.0  # black-box L2 budget (≈ 5 on MobileNetV2, the Square paper's ImageNet L2 budget)
TOO_WEAK = 0.5  # an attack that succeeds on fewer of the unprotected model's images is too weak to report

# the embedded default: the ImageNet checkpoint that exists offline (torchvision's DEFAULT is V2)
EMBEDDED_MODEL, EMBEDDED_WEIGHTS = "mobilenet_v2", "IMAGENET1K_V1"
EMBEDDED_SPEC = f"{EMBEDDED_MODEL}:{EMBEDDED_WEIGHTS}"
EMBEDDED_DATA = "foolbox-imagenet"  # the 20 ImageNet photos in foolbox's wheel


def batch_size(device: str) -> int:
    """The default attack batch for ``device`` ("cpu", "cuda", "cuda:1", ...)."""
    return BATCH_SIZE_CUDA if device.startswith("cuda") else BATCH_SIZE_CPU


# the server's HTTP/1.1 parsers per `serve --http` (uvicorn's; both on asyncio's event loop)
HTTP_PARSERS = ("h11", "httptools")
HTTP = "h11"

# the server's ONNX Runtime execution providers per `serve --device`, in ORT's order of preference
ORT_PROVIDERS = {"cpu": ("CPUExecutionProvider",), "cuda": ("CUDAExecutionProvider", "CPUExecutionProvider")}
