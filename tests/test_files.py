"""Key files, protected-model files and ONNX export."""

import os
import stat

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from fakegradient import FakeGradientError, Key, KeyFileError, KeyMismatch, ModelFileError, models, protect
from fakegradient.modelfile import ModelInfo, export_onnx, load_protected, save_protected
from fakegradient.schemes import get as get_scheme


@pytest.fixture
def protected_tiny(tiny, tiny_input):
    return protect(tiny, example_input=tiny_input)


def test_key_round_trip_and_mode(tmp_path, protected_tiny):
    _, key = protected_tiny
    path = tmp_path / "key.json"
    key.save(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    loaded = Key.load(path)
    assert np.array_equal(loaded.permutation, key.permutation)
    assert loaded.describe() == key.describe()
    assert "permutation" not in key.describe()
    assert [p.name for p in tmp_path.iterdir()] == ["key.json"]  # no temp file left


def test_key_file_corruption_is_detected(tmp_path, protected_tiny):
    _, key = protected_tiny
    data = key.to_bytes()
    cases = {
        "truncated": data[: len(data) // 2],
        "empty": b"",
        "binary": bytes(range(256)),
        "other json": b'{"hello": 1}',
    }
    # flip one bit in every digit of the permutation section: each must be caught
    start = data.index(b'"permutation"')
    for offset in range(start + 16, start + 40):
        if chr(data[offset]).isdigit():
            flipped = bytearray(data)
            flipped[offset] ^= 0x01
            cases[f"bitflip@{offset}"] = bytes(flipped)
    assert len(cases) > 8
    for name, content in cases.items():
        path = tmp_path / f"{name}.json"
        path.write_bytes(content)
        with pytest.raises(KeyFileError):
            Key.load(path)
    with pytest.raises(KeyFileError, match="cannot read"):
        Key.load(tmp_path / "missing.json")


def test_key_of_another_model_and_wrong_width(protected_tiny, tiny, tiny_input):
    protected, key = protected_tiny
    other, _ = protect(tiny, example_input=tiny_input)
    with torch.no_grad():
        out = protected(tiny_input)
    assert torch.equal(key.decrypt(out, fingerprint=get_scheme(key.method).fingerprint(protected, key)), key.decrypt(out))
    with pytest.raises(KeyMismatch, match="another model"):
        key.decrypt(out, fingerprint=get_scheme(key.method).fingerprint(other, key))
    with pytest.raises(KeyMismatch, match="width"):
        key.decrypt(np.zeros((1, key.n_outputs + 1)))


def test_unwritable_key_path_leaves_nothing(tmp_path, protected_tiny):
    _, key = protected_tiny
    locked = tmp_path / "locked"
    locked.mkdir()
    with pytest.raises(FakeGradientError):
        key.save(tmp_path / "missing-folder" / "key.json")
    if os.geteuid() != 0:  # root may write anywhere
        locked.chmod(0o500)
        with pytest.raises(FakeGradientError):
            key.save(locked / "key.json")
    with pytest.raises(FakeGradientError, match="folder"):
        key.save(locked)
    assert list(locked.iterdir()) == []


def test_failed_write_keeps_previous_file(tmp_path, protected_tiny, monkeypatch):
    _, key = protected_tiny
    path = tmp_path / "key.json"
    path.write_bytes(b"previous")

    def boom(*_args, **_kwargs):
        raise OSError("disk full")

    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        key.save(path)  # never replaced by default
    assert path.read_bytes() == b"previous"
    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        key.save(path, replace=True)  # the CLI's --force: a failed replacement keeps the old file
    assert path.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["key.json"]


def test_a_new_key_is_never_written_over_a_file_or_link(tmp_path, protected_tiny, monkeypatch):
    _, key = protected_tiny
    other = tmp_path / "other"
    other.write_bytes(b"someone else's")
    link = tmp_path / "link.json"
    link.symlink_to(other)
    dangling = tmp_path / "dangling.json"
    dangling.symlink_to(tmp_path / "nowhere")
    for taken in (other, link, dangling):
        with pytest.raises(KeyFileError, match="refusing to overwrite"):
            key.save(taken)
    assert other.read_bytes() == b"someone else's" and not (tmp_path / "nowhere").exists()

    def no_hard_links(*_args, **_kwargs):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_hard_links)  # file systems without hard links: an exclusive create
    key.save(tmp_path / "key.json")
    assert Key.load(tmp_path / "key.json").describe() == key.describe()
    assert stat.S_IMODE(os.stat(tmp_path / "key.json").st_mode) == 0o600
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        key.save(tmp_path / "key.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling.json", "key.json", "link.json", "other"]


@pytest.fixture(scope="module")
def protected_mobilenet():
    model = models.load("mobilenet_v2", weights=None)
    protected, key = protect(model, seed=3)
    info = ModelInfo(arch="mobilenet_v2", head=key.head, n_real=key.n_real, fingerprint=key.model_fingerprint,
                     n_outputs=key.n_outputs, arch_kwargs={"num_classes": 1000})
    return protected, key, info


def test_model_file_round_trip_and_tamper(tmp_path, protected_mobilenet):
    protected, key, info = protected_mobilenet
    path = tmp_path / "model.pt"
    save_protected(path, protected, info)
    loaded, loaded_info = load_protected(path)
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():  # the same weights: equal up to the kernels' rounding
        torch.testing.assert_close(loaded(x), protected(x), rtol=1e-5, atol=1e-5)
    assert loaded_info == info
    # edit one head weight, or zero a trunk tensor: the whole-model digest no longer matches
    for name, edit in (("classifier.1.weight", lambda t: t[0, 0].add_(1.0)), ("features.0.0.weight", torch.Tensor.zero_)):
        payload = torch.load(path, weights_only=True)
        edit(payload["state_dict"][name])
        torch.save(payload, tmp_path / "edited.pt")
        with pytest.raises(ModelFileError, match="do not match the digest"):
            load_protected(tmp_path / "edited.pt")
    (tmp_path / "trunc.pt").write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ModelFileError):
        load_protected(tmp_path / "trunc.pt")
    with pytest.raises(ModelFileError):
        load_protected(tmp_path / "none.pt")


