"""Whole-model integrity: the server and ``export-triton`` recompute the digest of every weight and node of
``model.onnx`` and refuse a file that does not match it, so that a corrupted backbone (which leaves the
head's fingerprint intact) is refused instead of served with confident wrong labels."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from test_server_support import write_model

from fakegradient import FakeGradientError, protect
from fakegradient.cli import main
from fakegradient.integrity import DIGEST_KEY, onnx_digest
from fakegradient.modelfile import write_bundle
from fakegradient.serving.onnx_model import load_model_dir
from fakegradient.serving.triton import export_triton


@pytest.fixture
def cloud(tmp_path, tiny, tiny_input):
    """A protected TinyNet's cloud folder (as `protect` writes it) and the protected module."""
    protected, key = protect(tiny, example_input=tiny_input, seed=0)
    write_bundle(tmp_path / "cloud", protected, key, input_size=[3, 16, 16],
                 extra={"preprocess": {"resize": 16, "crop": 16, "mean": [0.5] * 3, "std": [0.25] * 3}})
    return tmp_path / "cloud", protected


def flip_backbone_bytes(path, protected, count: int = 20) -> None:
    """Flip ``count`` bytes inside the first convolution's stored weights (the backbone, not the head)."""
    data = bytearray(path.read_bytes())
    stored = protected.features[0].weight.detach().numpy().astype("<f4").tobytes()
    start = data.find(stored)
    assert start > 0 and data.find(stored, start + 1) == -1
    for offset in np.random.default_rng(0).choice(len(stored), count, replace=False):
        data[start + int(offset)] ^= 0x5A
    path.write_bytes(bytes(data))


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_an_untouched_export_is_served_and_exported(cloud, tmp_path):
    folder, _ = cloud
    meta = {p.key: p.value for p in onnx.load(str(folder / "model.onnx")).metadata_props}
    assert meta[DIGEST_KEY] == onnx_digest(onnx.load(str(folder / "model.onnx")), folder)
    served = load_model_dir(folder)
    assert served.infer(np.zeros((1, 3, 16, 16), np.float32)).shape == (1, 20)
    assert main(["export-triton", str(folder), str(tmp_path / "repo")]) == 0


def test_flipped_bytes_in_the_backbone_are_refused_by_serve_and_export_triton(cloud, tmp_path, capsys):
    folder, protected = cloud
    path = folder / "model.onnx"
    x = np.random.default_rng(1).random((4, 3, 16, 16), dtype=np.float32)
    before = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    flip_backbone_bytes(path, protected)
    onnx.checker.check_model(str(path))  # still a valid ONNX file, whose head still matches its fingerprint
    after = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert np.abs(after - before).max() > 1e-3  # it would answer something else: it must not be served
    with pytest.raises(FakeGradientError, match="do not match the digest in its metadata"):
        load_model_dir(folder)
    with pytest.raises(FakeGradientError, match="corrupted or edited"):
        export_triton(folder, tmp_path / "repo")
    assert main(["export-triton", str(folder), str(tmp_path / "repo")]) == 1
    assert "do not match the digest" in one_line_error(capsys)
    assert main(["serve", str(folder), "--port", "0"]) == 1  # refused before it listens
    assert "do not match the digest" in one_line_error(capsys)
    assert not (tmp_path / "repo").exists()


def edit(path, change) -> None:
    model = onnx.load(str(path))
    change(model)
    onnx.save(model, str(path))


def test_edited_nodes_or_metadata_are_refused(cloud):
    folder, _ = cloud
    path = folder / "model.onnx"
    original = path.read_bytes()

    def pad_the_first_conv(model):
        conv = next(n for n in model.graph.node if n.op_type == "Conv")
        next(a for a in conv.attribute if a.name == "pads").ints[:] = [0, 0, 0, 0]

    def other_preprocessing(model):
        prop = next(p for p in model.metadata_props if p.key == "fakegradient.preprocess")
        prop.value = json.dumps({"resize": 32, "crop": 16, "mean": [0.5] * 3, "std": [0.25] * 3})

    for change in (pad_the_first_conv, other_preprocessing):
        path.write_bytes(original)
        edit(path, change)
        with pytest.raises(FakeGradientError, match="do not match the digest"):
            load_model_dir(folder)


def test_the_digest_does_not_depend_on_how_values_are_stored(cloud):
    folder, _ = cloud

    def as_typed_fields(model):  # float_data instead of raw_data: the same values
        for index, tensor in enumerate(model.graph.initializer):
            if tensor.data_type == onnx.TensorProto.FLOAT:
                values = numpy_helper.to_array(tensor)
                typed = onnx.helper.make_tensor(tensor.name, tensor.data_type, tensor.dims, values.reshape(-1))
                model.graph.initializer[index].CopyFrom(typed)

    edit(folder / "model.onnx", as_typed_fields)
    assert load_model_dir(folder).infer(np.zeros((1, 3, 16, 16), np.float32)).shape == (1, 20)


def test_a_file_written_before_digests_is_refused_with_a_hint_to_export_again(tmp_path, capsys):
    write_model(tmp_path / "old", sealed=False)
    with pytest.raises(FakeGradientError, match="has no integrity digest .* export it again"):
        load_model_dir(tmp_path / "old")
    assert main(["export-triton", str(tmp_path / "old"), str(tmp_path / "repo")]) == 1
    assert "export it again with `fakegradient protect`" in one_line_error(capsys)
    write_model(tmp_path / "new")  # the same model, sealed: served
    assert load_model_dir(tmp_path / "new").name == "new"
