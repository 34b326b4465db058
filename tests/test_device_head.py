"""The device-head scheme (split inference): the cloud serves the trunk's features, the device keeps the head
(W (N, D), b (N,)) and computes the logits in numpy."""

from __future__ import annotations

import copy
import json
import logging
import stat
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import LOGIT_ATOL, assert_same_top1
from PIL import Image
from test_server_support import in_thread

from fakegradient import Key, methods, protect
from fakegradient.cli import main
from fakegradient.data import foolbox_imagenet
from fakegradient.device_head import DeviceHead
from fakegradient.schemes import load_secret
from fakegradient.errors import FakeGradientError, HeadNotFound, InvalidArgument, KeyFileError, KeyMismatch
from fakegradient.modelfile import write_bundle
from fakegradient.serving.client import InferenceClient, classify, load_labels
from fakegradient.serving.onnx_model import load_model_dir
from fakegradient.serving.server import build_server
from fakegradient.core.fingerprint import keyed_fingerprint
from fakegradient.split import split_head, trunk_fingerprint

PREPROCESS = {"resize": 16, "crop": 16, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}

# --- split_head ---------------------------------------------------------------------------------------------


def logits_of(trunk, weight, bias, x):
    with torch.no_grad():
        return trunk(x) @ weight.T + bias


def test_split_head_on_a_tiny_model_gives_its_logits_back(tiny, tiny_input):
    before = copy.deepcopy(tiny.state_dict())
    trunk, weight, bias, name = split_head(tiny, example_input=tiny_input)
    assert name == "fc" and weight.shape == (10, 32) and bias.shape == (10,)
    with torch.no_grad():
        features, expected = trunk(tiny_input), tiny(tiny_input)
    assert features.shape == (4, 32)
    torch.testing.assert_close(features @ weight.T + bias, expected, rtol=1e-5, atol=1e-5)
    assert isinstance(trunk.fc, torch.nn.Identity) and isinstance(tiny.fc, torch.nn.Linear)  # a copy was cut
    assert all(torch.equal(before[k], v) for k, v in tiny.state_dict().items())
    torch.testing.assert_close(weight, tiny.fc.weight.detach(), rtol=0, atol=0)  # the head's own values


def test_split_head_on_a_1x1_conv_head():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Conv2d(6, 5, 1), torch.nn.Flatten()).eval()
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    trunk, weight, bias, name = split_head(model, example_input=x)
    assert name == "3" and weight.shape == (5, 6)
    torch.testing.assert_close(logits_of(trunk, weight, bias, x), model(x).detach(), rtol=1e-5, atol=1e-5)


def test_split_head_on_a_registry_model(mobilenet_imagenet, imagenet_photos):
    """MobileNetV2 (ImageNet weights, 4 photos): trunk + head give the model's logits within LOGIT_ATOL."""
    model, _ = mobilenet_imagenet
    x = imagenet_photos[0][:4]
    trunk, weight, bias, name = split_head(model, example_input=x)
    assert name == "classifier.1" and weight.shape == (1000, 1280) and bias.shape == (1000,)
    with torch.no_grad():
        expected = model(x)
    assert_same_top1(logits_of(trunk, weight, bias, x), expected, atol=LOGIT_ATOL)


def test_split_head_refuses_a_layer_that_is_no_head(tiny, tiny_input):
    with pytest.raises(HeadNotFound):
        split_head(tiny, head="features.0", example_input=tiny_input)  # a 3x3 conv
    with pytest.raises(HeadNotFound, match="nope"):
        split_head(tiny, head="nope", example_input=tiny_input)


def test_trunk_fingerprint_names_the_weights(tiny, tiny_input):
    trunk, *_ = split_head(tiny, example_input=tiny_input)
    again, *_ = split_head(tiny, example_input=tiny_input)
    assert trunk_fingerprint(trunk) == trunk_fingerprint(again)
    with torch.no_grad():
        again.features[0].weight[0, 0, 0, 0] += 1e-3
    assert trunk_fingerprint(trunk) != trunk_fingerprint(again)


# --- the registry -------------------------------------------------------------------------------------------


def test_device_head_is_a_deployable_scheme_serving_features():
    entry = methods.METHODS["device-head"]
    assert entry.protects and entry.display == "Device Head (split inference)"
    assert "device-head" in methods.PROTECTIONS and "device-head" in methods.DEPLOYABLE
    caps = entry.capabilities
    assert caps.serves == "features" and not caps.head_rows and not caps.official_bias and not caps.uses_scale
    assert entry.output_name == "features" and "scale" not in entry.params()


# --- protect() and the device-head file ---------------------------------------------------------------------


@pytest.fixture
def split_tiny(tiny, tiny_input):
    trunk, device = protect(tiny, method="device-head", example_input=tiny_input)
    return trunk, device


