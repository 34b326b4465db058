"""``--query-runtime onnxruntime``: every call without a graph (queries, judges) answered by the pipeline's trunk
exported to ONNX and run by ONNX Runtime, then its head in torch; every call building a graph by torch."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

from fakegradient.cli import build_parser
from fakegradient.errors import ConfigError, FakeGradientError
from fakegradient.evaluation.config import EvaluationConfig
from fakegradient.evaluation.pipeline import Normalized
from fakegradient.evaluation.runtimes import OnnxRuntime, answer_with
from fakegradient.evaluation.workbench import served_pipelines

METHODS = ["original", "fake-gradient", "random-weight", "fake-gradient-hardened", "device-head"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def served(digits_model):
    model, x, _ = digits_model
    config = EvaluationConfig(models=["digits"], methods=METHODS, seed=0, query_runtime="onnxruntime")
    original = Normalized(copy.deepcopy(model), (0.0,), (1.0,)).eval()  # the session's fixture stays as it is
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the sessions take torch's thread count (one_torch_thread is not active yet)
    try:
        return original, served_pipelines(original, config, 0, x[:1]), x
    finally:
        torch.set_num_threads(threads)


class Counted:
    def __init__(self, answer):
        self.answer, self.calls = answer, 0

    def __call__(self, x):
        self.calls += 1
        return self.answer(x)


def test_calls_without_a_graph_are_answered_by_onnxruntime_with_the_same_function(served):
    original, pipelines, x = served
    assert all(isinstance(p.answer, OnnxRuntime) for p, _ in pipelines.values())
    assert pipelines["original"][0] is original
    for method, (pipeline, _) in pipelines.items():
        counted = pipeline.answer = Counted(pipeline.answer)
        try:
            with torch.no_grad():
                answered = pipeline(x[:16])
                assert counted.calls == 1 and answered.dtype == torch.float32
                pipeline.answer = None
                computed = pipeline(x[:16])
        finally:
            pipeline.answer = counted.answer
        # another float computation of the same function: equal up to rounding, never bitwise
        torch.testing.assert_close(answered, computed, atol=1e-4, rtol=1e-5, msg=method)


def test_the_head_runs_in_torch_and_sees_every_call_where_there_is_one(served):
    original, pipelines, x = served
    head = pipelines["fake-gradient"][0].answer.head
    assert isinstance(head, torch.nn.Linear) and original.answer.head is original.model[-1]
    assert pipelines["device-head"][0].answer.head is None  # serves features: all of it in ONNX Runtime
    seen = []
    hook = head.register_forward_hook(lambda _m, inputs, _o: seen.append(inputs[0].shape))
    try:
        with torch.no_grad():
            pipelines["fake-gradient"][0](x[:5])
    finally:
        hook.remove()
    assert seen == [torch.Size([5, head.in_features])]


def test_a_call_building_a_graph_runs_torch(served):
    _, pipelines, x = served
    pipeline = pipelines["fake-gradient"][0]
    counted = pipeline.answer = Counted(pipeline.answer)
    try:
        images = x[:4].clone().requires_grad_(True)
        out = pipeline(images)
        (grad,) = torch.autograd.grad(out[:, 0].sum(), images)
        assert counted.calls == 0 and out.grad_fn is not None and grad.abs().sum() > 0
    finally:
        pipeline.answer = counted.answer


def test_answer_with_torch_removes_the_answers_and_each_pipeline_is_exported_once(digits_model):
    model, x, _ = digits_model
    pipeline = Normalized(copy.deepcopy(model), (0.0,), (1.0,)).eval()
    answer_with("onnxruntime", [pipeline, pipeline], x[:1])
    first = pipeline.answer
    assert isinstance(first, OnnxRuntime)
    answer_with("onnxruntime", [pipeline], x[:1])  # re-exported from the module, not from the earlier answer
    assert isinstance(pipeline.answer, OnnxRuntime) and pipeline.answer is not first
    answer_with("torch", [pipeline], x[:1])
    assert pipeline.answer is None
    with pytest.raises(ValueError, match="runtime must be one of"):
        answer_with("tensorrt", [pipeline], x[:1])


def test_the_setting_is_checked_and_off_by_default():
    assert EvaluationConfig().query_runtime == "torch"
    with pytest.raises(ConfigError, match="query_runtime must be one of"):
        EvaluationConfig(query_runtime="tensorrt")
    with pytest.raises(ConfigError, match="runs on the CPU"):
        EvaluationConfig(query_runtime="onnxruntime", device="cuda")
    parser = build_parser()
    assert parser.parse_args(["evaluate"]).query_runtime == "torch"
    assert parser.parse_args(["evaluate", "--query-runtime", "onnxruntime"]).query_runtime == "onnxruntime"


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_a_copied_pipeline_is_answered_by_its_own_session_and_head(served, how):
    _, pipelines, x = served
    pipeline = pipelines["random-weight"][0]
    twin = copy.deepcopy(pipeline) if how == "deepcopy" else pickle.loads(pickle.dumps(pipeline))
    assert twin.answer.session is not pipeline.answer.session
    assert twin.answer.head is twin.get_submodule("model." + pipeline.answer.name)  # the copy's own head
    with torch.no_grad():
        torch.testing.assert_close(twin(x[:4]), pipeline(x[:4]), atol=0, rtol=0)  # the same computation


class Reordered(torch.nn.Module):
    """A model whose output is not its last layer's: no layer is its head."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x).flip(1)


def test_a_model_without_a_head_is_answered_whole_by_onnxruntime(digits_model):
    model, x, _ = digits_model
    pipeline = Normalized(Reordered(copy.deepcopy(model)), (0.0,), (1.0,)).eval()
    answer = OnnxRuntime(pipeline, x[:1])
    assert answer.head is None and isinstance(pipeline.model.model[-1], torch.nn.Linear)  # left as it was
    with torch.no_grad():
        torch.testing.assert_close(answer(x[:8]), pipeline(x[:8]), atol=1e-4, rtol=1e-5)


def test_an_answer_that_differs_from_the_model_is_refused_with_a_clear_error(digits_model, monkeypatch):
    model, x, _ = digits_model
    pipeline = Normalized(copy.deepcopy(model), (0.0,), (1.0,)).eval()
    answer = OnnxRuntime.__call__
    monkeypatch.setattr(OnnxRuntime, "__call__", lambda self, images: answer(self, images) + 1.0)
    with pytest.raises(FakeGradientError, match="differs from the model's output"):
        OnnxRuntime(pipeline, x[:1])
    assert pipeline.answer is None and isinstance(pipeline.model[-1], torch.nn.Linear)  # left as it was
