"""End to end with the real MobileNetV2 and a real v2 server subprocess: `classify --server` (device) and
`classify --model` (local) print every good image's result, one error line per bad file, exit 1; an
EXIF-rotated photo and a 16-bit one get the upright 8-bit picture's top-1 on both paths."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from test_images import ORIENTATION, STORED_AS, write_png
from test_server_support import serve_subprocess

from fakegradient.cli import main
from fakegradient.data import foolbox_imagenet

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """A protected MobileNetV2 served by `fakegradient serve` (max batch 2), its key, and test images."""
    root = tmp_path_factory.mktemp("deployed")
    assert main(["protect", "mobilenet_v2", "--weights", "IMAGENET1K_V1", "--out", str(root / "cloud"),
                 "--key", str(root / "key.json")]) == 0
    with serve_subprocess([root / "cloud"], "--max-batch", "2", "--threads", "1") as (_, url):
        yield {"root": root, "url": url, "images": make_images(root)}


def make_images(root):
    """upright colour photo, its phone-style EXIF-rotated JPEG, its 8-bit grey and 16-bit grey PNGs, and bad
    files in between."""
    chair = Image.open(foolbox_imagenet()[1].path).convert("RGB")
    images = {"upright": root / "chair.png", "rotated": root / "phone.jpg", "grey8": root / "grey8.png",
              "grey16": root / "grey16.png", "text": root / "notes.jpg", "thin": root / "thin.png",
              "bomb": root / "bomb.png"}
    chair.save(images["upright"])
    exif = Image.Exif()
    exif[ORIENTATION] = 8
    chair.transpose(STORED_AS[8]).save(images["rotated"], quality=95, exif=exif)
    chair.convert("L").save(images["grey8"])
    Image.fromarray(np.asarray(chair.convert("L")).astype(np.uint16) * 257).save(images["grey16"])
    images["text"].write_text("not an image")
    Image.new("L", (20000, 2)).save(images["thin"])
    write_png(images["bomb"], 14000, 14000, 1, 0, (bytes(1750) for _ in range(14000)))
    return images


ORDER = ("upright", "text", "rotated", "thin", "grey8", "bomb", "grey16")


def top1s(out: str) -> dict[str, str]:
    """file name → top-1 label, from `classify --top 1` lines ``name: label 99.5%   [...]``."""
    lines = [line.split(": ", 1) for line in out.splitlines()]
    return {name: rest.split("   [")[0].rsplit(" ", 1)[0] for name, rest in lines}


@pytest.mark.parametrize("where", ["--server", "--model"])
def test_good_images_are_classified_bad_ones_reported_and_rotation_and_depth_do_not_matter(deployed, capsys,
                                                                                            where):
    target = deployed["url"] if where == "--server" else str(deployed["root"] / "cloud")
    names = ["--labels", str(deployed["root"] / "cloud")] if where == "--server" else []  # kept on the device
    code = main(["classify", where, target, "--key", str(deployed["root"] / "key.json"), "--top", "1", *names,
                 *(str(deployed["images"][name]) for name in ORDER)])
    out, err = capsys.readouterr()
    assert code == 1
    found = top1s(out)
    assert list(found) == ["chair.png", "phone.jpg", "grey8.png", "grey16.png"]
    assert found["chair.png"] == found["phone.jpg"] == "folding chair"
    assert found["grey16.png"] == found["grey8.png"]
    errors = err.splitlines()
    assert len(errors) == 3 and all(line.startswith("error: ") for line in errors), err
    assert "notes.jpg is not a readable image" in errors[0]
    assert "thin.png is refused: 20000x2" in errors[1] and "bomb.png is refused" in errors[2]


def test_a_model_name_with_a_space_is_a_one_line_404(deployed, capsys):
    code = main(["classify", "--server", deployed["url"], "--model-name", "mn v2", "--key",
                 str(deployed["root"] / "key.json"), str(deployed["images"]["upright"])])
    out, err = capsys.readouterr()
    assert (code, out) == (1, "")
    assert err == "error: server answered 404: unknown model 'mn v2'; served: ['cloud']\n"
