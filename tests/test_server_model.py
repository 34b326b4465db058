"""What the server agrees to load: a model whose weights and metadata match its whole-model digest, and a folder
without any device secret in it (of any registered kind, compressed or behind a symlinked folder)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from test_server_support import head_weights, write_model

from fakegradient import FakeGradientError, Key, protect
from fakegradient.cli import main
from fakegradient.modelfile import write_bundle
from fakegradient.serving.onnx_model import RuntimeOptions, load_model_dir
from fakegradient.serving.triton import export_triton


@pytest.mark.parametrize("head", ["gemm", "gemm-t", "conv", "matmul"])
def test_the_published_fingerprint_is_the_sealed_metadata(tmp_path, head):
    """The fingerprint is keyed with a secret only the device holds: the server cannot recompute it and
    publishes the metadata's value, which the whole-model digest covers."""
    write_model(tmp_path, head, fingerprint="ab" * 32)
    served = load_model_dir(tmp_path)
    assert served.parameters()["fingerprint"] == "ab" * 32
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2) / 10
    weight, bias = head_weights()
    np.testing.assert_allclose(served.infer(x), x.reshape(2, 12) @ weight.T + bias, rtol=1e-5, atol=1e-5)


def test_an_edited_fingerprint_is_refused(tmp_path):
    path = write_model(tmp_path, fingerprint="ab" * 32)
    graph = onnx.load(str(path))
    next(p for p in graph.metadata_props if p.key == "fakegradient.fingerprint").value = "cd" * 32
    onnx.save(graph, str(path))
    with pytest.raises(FakeGradientError, match="corrupted or edited"):
        load_model_dir(tmp_path)


def test_a_model_without_a_fingerprint_is_refused(tmp_path):
    write_model(tmp_path, fingerprint=None)
    with pytest.raises(FakeGradientError, match="no fingerprint"):
        load_model_dir(tmp_path)


def test_a_file_that_is_not_onnx_is_refused_in_one_line(tmp_path):
    path = write_model(tmp_path)
    path.write_bytes(path.read_bytes()[:-40])  # truncated
    with pytest.raises(FakeGradientError, match="not a valid ONNX file") as error:
        load_model_dir(tmp_path)
    assert "\n" not in str(error.value)


def test_the_cpu_arena_is_off_unless_asked_for(tmp_path):
    write_model(tmp_path)
    assert load_model_dir(tmp_path).session.get_session_options().enable_cpu_mem_arena is False
    arena = load_model_dir(tmp_path, runtime=RuntimeOptions(cpu_arena=True))
    assert arena.session.get_session_options().enable_cpu_mem_arena is True


