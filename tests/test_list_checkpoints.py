"""scripts/list_checkpoints.py: what checkpoints a (GPU) machine holds, and which are the paper's seven."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torchvision

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "list_checkpoints.py"


def sparse(path: Path, mb: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        handle.truncate(int(mb * 2**20))
    return path


def test_lists_large_checkpoints_and_names_the_papers_architectures(tmp_path):
    resnet34 = torchvision.models.ResNet34_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]
    tree = tmp_path / "tree"
    hub = sparse(tree / "hub" / "checkpoints" / resnet34, 6)
    own = sparse(tree / "models" / "mine.safetensors", 6)
    renamed = sparse(tree / "models" / "vgg11-finetuned.pt", 6)
    sparse(tree / "models" / "small.pth", 1)  # under 5 MB
    sparse(tree / "models" / "notes.txt", 6)  # not a checkpoint suffix
    (tree / "models" / "link.pth").symlink_to(own)  # the same file once
    env = {**os.environ, "HOME": str(tmp_path / "home"), "TORCH_HOME": str(tmp_path / "no-torch-home"),
           "HF_HOME": str(tmp_path / "no-hf-home")}
    done = subprocess.run([sys.executable, str(SCRIPT), "--root", str(tree), "--json", str(tmp_path / "found.json")],
                          capture_output=True, text=True, timeout=120, check=False, env=env)
    assert done.returncode == 0, done.stderr
    found = json.loads((tmp_path / "found.json").read_text())
    assert found["complete"] is True
    rows = {Path(r["path"]): r for r in found["files"]}
    assert set(rows) == {hub, own, renamed}
    assert rows[hub]["paper_model"] == "resnet34:IMAGENET1K_V1" and rows[hub]["mb"] == 6.0
    assert rows[renamed]["paper_model"] == "vgg11?" and rows[own]["paper_model"] == ""
    assert "of the paper's seven: resnet34:IMAGENET1K_V1, vgg11?" in done.stdout
