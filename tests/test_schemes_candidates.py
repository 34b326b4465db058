"""The two candidate designs (fakegradient.schemes.decoys, fakegradient.schemes.mixing): exact decryption, their
files, and the property each claims, on a small trained model (sklearn's digits) against a simple implementation
of the red team's noise-query discovery (studies.private_attacks.noise_discovery)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fakegradient import KeyFileError, KeyMismatch, load_secret, protect, schemes
from fakegradient.attacks.deepfool import DeepFool
from fakegradient.schemes.decoys import DecoyKey
from fakegradient.schemes.mixing import MixingKey, mixing_matrix
from studies.private_attacks import noise_discovery

NAMES = [f"digit {i}" for i in range(10)]
DIGIT = (1, 8, 8)


@pytest.mark.parametrize("method", ["decoys", "mixing"])
def test_decryption_is_exact_and_the_file_round_trips(method, tiny, tiny_input, tmp_path, one_torch_thread):
    served, secret = protect(tiny, method=method, example_input=tiny_input, labels=NAMES)
    with torch.no_grad():
        out, expected = served(tiny_input), tiny(tiny_input)
    torch.testing.assert_close(secret.decrypt(out), expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(secret.decrypt(out.numpy()), expected.numpy(), rtol=0, atol=1e-5)
    assert np.array_equal(secret.top1(out.numpy()), expected.argmax(1).numpy())
    assert schemes.get(method).fingerprint(served, secret) == secret.model_fingerprint
    secret.save(tmp_path / "secret")
    loaded = load_secret(tmp_path / "secret")  # the one door reads the new kind
    assert type(loaded) is type(secret) and loaded.labels == tuple(NAMES)
    np.testing.assert_array_equal(loaded.decrypt(out.numpy()), secret.decrypt(out.numpy()))
    payload = json.loads((tmp_path / "secret").read_bytes())
    payload["n_real"] += 1  # an edit the checksum catches
    (tmp_path / "edited").write_text(json.dumps(payload))
    with pytest.raises(KeyFileError, match="checksum"):
        load_secret(tmp_path / "edited")
    with pytest.raises(KeyMismatch):
        secret.decrypt(out[:, :5])
    with pytest.raises(KeyMismatch, match="another model"):
        secret.decrypt(out.numpy(), fingerprint="0" * 64)


def test_a_seed_reproduces_a_secret_and_none_draws_a_fresh_one(tiny, tiny_input):
    for method in ("decoys", "mixing"):
        _, a = protect(tiny, method=method, example_input=tiny_input, seed=4)
        _, b = protect(tiny, method=method, example_input=tiny_input, seed=4)
        _, c = protect(tiny, method=method, example_input=tiny_input)
        assert a.to_bytes() == b.to_bytes() and a.seeded and not c.seeded
        assert a.model_fingerprint != c.model_fingerprint


def test_the_mixing_matrix_is_orthogonal_and_a_function_of_the_seed():
    q = mixing_matrix("ab" * 32, 50)
    np.testing.assert_allclose(q @ q.T, np.eye(50), atol=1e-12)
    assert np.array_equal(q, mixing_matrix("ab" * 32, 50))
    assert not np.allclose(q, mixing_matrix("ac" * 32, 50))
    assert np.abs(q).max() < 0.8  # dense: no served output is (close to) one class
    with pytest.raises(KeyFileError, match="64 hex"):
        MixingKey("xyz", 10, "fc", "0" * 64)


def _discovered(served, secret, queries, keep=10):
    found = noise_discovery(served, DIGIT, keep, queries, seed=7)
    return len(set(found.tolist()) & set(secret.class_positions().tolist()))


def test_noise_discovery_finds_the_paper_schemes_real_rows_but_not_the_decoys(digits_model, one_torch_thread):
    """Red team: the N outputs that vary least on 16 noise images are the paper's real rows (the control: the
    attacker works); with decoys matched to the real rows on noise, they are a draw from 2N rows."""
    model, images, _ = digits_model
    fake_gradient = protect(model, example_input=images[:2], seed=1)
    assert _discovered(*fake_gradient, 16) == 10
    found = []
    for seed in range(4):
        served, key = protect(model, method="decoys", example_input=images[:2], seed=seed)
        found.append(_discovered(served, key, 64))
        # every one of the 2N least-varying outputs is a real row or a decoy, never a winning fake
        least = noise_discovery(served, DIGIT, 20, 64, seed=7)
        assert not (key.is_fake(least) & ~key.is_decoy(least)).any()
    assert np.mean(found) <= 7, found  # chance: 5 of 10; the paper's scheme: 10 of 10


def test_decoy_fakes_win_on_natural_images_and_the_decoys_never_do(digits_model):
    model, images, _ = digits_model
    served, key = protect(model, method="decoys", example_input=images[:2], seed=0)
    with torch.no_grad():
        winners = served(images).argmax(1).numpy()
    assert key.is_fake(winners).all() and not key.is_decoy(winners).any()


def test_naive_deepfool_on_the_mixed_outputs_rarely_moves_the_real_decision(digits_model, one_torch_thread):
    """The claim of the mixing design: the served model's decision boundaries are not the real ones, so the
    naive attacker (DeepFool on the served outputs) changes the real top-1 far less often than on the model."""
    model, images, _ = digits_model
    x = images[:100]
    served, key = protect(model, method="mixing", example_input=x[:2], seed=0)
    on_model, on_served = DeepFool()(model, x).adversarial, DeepFool()(served, x).adversarial
    with torch.no_grad():
        clean = model(x).argmax(1)
        broken_original = (model(on_model).argmax(1) != clean).float().mean().item()
        broken_mixing = (key.decrypt(served(on_served)).argmax(1) != clean).float().mean().item()
    assert broken_original > 0.9 and broken_mixing < 0.5, (broken_original, broken_mixing)


def test_a_decoy_key_is_a_permutation_of_3n():
    with pytest.raises(KeyFileError, match="permutation of 30"):
        DecoyKey(np.arange(20), 10, "fc", "0" * 64)
    key = DecoyKey(np.random.default_rng(0).permutation(30), 10, "fc", "0" * 64)
    assert key.n_outputs == 30 and key.is_fake(key.class_positions()).sum() == 0
    assert key.is_decoy(np.arange(30)).sum() == 10 and key.is_fake(np.arange(30)).sum() == 20


@pytest.mark.parametrize("method", ["decoys", "mixing"])
def test_a_candidate_runs_through_bundle_serve_classify_and_evaluate(method, tiny, tiny_input, tmp_path, capsys,
                                                                     one_torch_thread):
    from pathlib import Path

    from PIL import Image

    from fakegradient.cli import main
    from fakegradient.data import Sample
    from fakegradient.deployment import save_deployment
    from fakegradient.evaluation.config import EvaluationConfig
    from fakegradient.evaluation.pipeline import Normalized
    from fakegradient.evaluation.records import aggregate_by
    from fakegradient.evaluation.runner import evaluate_model
    from fakegradient.serving.client import preprocess
    from fakegradient.serving.onnx_model import load_model_dir
    from fakegradient.serving.server import build_server
    from test_server_support import in_thread

    preprocess_spec = {"resize": 16, "crop": 16, "mean": [0.5] * 3, "std": [0.25] * 3}
    served, secret = protect(tiny, method=method, example_input=tiny_input, labels=NAMES)
    deployed = save_deployment(tmp_path / "cloud", tmp_path / "device" / "k.secret", served, secret,
                               input_size=[3, 16, 16], extra={"preprocess": preprocess_spec})
    image = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(image)
    with torch.no_grad():
        expected = tiny(torch.from_numpy(preprocess(image, preprocess_spec))[None]).argmax(1).item()
    with in_thread(build_server([load_model_dir(tmp_path / "cloud")])) as (host, port):
        assert main(["classify", "--server", f"http://{host}:{port}", "--key", str(deployed.secret),
                     "--top", "1", str(image)]) == 0
    assert capsys.readouterr().out.strip().startswith(f"photo.png: {NAMES[expected]} ")
    samples = [Sample(Path(f"img_{i}.png"), None) for i in range(len(tiny_input))]
    config = EvaluationConfig(models=["tiny"], methods=("original", method), seed=0, max_iter=5, timing_repeats=2)
    evaluation = evaluate_model("tiny", Normalized(tiny, (0.0,), (1.0,)), tiny_input, samples, config,
                                progress=False)
    assert aggregate_by(evaluation.records)[("tiny", method)]["original_functionality_pct"] == 100.0
