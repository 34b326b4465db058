"""What model checkpoints a machine holds: every ``*.pth``/``*.pt``/``*.safetensors``/``*.bin``/``*.ckpt``/
``*.onnx`` file over 5 MB in the torch hub, timm and Hugging Face caches and below the given roots, and which of
them are ImageNet checkpoints of the paper's seven Table 1 architectures (torchvision's file names).

    python scripts/list_checkpoints.py [--root /] [--min-mb 5] [--seconds 120] [--json found.json]

For a GPU machine lent to a session (the reproduction issue asks what its image holds): prints a table and
``torchvision`` names found, so that ``fakegradient evaluate --models NAME:IMAGENET1K_V1`` can run Table 1 on
them. Standard library only (torch/torchvision are used when present, for the hub folder and file names).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

SUFFIXES = (".pth", ".pt", ".safetensors", ".bin", ".ckpt", ".onnx")
SKIP = ("/proc", "/sys", "/dev", "/run")
PAPER_SEVEN = ("resnet34", "resnet18", "densenet121", "vgg19", "vgg11", "mobilenet_v2", "googlenet")


def cache_folders() -> list[Path]:
    """The model caches a user's tools write to (those that exist)."""
    home = Path.home()
    folders = [Path(os.environ.get("TORCH_HOME", home / ".cache" / "torch")),
               Path(os.environ.get("HF_HOME", home / ".cache" / "huggingface")), home / ".cache" / "timm"]
    try:
        import torch

        folders.append(Path(torch.hub.get_dir()))
    except ImportError:
        pass
    return [f for f in dict.fromkeys(folders) if f.is_dir()]


def paper_file_names() -> dict[str, str]:
    """torchvision's ImageNet checkpoint file name → architecture, for the paper's seven (every weights version
    torchvision knows); empty without torchvision (then names are matched by prefix)."""
    try:
        import torchvision
    except ImportError:
        return {}
    names = {}
    for arch in PAPER_SEVEN:
        for weights in torchvision.models.get_model_weights(arch):
            names[weights.url.rsplit("/", 1)[-1]] = f"{arch}:{weights.name}"
    return names


def find(roots: list[Path], min_bytes: int, deadline: float) -> tuple[list[tuple[Path, int]], bool]:
    """(path, size) of every candidate file below ``roots`` (symlinks not followed), and whether the walk
    finished before ``deadline``."""
    found: dict[Path, int] = {}
    for root in roots:
        for folder, subfolders, files in os.walk(root, onerror=lambda _error: None):
            if time.monotonic() > deadline:
                return sorted(found.items()), False
            subfolders[:] = [s for s in subfolders if os.path.join(folder, s) not in SKIP]
            for name in files:
                if name.endswith(SUFFIXES):
                    path = Path(folder) / name
                    try:
                        size = path.lstat().st_size
                    except OSError:
                        continue
                    if size > min_bytes and not path.is_symlink():
                        found[path] = size
    return sorted(found.items()), True


def paper_model(path: Path, known: dict[str, str]) -> str:
    """``arch:WEIGHTS`` when ``path`` is a torchvision checkpoint of the paper's seven, ``arch?`` when only its
    name's prefix says so, else ''."""
    if path.name in known:
        return known[path.name]
    stem = path.name.split("-")[0].split(".")[0].lower()
    return f"{stem}?" if stem in PAPER_SEVEN else ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", action="append", type=Path, help="folders to search besides the caches "
                        "(repeatable; default /)")
    parser.add_argument("--min-mb", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, default=120.0, help="stop walking after this long (says so)")
    parser.add_argument("--json", type=Path, help="also write the list as JSON here")
    args = parser.parse_args()
    caches = cache_folders()
    roots = caches + [r for r in (args.root or [Path("/")]) if r.is_dir()]
    files, complete = find(roots, int(args.min_mb * 2**20), time.monotonic() + args.seconds)
    known = paper_file_names()
    rows = [{"path": str(p), "mb": round(size / 2**20, 1), "paper_model": paper_model(p, known)} for p, size in files]
    print(f"caches: {', '.join(map(str, caches)) or 'none'}; searched: {', '.join(map(str, roots))}"
          f"{'' if complete else f' (stopped after {args.seconds:g} s: incomplete)'}")
    print(f"{len(rows)} files over {args.min_mb:g} MB; of the paper's seven: "
          f"{', '.join(sorted({r['paper_model'] for r in rows if r['paper_model']})) or 'none'}")
    for row in rows:
        print(f"{row['mb']:>9.1f} MB  {row['paper_model'] or '-':<28} {row['path']}")
    if args.json:
        args.json.write_text(json.dumps({"complete": complete, "roots": [str(r) for r in roots], "files": rows},
                                        indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
