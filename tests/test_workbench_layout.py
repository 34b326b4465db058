"""``--channels-last``: every pipeline's convolution weights in the channels-last layout, values unchanged."""

from __future__ import annotations

import copy

import torch

from fakegradient.cli import build_parser
from fakegradient.evaluation.config import EvaluationConfig
from fakegradient.evaluation.pipeline import Normalized
from fakegradient.evaluation.workbench import served_pipelines

METHODS = ["original", "fake-gradient", "random-weight"]


def _served(model: torch.nn.Module, x: torch.Tensor, channels_last: bool):
    config = EvaluationConfig(models=["digits"], methods=METHODS, seed=0, channels_last=channels_last)
    original = Normalized(copy.deepcopy(model), (0.0,), (1.0,)).eval()  # the session's fixture stays as it is
    return original, served_pipelines(original, config, 0, x[:1])


def _convolutions(pipeline: torch.nn.Module) -> list[torch.Tensor]:
    return [p for p in pipeline.parameters() if p.dim() == 4]


def test_channels_last_puts_every_pipeline_s_convolutions_in_that_layout_with_the_same_outputs(digits_model):
    model, x, _ = digits_model
    _, plain = _served(model, x, False)
    assert all(w.is_contiguous() for p, _ in plain.values() for w in _convolutions(p))
    last_original, last = _served(model, x, True)
    for pipeline in (last_original, *(p for p, _ in last.values())):  # the original the evaluation holds too
        weights = _convolutions(pipeline)
        assert all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)
        assert any(not w.is_contiguous() for w in weights)  # one input channel is both layouts; 16 are not
    with torch.no_grad():
        for method in METHODS:  # other kernels, the same function: equal up to rounding
            torch.testing.assert_close(last[method][0](x[:8]), plain[method][0](x[:8]), atol=1e-4, rtol=1e-5)


def test_the_cli_has_the_option_off_by_default():
    parser = build_parser()
    assert parser.parse_args(["evaluate"]).channels_last is False
    assert parser.parse_args(["evaluate", "--channels-last"]).channels_last is True
