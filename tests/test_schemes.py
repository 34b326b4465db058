"""The scheme interface: a scheme with a new kind of secret (tests/toy_affine_scheme.py, written as a module under
fakegradient/schemes/ would be) goes through protect → bundle → serve → classify --server → evaluate (naive stage)
with one registry entry and no other file; the registry, load_secret and the keyed fingerprint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fakegradient import KeyFileError, KeyMismatch, defaults, load_secret, methods, protect, schemes
from fakegradient.cli import main
from fakegradient.core.fingerprint import head_fingerprint, keyed_fingerprint
from fakegradient.data import Sample
from fakegradient.deployment import save_deployment
from fakegradient.errors import FakeGradientError
from fakegradient.evaluation.config import EvaluationConfig
from fakegradient.evaluation.pipeline import Normalized
from fakegradient.evaluation.records import aggregate_by
from fakegradient.evaluation.runner import evaluate_model
from fakegradient.head import head_parameters
from fakegradient.serving.onnx_model import load_model_dir
from fakegradient.serving.server import build_server
from test_server_support import in_thread
from toy_affine_scheme import SCHEME, AffineSecret

PREPROCESS = {"resize": 16, "crop": 16, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
NAMES = [f"toy class {i}" for i in range(10)]


@pytest.fixture
def toy_registered():
    schemes.register(SCHEME)  # the one registry entry
    yield SCHEME
    schemes.unregister(SCHEME.name)


def test_a_new_kind_of_secret_runs_end_to_end(toy_registered, tiny, tiny_input, tmp_path, capsys, one_torch_thread):
    assert "toy-affine" in methods.METHODS and "toy-affine" in methods.PROTECTIONS
    assert "toy-affine" not in methods.DEPLOYABLE  # declared a control: `protect` does not offer it
    served, secret = protect(tiny, method="toy-affine", example_input=tiny_input, labels=NAMES)
    assert isinstance(secret, AffineSecret)
    with torch.no_grad():
        np.testing.assert_allclose(secret.decrypt(served(tiny_input).numpy()), tiny(tiny_input).numpy(),
                                   rtol=0, atol=1e-4)
    # bundle: the library's transactional writer, the secret at 0600 beside, not inside, the cloud folder
    deployed = save_deployment(tmp_path / "cloud", tmp_path / "device" / "toy.secret", served, secret,
                               input_size=[3, 16, 16], extra={"preprocess": PREPROCESS})
    assert [p.name for p in deployed.cloud] == ["model.onnx"]
    assert isinstance(load_secret(deployed.secret), AffineSecret)  # the one door for any secret file
    image = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(image)
    from fakegradient.serving.client import preprocess

    with torch.no_grad():
        expected = tiny(torch.from_numpy(preprocess(image, PREPROCESS))[None]).argmax(1).item()
    with in_thread(build_server([load_model_dir(tmp_path / "cloud")])) as (host, port):
        assert main(["classify", "--server", f"http://{host}:{port}", "--key", str(deployed.secret),
                     "--top", "1", str(image)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"photo.png: {NAMES[expected]} "), line  # the class names came with the secret
    # a secret of this kind that reached the cloud folder is refused by the server
    (tmp_path / "cloud" / "copy").write_bytes(deployed.secret.read_bytes())
    with pytest.raises(FakeGradientError, match="toy-affine-secret file"):
        load_model_dir(tmp_path / "cloud")
    # the evaluation's naive stage takes the new scheme as it takes the paper's
    samples = [Sample(Path(f"img_{i}.png"), None) for i in range(len(tiny_input))]
    config = EvaluationConfig(models=["tiny"], methods=("original", "toy-affine"), seed=0, max_iter=5,
                              timing_repeats=2)
    evaluation = evaluate_model("tiny", Normalized(tiny, (0.0,), (1.0,)), tiny_input, samples, config,
                                progress=False)
    toy = aggregate_by(evaluation.records)[("tiny", "toy-affine")]
    assert toy["images"] == len(tiny_input) and toy["original_functionality_pct"] == 100.0


def test_the_registry_lists_the_builtin_schemes_with_declared_capabilities():
    registry = schemes.registry()
    assert list(registry)[:6] == ["fake-gradient", "random-weight", "fake-gradient-hardened", "scaled-copy",
                                  "random-decoy", "device-head"]
    assert registry["fake-gradient"].capabilities.fakes_win and registry["scaled-copy"].capabilities.fakes_win
    assert not registry["random-weight"].capabilities.fakes_win
    assert registry["device-head"].capabilities.serves == "features"
    assert not registry["device-head"].capabilities.head_rows
    assert registry["fake-gradient"].capabilities.official_bias
    assert not registry["fake-gradient-hardened"].capabilities.official_bias
    with pytest.raises(FakeGradientError, match="already registered"):
        schemes.register(type(registry["device-head"])())
    with pytest.raises(FakeGradientError, match="unknown method 'nope'"):
        schemes.get("nope")


BUILT_IN = ["fake-gradient", "random-weight", "fake-gradient-hardened", "scaled-copy", "random-decoy", "device-head",
            "decoys", "mixing"]


@pytest.mark.parametrize("first", [*schemes.MODULES, None])
def test_the_registry_order_does_not_depend_on_what_was_imported_first(first):
    """A fresh interpreter imports one built-in scheme module (or none) first, then registers a scheme of its
    own before anything asked the registry: the built-ins come first in MODULES order, the newcomer last."""
    script = (f"import importlib; importlib.import_module('fakegradient.schemes{first}')\n" if first else "") + (
        "import json\n"
        "from fakegradient import schemes\n"
        "from fakegradient.schemes.fake_rows import FakeRows\n"
        "schemes.register(FakeRows('aa-new', 'AA', 'a later scheme', rows='fake_gradient_rows',\n"
        "                          capabilities=schemes.Capabilities()))\n"
        "print(json.dumps(list(schemes.registry())))\n")
    source = str(Path(schemes.__file__).parents[2])  # the src/ this test imported fakegradient from
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([source, os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [*BUILT_IN, "aa-new"]
    assert list(schemes.registry())[:len(BUILT_IN)] == BUILT_IN  # this process agrees


def test_a_scheme_refuses_parameters_it_does_not_take(tiny, tiny_input):
    with pytest.raises(FakeGradientError, match="takes no parameter fake_bias"):
        protect(tiny, method="device-head", example_input=tiny_input, fake_bias="official")
    with pytest.raises(FakeGradientError, match="fake_bias must be one of"):
        protect(tiny, example_input=tiny_input, fake_bias="released")


def test_official_fake_bias_changes_only_the_fake_rows(tiny, tiny_input):
    from fakegradient.core.fake_rows import official_fake_bias

    plain, key = protect(tiny, example_input=tiny_input, seed=5)
    official, same_key = protect(tiny, example_input=tiny_input, seed=5, fake_bias="official")
    assert np.array_equal(key.permutation, same_key.permutation)
    real = key.class_positions()
    assert torch.equal(plain.fc.bias[real], official.fc.bias[real])  # the real rows are untouched
    fakes = key.permutation[key.n_real:]  # fake j (of real class j) sits at fakes[j]
    torch.testing.assert_close(official.fc.bias[fakes], official_fake_bias(tiny.fc.bias, defaults.SCALE))
    assert not torch.allclose(plain.fc.bias[fakes], official.fc.bias[fakes])
    assert same_key.model_fingerprint != key.model_fingerprint


def test_the_published_fingerprint_is_keyed_and_no_oracle(tiny, tiny_input, tmp_path):
    """Red team: a forged key confirmed by a plain hash of the served head. The published value is an HMAC under a
    key only the device holds: the plain digest of the very same head does not match it."""
    served, key = protect(tiny, example_input=tiny_input)
    digest = head_fingerprint(*head_parameters(served.fc))
    assert key.model_fingerprint != digest  # an attacker rebuilding the head cannot confirm the guess
    assert key.model_fingerprint == keyed_fingerprint(digest, key.fingerprint_key)
    assert "fingerprint_key" not in key.describe()  # `info` never prints it
    _, again = protect(tiny, example_input=tiny_input)
    assert again.fingerprint_key != key.fingerprint_key  # from the CSPRNG
    key.save(tmp_path / "k.json")
    assert load_secret(tmp_path / "k.json").fingerprint_key == key.fingerprint_key


def test_a_version_1_key_still_loads_and_a_newer_one_is_refused(tiny, tiny_input, tmp_path):
    from fakegradient.key import Key, _checksum

    _, key = protect(tiny, example_input=tiny_input)
    old = Key(key.permutation, key.n_real, key.method, key.scale, "ab" * 32, key.head)
    old.save(tmp_path / "v1.json")
    assert json.loads((tmp_path / "v1.json").read_text())["version"] == 1
    assert load_secret(tmp_path / "v1.json").model_fingerprint == "ab" * 32
    payload = json.loads(key.to_bytes())
    payload.pop("checksum")
    payload["version"] = 3
    payload["checksum"] = _checksum(payload)
    (tmp_path / "v3.json").write_text(json.dumps(payload))
    with pytest.raises(KeyFileError, match="newer fakegradient"):
        load_secret(tmp_path / "v3.json")


def test_labels_travel_with_both_kinds_of_secret(tiny, tiny_input, tmp_path):
    for method in ("fake-gradient", "device-head"):
        _, secret = protect(tiny, method=method, example_input=tiny_input, labels=NAMES)
        secret.save(tmp_path / method)
        loaded = load_secret(tmp_path / method)
        assert loaded.labels == tuple(NAMES) and loaded.label(3) == "toy class 3"
        assert loaded.describe()["n_labels"] == 10
    with pytest.raises(KeyFileError, match="labels"):
        protect(tiny, example_input=tiny_input, labels=NAMES[:3])


def test_a_secret_from_another_model_is_refused(tiny, tiny_input):
    served, key = protect(tiny, example_input=tiny_input)
    _, other = protect(tiny, example_input=tiny_input)
    with pytest.raises(KeyMismatch, match="another model"):
        other.check_fingerprint(key.model_fingerprint)
    assert schemes.get("fake-gradient").fingerprint(served, key) == key.model_fingerprint
