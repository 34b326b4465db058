"""The cloud folder from one library function, for a user's own nn.Module and for registry models."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from fakegradient import ModelFileError, models, protect
from fakegradient.modelfile import load_protected, write_bundle
from fakegradient.serving.onnx_model import load_model_dir


def test_a_users_own_module_gets_a_servable_onnx_and_no_model_pt(tiny, tiny_input, tmp_path):
    protected, key = protect(tiny, example_input=tiny_input, seed=0)
    extra = {"preprocess": {"resize": 16, "crop": 16, "mean": [0.5] * 3, "std": [0.25] * 3, "interpolation": "bilinear"},
             "categories": [f"c{i}" for i in range(10)]}
    written = write_bundle(tmp_path, protected, key, input_size=[3, 16, 16], extra=extra)
    assert [p.name for p in written] == ["model.onnx"] and sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "model.onnx")).metadata_props}
    assert meta["fakegradient.fingerprint"] == key.model_fingerprint
    assert meta["fakegradient.arch"] == "TinyNet" and meta["fakegradient.n_outputs"] == "20"
    served = load_model_dir(tmp_path)  # what the server loads: preprocessing and class names are public
    assert served.parameters()["preprocess"] == extra["preprocess"]
    assert served.parameters()["categories"] == extra["categories"]
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"input": tiny_input.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(key.decrypt(out), tiny(tiny_input).numpy(), rtol=1e-5, atol=1e-5)


def test_a_registry_model_also_gets_a_reloadable_model_pt(tmp_path):
    model = models.load("mobilenet_v2", weights=None, num_classes=10)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    protected, key = protect(model, example_input=x, seed=0)
    written = write_bundle(tmp_path, protected, key, input_size=[3, 64, 64], arch="mobilenet_v2",
                           arch_kwargs={"num_classes": 10}, onnx=False)
    assert [p.name for p in written] == ["model.pt"]
    loaded, info = load_protected(tmp_path / "model.pt")
    assert info.fingerprint == key.model_fingerprint and info.method == key.method and info.n_real == 10
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), protected(x), rtol=1e-5, atol=1e-5)


def test_a_failed_write_leaves_nothing(tiny, tiny_input, tmp_path, monkeypatch):
    import fakegradient.modelfile as modelfile

    protected, key = protect(tiny, example_input=tiny_input, seed=0)

    def broken(*_args, **_kwargs):
        raise ModelFileError("disk full")

    monkeypatch.setattr(modelfile, "export_onnx", broken)
    # TinyNet is no registry model, but arch= asks for model.pt: it is written, then removed with the failure
    with pytest.raises(ModelFileError, match="disk full"):
        write_bundle(tmp_path, protected, key, input_size=[3, 16, 16], arch="TinyNet")
    assert list(tmp_path.iterdir()) == []