def test_the_cuda_device_is_refused_clearly_where_onnx_runtime_cannot_run_there(tmp_path, monkeypatch):
    import onnxruntime as ort

    write_model(tmp_path)
    cpu = load_model_dir(tmp_path, runtime=RuntimeOptions(device="cpu"))
    assert cpu.session.get_providers() == ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():  # this machine: no onnxruntime-gpu
        with pytest.raises(FakeGradientError, match="has no CUDAExecutionProvider.*install onnxruntime-gpu"):
            load_model_dir(tmp_path, runtime=RuntimeOptions(device="cuda"))
    # an ONNX Runtime that lists CUDA but cannot start it falls back to the CPU silently: refused, not served slowly
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    real_session = ort.InferenceSession
    monkeypatch.setattr(ort, "InferenceSession",
                        lambda model, options, providers: real_session(model, options, providers=providers[1:]))
    with pytest.raises(FakeGradientError, match="fell back to CPUExecutionProvider"):
        load_model_dir(tmp_path, runtime=RuntimeOptions(device="cuda"))
    result = subprocess.run([sys.executable, "-m", "fakegradient.cli", "serve", str(tmp_path), "--device", "tpu"],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2 and "--device" in result.stderr and "Traceback" not in result.stderr


def test_memory_freed_by_a_large_run_goes_back_to_the_os(tmp_path, monkeypatch):
    from fakegradient.serving import onnx_model

    onnx_model.release_freed_memory()  # works (or does nothing) on this C library
    calls: list[int] = []
    monkeypatch.setattr(onnx_model, "release_freed_memory", lambda: calls.append(1))
    write_model(tmp_path)
    served = load_model_dir(tmp_path)
    served.infer(np.zeros((2, 3, 2, 2), np.float32))
    assert calls == []  # small runs: nothing to give back
    served.infer(np.zeros((onnx_model.TRIM_AFTER_BYTES // 48 + 1, 3, 2, 2), np.float32))
    assert calls == [1]


@pytest.fixture
def protected_folder(tmp_path, tiny, tiny_input):
    """A real protected TinyNet: cloud folder (model.onnx) and key."""
    protected, key = protect(tiny, example_input=tiny_input, seed=0)
    write_bundle(tmp_path / "cloud", protected, key, input_size=[3, 16, 16])
    key.save(tmp_path / "key.json")
    return tmp_path / "cloud", key, protected


def flip_head_bytes(path, protected, count: int = 50) -> None:
    """Flip ``count`` bytes inside the stored head weights of ``path`` (as a disk or a copy would)."""
    data = bytearray(path.read_bytes())
    rows = protected.fc.weight.detach().numpy().astype("<f4").tobytes()
    start = data.find(rows)
    assert start > 0
    for offset in np.random.default_rng(0).choice(len(rows), count, replace=False):
        data[start + int(offset)] ^= 0x5A
    path.write_bytes(bytes(data))


def test_flipped_bytes_in_a_protected_models_head_are_refused_by_serve_and_export(protected_folder, tmp_path,
                                                                                  capsys):
    cloud, key, protected = protected_folder
    assert load_model_dir(cloud).parameters()["fingerprint"] == key.model_fingerprint
    flip_head_bytes(cloud / "model.onnx", protected)
    onnx.checker.check_model(str(cloud / "model.onnx"))  # still a valid ONNX file, with the old metadata
    with pytest.raises(FakeGradientError, match="corrupted or edited"):
        load_model_dir(cloud)
    assert main(["export-triton", str(cloud), str(tmp_path / "repo")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "do not match the digest" in err, err
    assert not (tmp_path / "repo").exists()
    with pytest.raises(FakeGradientError, match="corrupted or edited"):
        export_triton(cloud, tmp_path / "repo")


@pytest.mark.slow
def test_serve_refuses_a_corrupted_model_in_one_line(protected_folder):
    cloud, _, protected = protected_folder
    flip_head_bytes(cloud / "model.onnx", protected)
    result = subprocess.run([sys.executable, "-m", "fakegradient.cli", "serve", str(cloud), "--port", "0"],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "do not match the digest" in result.stderr


def key_variants(key: Key) -> dict[str, bytes]:
    """The same key as Key.save writes it, compacted (``jq -c``), indented, and with CRLF line ends."""
    payload = json.loads(key.to_bytes())
    return {"saved": key.to_bytes(), "compact": json.dumps(payload, separators=(",", ":")).encode(),
            "indented": json.dumps(payload, indent=4).encode(),
            "crlf": json.dumps(payload, indent=1).replace("\n", "\r\n").encode()}


@pytest.mark.parametrize("variant", ["saved", "compact", "indented", "crlf"])
@pytest.mark.parametrize("where", ["notes.txt", "sub/deeper/key.json", "extra.onnx", ".hidden"])
def test_a_key_anywhere_in_the_folder_is_refused(protected_folder, variant, where):
    cloud, key, _ = protected_folder
    target = cloud / where
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(key_variants(key)[variant])
    with pytest.raises(FakeGradientError, match="key file: a device's secret must never reach the server"):
        load_model_dir(cloud)


def test_other_files_in_the_folder_are_fine(protected_folder):
    cloud, key, _ = protected_folder
    (cloud / "notes.json").write_text(json.dumps({"format": "something else", "n": 1}))
    (cloud / "sub").mkdir()
    (cloud / "sub" / "blob.bin").write_bytes(bytes(range(256)) * 10)
    (cloud / "sub" / "list.json").write_text("[1, 2, 3]")
    (cloud / "deep.json").write_text("[" * 100_000)
    assert load_model_dir(cloud).parameters()["fingerprint"] == key.model_fingerprint


@pytest.mark.parametrize("packing", ["gzip", "bz2", "xz", "zip"])
def test_a_compressed_key_is_refused(protected_folder, packing):
    import bz2
    import gzip
    import io
    import lzma
    import zipfile

    cloud, key, _ = protected_folder
    data = key.to_bytes()
    if packing == "zip":
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("readme.txt", "nothing here")
            archive.writestr("key.json", data)
        packed = buffer.getvalue()
    else:
        packed = {"gzip": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress}[packing](data)
    (cloud / f"backup.{packing}").write_bytes(packed)
    with pytest.raises(FakeGradientError, match="must never reach the server"):
        load_model_dir(cloud)


def test_a_key_behind_a_symlinked_folder_is_refused_and_loops_end(protected_folder, tmp_path):
    cloud, key, _ = protected_folder
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (cloud / "linked").symlink_to(elsewhere, target_is_directory=True)
    (elsewhere / "loop").symlink_to(cloud, target_is_directory=True)  # a cycle: the walk must still end
    assert load_model_dir(cloud).parameters()["fingerprint"] == key.model_fingerprint
    key.save(elsewhere / "key.json")
    with pytest.raises(FakeGradientError, match="must never reach the server"):
        load_model_dir(cloud)