def test_protect_device_head_returns_the_trunk_and_the_head(tiny, tiny_input, split_tiny):
    trunk, device = split_tiny
    assert isinstance(device, DeviceHead) and device.method == "device-head"
    assert (device.n_real, device.n_features, device.n_outputs, device.head) == (10, 32, 32, "fc")
    assert device.model_fingerprint == keyed_fingerprint(trunk_fingerprint(trunk), device.fingerprint_key)
    assert device.model_fingerprint != trunk_fingerprint(trunk)  # keyed: the public digest confirms nothing
    with torch.no_grad():
        features, expected = trunk(tiny_input).numpy(), tiny(tiny_input).numpy()
    np.testing.assert_allclose(device.decrypt(features), expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(device.decrypt(features, fingerprint=device.model_fingerprint), expected, atol=1e-5)
    with pytest.raises(KeyMismatch, match="another model"):
        device.decrypt(features, fingerprint="0" * 64)
    with pytest.raises(KeyMismatch, match="width 32"):
        device.decrypt(np.zeros((2, 20), np.float32))
    again, other = protect(tiny, method="device-head", seed=5, example_input=tiny_input)  # only the fingerprint key
    assert trunk_fingerprint(again) == trunk_fingerprint(trunk) and np.array_equal(other.weight, device.weight)
    assert other.model_fingerprint != device.model_fingerprint


def test_the_head_decrypts_torch_features_differentiably_as_the_evaluation_needs(tiny, tiny_input, split_tiny):
    """The evaluation attacks through the device's head: torch in, a differentiable tensor out."""
    trunk, device = split_tiny
    features = trunk(tiny_input).detach().requires_grad_(True)
    logits = device.decrypt(features)
    assert isinstance(logits, torch.Tensor) and logits.dtype == features.dtype
    with torch.no_grad():
        torch.testing.assert_close(logits, tiny(tiny_input), rtol=0, atol=1e-5)
    logits[:, 3].sum().backward()  # d logit_3 / d features = W[3] for every image
    torch.testing.assert_close(features.grad, torch.from_numpy(device.weight[3].copy()).expand_as(features))
    assert device.decrypt_all(features).shape == logits.shape and not device.is_fake(np.arange(4)).any()


def test_the_head_file_round_trips_is_0600_and_never_overwritten(split_tiny, tmp_path):
    _, device = split_tiny
    path = tmp_path / "head.safetensors"
    device.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = DeviceHead.load(path)
    assert loaded.describe() == device.describe()
    assert np.array_equal(loaded.weight, device.weight) and np.array_equal(loaded.bias, device.bias)  # same bytes
    before = path.read_bytes()
    _, other = protect(torch.nn.Linear(4, 3), method="device-head", example_input=torch.randn(2, 4))
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        other.save(path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["head.safetensors"]  # no temp
    other.save(path, replace=True)  # the CLI's --force, after keeping a copy
    assert DeviceHead.load(path).n_real == 3 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert DeviceHead.sniff(path.read_bytes()) and isinstance(load_secret(path), DeviceHead)


def test_a_head_file_others_may_read_loads_with_a_warning(split_tiny, tmp_path, caplog):
    _, device = split_tiny
    device.save(tmp_path / "head.safetensors")
    with caplog.at_level(logging.WARNING, logger="fakegradient.device_head"):
        DeviceHead.load(tmp_path / "head.safetensors")
        assert not caplog.records
        (tmp_path / "head.safetensors").chmod(0o644)
        DeviceHead.load(tmp_path / "head.safetensors")
    assert "chmod 600" in caplog.text


def test_the_head_file_is_the_safetensors_layout(split_tiny, tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    _, device = split_tiny
    device.save(tmp_path / "head.safetensors")
    arrays = safetensors_numpy.load_file(tmp_path / "head.safetensors")
    assert np.array_equal(arrays["weight"], device.weight) and np.array_equal(arrays["bias"], device.bias)


def test_garbage_and_edited_head_files_are_refused_in_one_line(split_tiny, tmp_path):
    _, device = split_tiny
    good = device.to_bytes()
    header_end = 8 + int.from_bytes(good[:8], "little")
    edited_weight = bytearray(good)
    edited_weight[-1] ^= 0x01
    cases = {
        "empty": b"",
        "text": b"hello, this is not a head\n",
        "truncated": good[:-4],
        "trailing": good + b"\0\0\0\0",
        "weight edited": bytes(edited_weight),
        "header edited": good.replace(device.head.encode(), b"xx", 1),
        "huge length": (2**62).to_bytes(8, "little") + good[8:],
        "zero-length header": bytes(8) + good[8:],
        "bad json": good[:8] + b"{" * (header_end - 8) + good[header_end:],
    }
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(KeyFileError) as info:
            DeviceHead.load(path)
        assert "\n" not in str(info.value) and str(path) in str(info.value), name
    with pytest.raises(KeyFileError, match="cannot read"):
        DeviceHead.load(tmp_path / "missing")
    with pytest.raises(KeyFileError, match="not a regular file"):
        DeviceHead.load(tmp_path)
    _, key = protect(torch.nn.Linear(4, 3), example_input=torch.randn(2, 4))  # a Fake Gradient key file
    key.save(tmp_path / "key.json")
    assert not DeviceHead.sniff((tmp_path / "key.json").read_bytes()) and isinstance(load_secret(tmp_path / "key.json"), Key)
    with pytest.raises(KeyFileError, match="not a fakegradient device-head file"):
        DeviceHead.load(tmp_path / "key.json")


def test_the_device_side_loads_and_applies_the_head_without_torch(split_tiny, tmp_path):
    _, device = split_tiny
    device.save(tmp_path / "head.safetensors")
    features = np.random.default_rng(0).random((3, device.n_features), dtype=np.float32)
    np.save(tmp_path / "features.npy", features)
    code = f"""
import sys
import numpy as np
from fakegradient.classify import predictions
from fakegradient import load_secret
head = load_secret({str(tmp_path / "head.safetensors")!r})
preds = predictions(head, np.load({str(tmp_path / "features.npy")!r}), k=2)
print([p.topk[0][0] for p in preds], [p.encrypted_top1 for p in preds])
sys.exit(3 if "torch" in sys.modules else 0)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr or "torch was imported"
    expected = (features @ device.weight.T + device.bias).argmax(1).tolist()
    assert result.stdout.strip() == f"{expected} [None, None, None]"


# --- the cloud folder and the server ------------------------------------------------------------------------


def test_the_cloud_folder_serves_features_and_refuses_the_head_file(tiny, tiny_input, split_tiny, tmp_path):
    trunk, device = split_tiny
    cloud = tmp_path / "cloud"
    write_bundle(cloud, trunk, device, input_size=[3, 16, 16], extra={"preprocess": PREPROCESS})
    served = load_model_dir(cloud)  # the server's own checks: digest, no key file
    assert served.output_name == "features" and served.output_shape[1:] == [device.n_features]
    assert served.parameters()["fingerprint"] == device.model_fingerprint
    with torch.no_grad():
        expected = tiny(tiny_input).numpy()
    np.testing.assert_allclose(device.decrypt(served.infer(tiny_input.numpy())), expected, rtol=0, atol=1e-4)
    with in_thread(build_server([served])) as (host, port):
        client = InferenceClient(f"http://{host}:{port}")
        model = client.model()
        assert model.parameters["fingerprint"] == device.model_fingerprint
        remote = client.infer(model, tiny_input.numpy())
    np.testing.assert_allclose(device.decrypt(remote), expected, rtol=0, atol=1e-4)
    device.save(cloud / "head.safetensors")  # a head file that reached the cloud folder is refused
    with pytest.raises(FakeGradientError, match="device-head file"):
        load_model_dir(cloud)


def test_an_edited_trunk_is_refused_by_the_server(split_tiny, tmp_path):
    import onnx

    trunk, device = split_tiny
    write_bundle(tmp_path, trunk, device, input_size=[3, 16, 16])
    graph = onnx.load(str(tmp_path / "model.onnx"))
    weight = graph.graph.initializer[0]
    values = onnx.numpy_helper.to_array(weight).copy()
    values.flat[0] += 1.0
    weight.CopyFrom(onnx.numpy_helper.from_array(values, weight.name))
    onnx.save(graph, str(tmp_path / "model.onnx"))
    with pytest.raises(FakeGradientError, match="digest"):
        load_model_dir(tmp_path)


def test_a_key_and_a_head_for_other_models_are_refused_by_the_client(split_tiny, tmp_path):
    trunk, device = split_tiny
    write_bundle(tmp_path / "cloud", trunk, device, input_size=[3, 16, 16], extra={"preprocess": PREPROCESS})
    Image.new("RGB", (20, 20), (120, 30, 200)).save(tmp_path / "photo.png")
    _, other = protect(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(768, 10)), method="device-head",
                       example_input=torch.rand(2, 3, 16, 16))
    _, key = protect(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(768, 10)),
                     example_input=torch.rand(2, 3, 16, 16))
    with in_thread(build_server([load_model_dir(tmp_path / "cloud")])) as (host, port):
        url = f"http://{host}:{port}"
        [result] = classify(url, device, [tmp_path / "photo.png"], k=3)
        assert result.server_top1 is None and not result.server_top1_is_fake and len(result.topk) == 3
        for wrong in (other, key):
            with pytest.raises(KeyMismatch, match="another model"):
                classify(url, wrong, [tmp_path / "photo.png"])


# --- end to end: `fakegradient protect --method device-head`, a server, `classify` ----------------------------

BLOCK_TORCH = ("import sys\nclass _Block:\n    def find_spec(self, name, *a):\n"
               "        if name == 'torch' or name.startswith('torch.'):\n"
               "            raise ImportError('torch is blocked in this test')\n"
               "sys.meta_path.insert(0, _Block())\n")


@pytest.fixture(scope="module")
def deployed_split(tmp_path_factory):
    """MobileNetV2 (ImageNet weights) split by the CLI: the cloud folder served in a thread, the head file."""
    root = tmp_path_factory.mktemp("split")
    assert main(["protect", "mobilenet_v2", "--weights", "IMAGENET1K_V1", "--method", "device-head",
                 "--out", str(root / "cloud"), "--key", str(root / "head.safetensors")]) == 0
    with in_thread(build_server([load_model_dir(root / "cloud")])) as (host, port):
        yield {"root": root, "url": f"http://{host}:{port}", "head": root / "head.safetensors"}


@pytest.mark.slow
def test_device_head_through_the_server_gives_the_original_top1(deployed_split, photos_top1):
    paths = [s.path for s in foolbox_imagenet()]
    head = load_secret(deployed_split["head"])
    results = classify(deployed_split["url"], head, paths, k=1,
                       labels=load_labels(deployed_split["root"] / "cloud"))
    assert [r.topk[0][0] for r in results] == photos_top1  # all 20
    assert all(r.server_top1 is None for r in results) and results[0].topk[0][1] == "bull mastiff"


@pytest.mark.slow
@pytest.mark.parametrize("where", ["--server", "--model", "model.onnx"])
def test_classify_cli_with_a_head_file_remote_and_local(deployed_split, capsys, where):
    cloud = deployed_split["root"] / "cloud"
    target = {"--server": ["--server", deployed_split["url"], "--labels", str(cloud)],
              "--model": ["--model", str(cloud)], "model.onnx": ["--model", str(cloud / "model.onnx")]}[where]
    photo = foolbox_imagenet()[0].path
    assert main(["classify", *target, "--key", str(deployed_split["head"]), "--top", "1", str(photo)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("imagenet_00_243.jpg: bull mastiff") and "[cloud saw features only]" in out, out


@pytest.mark.slow
def test_the_device_client_classifies_with_a_head_file_without_torch(deployed_split):
    photo = foolbox_imagenet()[0].path
    code = BLOCK_TORCH + "from fakegradient.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    args = ["classify", "--server", deployed_split["url"], "--key", deployed_split["head"], "--top", "1",
            "--labels", deployed_split["root"] / "cloud", photo]
    result = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("imagenet_00_243.jpg: bull mastiff")


@pytest.mark.slow
def test_the_head_file_info_and_no_overwrite_from_the_cli(deployed_split, capsys):
    head, cloud = deployed_split["head"], deployed_split["root"] / "cloud"
    assert stat.S_IMODE(head.stat().st_mode) == 0o600
    # the head and a header holding the 1000 class names (about 16 KB of JSON)
    assert head.stat().st_size < 1000 * 1280 * 4 + 1000 * 4 + 64 * 1024
    assert main(["info", str(head)]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["method"] == "device-head" and (described["n_real"], described["n_features"]) == (1000, 1280)
    assert described["head"] == "classifier.1" and len(json.dumps(described)) < 1000  # never the weights
    assert main(["info", str(cloud / "model.onnx")]) == 0
    onnx_info = json.loads(capsys.readouterr().out)
    assert onnx_info["fingerprint"] == described["model_fingerprint"] and onnx_info["n_outputs"] == 1280
    before = head.read_bytes()
    assert main(["protect", "mobilenet_v2", "--weights", "IMAGENET1K_V1", "--method", "device-head",
                 "--out", str(deployed_split["root"] / "cloud2"), "--key", str(head)]) == 1
    assert "refusing to overwrite" in capsys.readouterr().err and head.read_bytes() == before
    replaced = deployed_split["root"] / "replaced.safetensors"  # --force: the old head is kept as .old
    replaced.write_bytes(before)
    assert main(["protect", "mobilenet_v2", "--weights", "IMAGENET1K_V1", "--method", "device-head", "--force",
                 "--out", str(deployed_split["root"] / "cloud2"), "--key", str(replaced)]) == 0
    assert replaced.with_name(replaced.name + ".old").read_bytes() == before
    new, old = DeviceHead.load(replaced), DeviceHead.load(head)  # the same model split again, a new fingerprint key
    assert {k: v for k, v in new.describe().items() if k != "model_fingerprint"} == \
        {k: v for k, v in old.describe().items() if k != "model_fingerprint"}
    assert np.array_equal(new.weight, old.weight) and new.fingerprint_key != old.fingerprint_key
    assert stat.S_IMODE(replaced.stat().st_mode) == 0o600
