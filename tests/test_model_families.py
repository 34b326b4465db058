"""Other libraries' classifiers: Hugging Face transformers (ViT, ConvNeXt: forward returns a ModelOutput) and timm,
built offline from small random configs, protected, exported to ONNX, served and classified by the device client;
a bare ``nn.Linear`` whose head is the root module."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from test_server_support import serve_subprocess

import fakegradient
from fakegradient import Key, models
from fakegradient.cli import main
from fakegradient.errors import WeightsUnavailable
from fakegradient.serving.client import classify, preprocess

transformers = pytest.importorskip("transformers")
timm = pytest.importorskip("timm")

LABELS = ["cat", "dog", "fox", "owl", "eel"]
PROCESSOR = {"do_normalize": True, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "resample": 2}


def hf_folder(folder, kind: str):
    """A small random ViT or ConvNeXt saved as a user's fine-tune would be: config, weights, preprocessor."""
    common = {"num_labels": 5, "id2label": dict(enumerate(LABELS)), "label2id": {n: i for i, n in enumerate(LABELS)}}
    torch.manual_seed(0)
    if kind == "vit":
        config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                        num_attention_heads=2, intermediate_size=64, **common)
        model = transformers.ViTForImageClassification(config)
        processor = PROCESSOR | {"size": {"height": 32, "width": 32}}
    else:
        config = transformers.ConvNextConfig(image_size=32, num_channels=3, hidden_sizes=[8, 16], depths=[1, 1],
                                             num_stages=2, **common)
        model = transformers.ConvNextForImageClassification(config)
        processor = PROCESSOR | {"size": {"shortest_edge": 32}, "crop_pct": 0.875}
    model.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    return model.eval()


def photo(path):
    x = np.linspace(0, 255, 60 * 45 * 3).reshape(45, 60, 3).astype(np.uint8)
    Image.fromarray(x[:, :, ::-1].copy()).save(path)
    return path


def top1(model, spec, image) -> int:
    """What the unprotected model says of the image the device client preprocesses."""
    with torch.no_grad():
        out = model(torch.from_numpy(preprocess(image, spec))[None])
    return int((out.logits if hasattr(out, "logits") else out).argmax())


@pytest.mark.slow
def test_hugging_face_and_timm_models_protect_serve_and_classify(tmp_path, capsys):
    image = photo(tmp_path / "photo.png")
    clouds, expected = [], {}
    for kind in ("vit", "convnext"):
        original = hf_folder(tmp_path / kind, kind)
        assert isinstance(original(torch.rand(1, 3, 32, 32)), transformers.utils.ModelOutput)
        assert main(["protect", f"hf:{tmp_path / kind}", "--out", str(tmp_path / f"cloud_{kind}"),
                     "--key", str(tmp_path / f"{kind}.key")]) == 0
        clouds.append(tmp_path / f"cloud_{kind}")
        spec = json.loads(_meta(tmp_path / f"cloud_{kind}")["fakegradient.preprocess"])
        assert spec["crop"] == 32 and spec["mean"] == [0.5] * 3
        expected[kind] = top1(original, spec, image)
    # timm, random weights: the architecture's preprocessing from timm's config
    assert main(["protect", "timm:resnet10t", "--weights", "none", "--num-classes", "5", "--input-size", "64",
                 "--out", str(tmp_path / "cloud_timm"), "--key", str(tmp_path / "timm.key")]) == 0
    clouds.append(tmp_path / "cloud_timm")
    assert sorted(p.name for p in (tmp_path / "cloud_timm").iterdir()) == ["model.onnx", "model.pt"]
    protected_timm, info = fakegradient.modelfile.load_protected(tmp_path / "cloud_timm" / "model.pt")
    spec = json.loads(_meta(tmp_path / "cloud_timm")["fakegradient.preprocess"])
    assert spec["crop"] == 64 and spec["interpolation"] == "bicubic"  # timm's resnet10t config
    key = Key.load(tmp_path / "timm.key")
    with torch.no_grad():
        x = torch.from_numpy(preprocess(image, spec))[None]
        expected["timm"] = int(key.decrypt(protected_timm(x)).argmax())
    capsys.readouterr()
    with serve_subprocess(clouds) as (_, url):
        for kind, cloud in zip(("vit", "convnext", "timm"), clouds):
            (result,) = classify(url, Key.load(tmp_path / f"{kind}.key"), [image], model_name=cloud.name)
            assert result.topk[0][0] == expected[kind], kind
            assert result.server_top1_is_fake
    # locally, the class names of the Hugging Face config
    assert main(["classify", "--model", str(clouds[0] / "model.onnx"), "--key", str(tmp_path / "vit.key"),
                 str(image), "--top", "1"]) == 0
    assert capsys.readouterr().out.split(": ")[1].split()[0] == LABELS[expected["vit"]]


def _meta(cloud) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(cloud / "model.onnx"), load_external_data=False).metadata_props}


def test_hugging_face_model_object_protects_through_the_python_api(tmp_path):
    model = hf_folder(tmp_path, "vit")
    x = torch.rand(3, 3, 32, 32)
    protected, key = fakegradient.protect(model, example_input=x)
    assert key.head == "model.classifier" and key.n_real == 5
    with torch.no_grad():  # the protected model returns the (B, 2N) logits tensor
        torch.testing.assert_close(key.decrypt(protected(x)), model(x).logits, atol=1e-4, rtol=0)
    loaded = models.load(f"hf:{tmp_path}")  # from the local folder
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x).logits, atol=1e-5, rtol=0)


def test_prefixed_names_never_download(tmp_path):
    with pytest.raises(WeightsUnavailable, match="--weights none"):
        models.load("timm:resnet10t")  # not in the Hugging Face cache
    with pytest.raises(WeightsUnavailable, match="local folder or the cache"):
        models.load(f"hf:{tmp_path / 'absent'}")
    random = models.load("timm:resnet10t", weights=None, num_classes=3)
    torch.save(random.state_dict(), tmp_path / "r10t.pth")  # a checkpoint file: loaded, not downloaded
    loaded = models.load("timm:resnet10t", weights=str(tmp_path / "r10t.pth"), num_classes=3)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), random(x), atol=0, rtol=0)


def test_root_module_head():
    head = torch.nn.Linear(4, 3)
    x = torch.randn(5, 4)
    protected, key = fakegradient.protect(head, example_input=x)
    assert key.head == "" and isinstance(protected, torch.nn.Linear) and protected.out_features == 6
    with torch.no_grad():
        torch.testing.assert_close(key.decrypt(protected(x)), head(x), atol=1e-5, rtol=0)
    assert head.out_features == 3  # the model itself is not modified