def _integer_arrays(graph):
    for init in graph.initializer:
        yield numpy_helper.to_array(init)
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield numpy_helper.to_array(attr.t)
            elif attr.type == onnx.AttributeProto.INTS:
                yield np.array(attr.ints)


def test_onnx_has_no_key_material_and_matches_torch(tmp_path, protected_mobilenet):
    protected, key, info = protected_mobilenet
    path = tmp_path / "model.onnx"
    export_onnx(path, protected, info)
    graph = onnx.load(str(path)).graph
    onnx.checker.check_model(onnx.load(str(path)))
    ops = {node.op_type for node in graph.node}
    assert not ops & {"Gather", "GatherElements", "GatherND", "ScatterND", "ScatterElements", "TopK"}
    inverse = np.argsort(key.permutation)
    for array in _integer_arrays(graph):
        flat = np.asarray(array).reshape(-1)
        if flat.size == key.n_outputs and flat.dtype.kind in "iu":
            assert not np.array_equal(flat, key.permutation) and not np.array_equal(flat, inverse)
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert meta["fakegradient.fingerprint"] == key.model_fingerprint
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):  # dynamic batch
        x = torch.rand(batch, 3, 224, 224)
        (onnx_out,) = session.run(None, {"input": x.numpy()})
        with torch.no_grad():
            torch_out = protected(x).numpy()
        np.testing.assert_allclose(onnx_out, torch_out, atol=1e-4, rtol=1e-4)


def test_atomic_write_syncs_the_folder_after_the_rename(tmp_path, protected_tiny, monkeypatch):
    """The new name itself must be durable: the folder is fsynced after ``os.link`` (a new key) or ``os.replace``
    (``replace=True``)."""
    _, key = protected_tiny
    events = []
    real_fsync, real_replace, real_link = os.fsync, os.replace, os.link

    def fsync(fd):
        events.append("fsync folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", lambda *a: events.append("replace") or real_replace(*a))
    monkeypatch.setattr(os, "link", lambda *a: events.append("link") or real_link(*a))
    key.save(tmp_path / "key.json")
    assert events == ["fsync file", "link", "fsync folder"]
    events.clear()
    key.save(tmp_path / "key.json", replace=True)
    assert events == ["fsync file", "replace", "fsync folder"]


def test_keep_copy_never_replaces_an_older_copy(tmp_path):
    from fakegradient.atomic import drop_copy, keep_copy

    path = tmp_path / "key.json"
    copies = []
    for version in range(3):
        path.write_bytes(f"key {version}".encode())
        copies.append(keep_copy(path))
    assert [p.name for p in copies] == ["key.json.old", "key.json.old.1", "key.json.old.2"]
    assert [p.read_bytes() for p in copies] == [b"key 0", b"key 1", b"key 2"]
    assert {stat.S_IMODE(p.stat().st_mode) for p in copies} == {0o600}
    drop_copy(copies[-1], path)  # the original is unchanged: the copy goes
    assert not copies[-1].exists()
    path.write_bytes(b"key 3")
    drop_copy(copies[1], path)  # the original was replaced: the copy is the only one left and stays
    assert copies[1].read_bytes() == b"key 1"
