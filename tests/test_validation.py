"""Bad hyper-parameters are refused up front with InvalidArgument and a message naming the setting (the field in
the library, the flag on the command line), never a silent no-op or a failure halfway through a run."""

import dataclasses
import math

import pytest

from fakegradient import FakeGradientError, InvalidArgument
from fakegradient.attacks.deepfool import DeepFool
from fakegradient.cli import main
from fakegradient.evaluation.config import EvaluationConfig
from fakegradient.methods import METHODS


def test_invalid_argument_is_a_fakegradient_error_and_a_value_error():
    assert issubclass(InvalidArgument, FakeGradientError) and issubclass(InvalidArgument, ValueError)


@pytest.mark.parametrize("field, value, flag", [
    ("batch_size", 0, "--batch-size"),
    ("batch_size", -3, "--batch-size"),
    ("batch_size", True, "--batch-size"),
    ("batch_size", 2.5, "--batch-size"),
    ("max_iter", 0, "--max-iter"),
    ("candidates", 1, "--candidates"),
    ("overshoot", -1.0, "--overshoot"),
    ("overshoot", math.nan, "--overshoot"),
    ("overshoot", math.inf, "--overshoot"),
    ("scale", 0.0, "--scale"),
    ("scale", -1.0, "--scale"),
    ("scale", math.inf, "--scale"),
    ("scale", math.nan, "--scale"),
    ("limit", 0, "--limit"),
    ("timing_repeats", 1, "--timing-repeats"),
    ("heatmap_images", -1, "--heatmap-images"),
    ("blackbox_queries", 0, "--blackbox-queries"),
    ("blackbox_factor", 0.0, "--blackbox-factor"),
    ("feature_steps", 0, "--feature-steps"),
])
def test_config_rejects_a_bad_value_naming_its_field_and_the_cli_its_flag(field, value, flag):
    from fakegradient.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        EvaluationConfig(**{field: value})
    message = str(info.value)
    assert info.value.field == field and field in message and "--" not in message and "\n" not in message, message
    assert flag in info.value.as_flag()


def test_config_accepts_the_edge_values():
    config = EvaluationConfig(batch_size=1, max_iter=1, candidates=2, overshoot=0.0, scale=1e-3, limit=1,
                              timing_repeats=2, heatmap_images=0)
    assert (config.batch_size, config.max_iter, config.candidates, config.timing_repeats) == (1, 1, 2, 2)


def test_config_rejects_unknown_and_missing_methods():
    with pytest.raises(InvalidArgument) as info:
        EvaluationConfig(methods=("original", "nope"))
    message = str(info.value)
    assert "nope" in message and all(name in message for name in METHODS), message
    with pytest.raises(InvalidArgument, match="method"):
        EvaluationConfig(methods=())
    with pytest.raises(InvalidArgument, match="model"):
        EvaluationConfig(models=())


def test_config_is_frozen_and_normalised():
    config = EvaluationConfig(methods=["original"], models=["a", "b"])
    assert config.methods == ("original",) and config.models == ("a", "b")
    assert config.batch_size == EvaluationConfig(device="cpu").batch_size >= 1  # resolved from the device
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.max_iter = 0
    assert EvaluationConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("kwargs, word", [
    ({"max_iter": -1}, "max_iter"),
    ({"max_iter": 0}, "max_iter"),
    ({"candidates": 1}, "candidates"),
    ({"overshoot": float("nan")}, "overshoot"),
    ({"overshoot": -0.1}, "overshoot"),
    ({"overshoot": float("inf")}, "overshoot"),
    ({"clip": (1.0, 0.0)}, "clip"),
])
def test_deepfool_rejects_bad_hyper_parameters(kwargs, word):
    with pytest.raises(InvalidArgument, match=word):
        DeepFool(**kwargs)


@pytest.mark.parametrize("flag, value", [("--batch-size", "0"), ("--max-iter", "0"), ("--candidates", "1"),
                                         ("--timing-repeats", "1"), ("--overshoot", "nan"), ("--scale", "inf")])
def test_cli_evaluate_bad_value_exits_2_with_one_line(tmp_path, capsys, flag, value):
    out = tmp_path / "report"
    assert main(["evaluate", flag, value, "--out", str(out)]) == 2
    captured = capsys.readouterr()
    err = captured.err
    assert err.startswith("error: ") and err.count("\n") == 1 and flag in err, err
    assert "Traceback" not in err and captured.out == ""
    assert not out.exists()  # refused before anything was written


def test_cli_evaluate_unknown_method_exits_2(tmp_path, capsys):
    assert main(["evaluate", "--methods", "original,nope", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "nope" in err, err


@pytest.mark.parametrize("args, flag", [
    (["protect", "mobilenet_v2", "--weights", "none", "--num-classes", "0", "--out", "{t}/o", "--key", "{t}/k.json"],
     "--num-classes"),
    (["classify", "--server", "http://127.0.0.1:9", "--key", "{t}/k.json", "--top", "0", "x.jpg"], "--top"),
    (["serve", "{t}", "--threads", "-5"], "--threads"),
    (["export-triton", "{t}/model", "{t}/repo", "--max-batch", "0"], "--max-batch"),
    (["evaluate", "--ray-workers", "2", "--out", "{t}/r"], "--ray-workers"),
])
def test_cli_bad_option_exits_2_and_writes_nothing(tmp_path, capsys, args, flag):
    if args[0] == "export-triton":  # a servable folder, so that only the option is wrong
        from conftest import TinyNet

        from fakegradient import protect
        from fakegradient.modelfile import write_bundle

        x = __import__("torch").rand(2, 3, 16, 16)
        protected, key = protect(TinyNet().eval(), example_input=x, seed=0)
        write_bundle(tmp_path / "model", protected, key, input_size=[3, 16, 16])
    before = sorted(tmp_path.rglob("*"))
    assert main([a.format(t=tmp_path) for a in args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and flag in err, err
    assert sorted(tmp_path.rglob("*")) == before  # nothing written, no folder left


def test_cli_evaluate_missing_data_leaves_no_run_folder(tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["evaluate", "--data", str(tmp_path / "nowhere"), "--out", str(out)]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert not out.exists()
