"""What answers the evaluation's forward passes made without a graph (black-box queries, success judgements,
timings): ``torch`` (the pipeline itself) or ``onnxruntime``: the pipeline's trunk exported to ONNX and run
by ONNX Runtime, as an inference server runs it, then its head in torch. The head stays in torch so that
what watches it (the reuse of the original's black-box run, the feature-space attack's clean features)
still sees every query. Another float computation than torch's: a borderline decision can differ.
Gradients always come from torch."""

from __future__ import annotations

import copy
import io
import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from .._lazy import missing_message
from ..errors import FakeGradientError, HeadNotFound
from ..head import replace_module, trace_head
from .config import RUNTIMES
from .pipeline import Normalized

_REFUSED = "--query-runtime onnxruntime: {why}; use --query-runtime torch"


class OnnxRuntime:
    """Answers ``pipeline`` (B, C, H, W) → its output (B, ...), float32 on the input's device: the trunk (the
    pipeline with its head, the layer whose output is the pipeline's, replaced by the identity; all of it
    where it has none) exported once (opset 17, dynamic batch; later changes to the trunk's weights are not
    seen) and run by ONNX Runtime on the CPU with ``threads`` intra-op threads, then the pipeline's head as it
    is at the call (looked up by name). ``example`` (1, C, H, W): what the export traces; the answer is checked
    against the pipeline on it and on a batch of two."""

    def __init__(self, pipeline: Normalized, example: torch.Tensor, threads: int = 1):
        example = example[:1].cpu().float()
        probe = torch.cat([example, 1 - example])  # two images: the dynamic batch axis too
        answer, pipeline.answer = pipeline.answer, None  # the module itself, not an earlier answer
        self.model, self.threads = pipeline.model, threads
        try:
            with torch.no_grad():
                expected = pipeline(probe)
                try:
                    self.name: str | None = trace_head(pipeline.model,
                                                       (example - pipeline.mean) / pipeline.std).head or None
                except HeadNotFound:  # e.g. a scheme serving features: all of it in ONNX Runtime
                    self.name = None
                self.onnx = _export(pipeline, self.name, example)
        finally:
            pipeline.answer = answer
        self.session = self._session()
        self.shape = tuple(expected.shape[1:])
        try:
            with torch.no_grad():
                got = self(probe)
            same = got.shape == expected.shape and torch.allclose(got, expected, rtol=1e-3,
                                                                  atol=1e-3 * float(expected.abs().max()))
        except (RuntimeError, ValueError) as exc:  # the head refuses what the trunk gives it
            raise FakeGradientError(_REFUSED.format(why=f"the exported trunk does not feed the head ({exc})")) from None
        if not same:
            raise FakeGradientError(_REFUSED.format(why="ONNX Runtime's answer differs from the model's output "
                                                        "beyond float rounding (is the head its last operation?)"))

    def _session(self) -> Any:
        try:
            import onnxruntime as ort
        except ModuleNotFoundError:
            raise FakeGradientError(missing_message("--query-runtime onnxruntime", "eval")) from None
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = self.threads, 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # torch's threads run between calls
        try:
            return ort.InferenceSession(self.onnx, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own exception types
            raise FakeGradientError(_REFUSED.format(why=f"ONNX Runtime cannot load the exported trunk ({exc})")) from None

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "session"}  # a session cannot be pickled

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.session = self._session()

    def __deepcopy__(self, memo: dict) -> OnnxRuntime:
        """A copy with its own session, over the copied model (a copied pipeline's answer runs the copy's head)."""
        new = copy.copy(self)
        memo[id(self)] = new
        new.model = copy.deepcopy(self.model, memo)
        new.session = new._session()
        return new

    @property
    def head(self) -> nn.Module | None:
        """The head the answer runs after the trunk (None: the whole pipeline is in ONNX Runtime)."""
        return None if self.name is None else self.model.get_submodule(self.name)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        try:
            (trunk,) = self.session.run(None, {"input": x.detach().to("cpu", torch.float32).contiguous().numpy()})
        except Exception as exc:  # e.g. another image size than the one exported
            raise FakeGradientError(_REFUSED.format(why=f"ONNX Runtime cannot run {tuple(x.shape)} ({exc})")) from None
        out = torch.from_numpy(trunk).to(x.device)
        head = self.head
        return (out if head is None else head(out)).reshape(len(x), *self.shape)


def _export(pipeline: Normalized, head: str | None, example: torch.Tensor) -> bytes:
    """``pipeline`` with the layer ``head`` (if any) replaced by the identity while exported to ONNX, as bytes."""
    layer = pipeline.model.get_submodule(head) if head else None
    if layer is not None:
        replace_module(pipeline.model, head, nn.Identity())
    try:
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(pipeline.eval(), (example,), buffer, dynamo=False, opset_version=17,
                              input_names=["input"], output_names=["output"],
                              dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
        return buffer.getvalue()
    except Exception as exc:  # torch's exporter raises many types
        raise FakeGradientError(_REFUSED.format(
            why=f"cannot export the model to ONNX ({type(exc).__name__}: {str(exc)[:300]})")) from None
    finally:
        if layer is not None:
            replace_module(pipeline.model, head, layer)


def answer_with(runtime: str, pipelines: Iterable[Normalized], example: torch.Tensor, threads: int = 1) -> None:
    """Sets each of ``pipelines`` (each once) to be answered by ``runtime`` (one of :data:`RUNTIMES`) when called
    without a graph; ``torch``: by itself."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    for pipeline in {id(p): p for p in pipelines}.values():  # the original may also be served as a method
        pipeline.answer = None if runtime == "torch" else OnnxRuntime(pipeline, example, threads)
